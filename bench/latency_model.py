"""Does the latency model hold on every run, not on a good one? (issue 32)

For ResNet-34 and MobileNetV2-1.0 (random weights: latency does not depend on them) at batch 1, 224x224, on
one backend (ONNX Runtime CPU or eager CPU, the machine's threads), each run from an empty cache:

1. the latency table (every non-dominated (block, kernel option) row, PASSES passes on fresh sessions,
   depthcut.latency.table) and the per-call model calibrated on whole networks (depthcut.latency.model);
2. plans at the papers' budget ratios (ResNet-34 71/60/50 %, MobileNetV2 55/46/38/33 % of the modelled body)
   from the LayerMerge DP with a data-free importance proxy (depthcut.importance.datafree);
3. the plans measured against the original in the same paired rounds (depthcut.latency.compare.time_jointly:
   ratio, 95 % interval), next to the speed-up the model predicts, and what the plain sum of rows
   (``additive``) would predict.

``--fresh N`` repeats all of it N times, each run in a new empty cache, and reports the worst error over the
runs and whether the measured speed-up was monotone in the budget in every run.

    python bench/latency_model.py --fresh 5 [--backend onnxruntime|eager|openvino] [--quantize int8]
                                  [--models resnet34,mobilenet_v2] [--size N] [--timing-threads N]
                                  [--calibration-sessions N] [--plans-from REPORT ...]

``--plans-from`` adds the plans a compress run probed (its report.json files) to step 3, and times each again
alone against the original, as compress's landing does: whether the model misses the plans a real importance
table chooses, and the probes' way of measuring, more than its own.

Writes bench/results/latency_model_<backend>[_int8][_<models>][_threads<n>].{json,md} (the models named when
not the default two: ``--models mobilenet_v2_fmnist`` is the embedded 28x28 network the int8 benchmark deploys;
``--timing-threads`` sets the runtime's intra-op threads).
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from depthcut import zoo
from depthcut.cnn.build import build_merged, build_unmerged, is_trivial, plan_from_blocks
from depthcut.cnn.graph import analyze
from depthcut.importance.datafree import datafree_importance
from depthcut.latency import get_backend, latency_table, original_spec
from depthcut.latency.compare import Pace, time_jointly
from depthcut.latency.dominance import measure_bandwidth, prune_dominated
from depthcut.latency.model import (FRACTIONS, RANDOM_FRACTIONS, RANDOM_SERIES, REGIONS, LatencyModelError, calibrate,
                                    network_timer)
from depthcut.latency.table import PASSES
from depthcut.search.layermerge import solve
from depthcut.search.tables import Row

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = "resnet34,mobilenet_v2"
BUDGETS = {"resnet34": (0.71, 0.60, 0.50), "mobilenet_v2": (0.55, 0.46, 0.38, 0.33),
           # the embedded networks (28x28): about the budgets their x1.5 / x2.0 landings probe
           "resnet20_fmnist": (0.71, 0.60, 0.50), "mobilenet_v2_fmnist": (0.62, 0.55, 0.46, 0.38)}


def probe_alone(original, network, x, backend, pace=None):
    """``network`` alone against ``original``, timed as compress's landing probes a plan (depthcut.compression.
    probe_speed) with the default config's timing, to the end of its rounds (no early decision). ``pace``: the
    run's depthcut.latency.compare.Pace shared by the probes of one network (a fresh one: no slow-phase check)."""
    from types import SimpleNamespace

    from depthcut.compression import probe_speed
    from depthcut.config import LayerMergeConfig

    run = SimpleNamespace(config=LayerMergeConfig(), original=original, example=x, backend=backend,
                          pace=pace or Pace(), say=print)
    return probe_speed(run, network, decided=None)


def report_plans(analysis, name: str, paths: list[str]) -> dict[str, list]:
    """The plans compress probed for ``name`` in the given compress reports (report.json): label -> candidates
    of ``analysis``. A plan is structure only (the weights do not matter to latency), so it is rebuilt here. Which
    convs an option keeps follows the weights' L1 norms (depthcut.cnn.blocks.kernel_options), so a trained
    network's block (ResNet-20's 0-7-k9-[1,2,3,4]) can be another set here (0-7-k9-[1,4,5,6]) of the same shape:
    the block with the same positions, kernel and number of kept convs stands for it. A plan with a block
    this analysis has no such stand-in for (a report written with other kernel options) is skipped, and said so."""
    by_key = {c.key: c for c in analysis.candidates}
    by_shape: dict[tuple, list] = {}
    for c in analysis.candidates:
        by_shape.setdefault((c.start, c.end, c.kernel, len(c.kept)), []).append(c)

    def block(key: str):
        """The candidate ``key`` names (Candidate.key: start-end-k<kernel>-[kept]), or its one same-shape stand-in."""
        if key in by_key:
            return by_key[key]
        start, end, kernel, kept = key.split("-", 3)
        count = len([k for k in kept.strip("[]").split(",") if k])
        same = by_shape.get((int(start), int(end), int(kernel[1:]), count), [])
        return same[0] if len(same) == 1 else None

    plans = {}
    for path in paths:
        report = json.loads(Path(path).read_text())
        if report.get("model") != name:
            continue
        label = "/".join(Path(path).parts[-3:-1]) if Path(path).name == "report.json" else Path(path).stem
        for i, probe in enumerate(report.get("probes", [])):
            blocks = [block(k) for k in probe["blocks"]]
            if None in blocks:
                print(f"{label} probe {i + 1} skipped: block {probe['blocks'][blocks.index(None)]} is not a candidate "
                      f"here", flush=True)
                continue
            plans[f"{label} probe {i + 1}"] = blocks
    return plans


def one_run(name: str, backend_name: str, size: int | None, cache: str, max_rounds: int,
            quantize: str | None = None, threads: int | None = None, plans_from: list[str] = (),
            calibration_sessions: int = 4) -> dict:
    entry = zoo.get(name)
    torch.manual_seed(0)
    model = zoo.randomize_batchnorm(entry.create())
    shape = (1, entry.input_shape[1]) + ((size, size) if size else tuple(entry.input_shape[2:]))
    analysis = analyze(model, shape, exclude=entry.chain_exclude, batch_size=1)
    backend = get_backend(backend_name, **({"quantize": quantize} if quantize else {}),
                          **({"threads": threads} if threads else {}))
    x = torch.randn(shape)
    t0 = time.time()

    reference = original_spec(model, shape)    # the original, timed in the table's passes: the anchor

    def time_rows(cands, refresh=False):
        return latency_table(cands, backend, batch_size=1, cache_dir=cache, progress=False, refresh=refresh,
                             extra=[reference])

    candidates, _, _ = prune_dominated(analysis.candidates, time_rows, max_importance=2.0, batch_size=1,
                                       bandwidth=measure_bandwidth("cpu", 64))
    timed = time_rows(candidates)
    table_s = time.time() - t0
    rows = {c.key: (c, timed[c.key].median_ms) for c in candidates}
    try:
        model_ = calibrate(rows, analysis.chain.length, batch_size=1, say=print,
                           time_networks=network_timer(analysis, backend, x, model, sessions=calibration_sessions),
                           original_ms=lambda: time_rows([])[reference.key].median_ms,
                           retime_rows=lambda: {k: t.median_ms for k, t in time_rows(candidates, True).items()})
    except LatencyModelError as e:      # the sanity checks refused this run's table: recorded, not hidden
        print(f"{name}: refused: {e}", flush=True)
        timed = time_rows(candidates)           # (the last table timed, which the refused fits used)
        return {"model": name, "candidates": len(analysis.candidates), "kept_candidates": len(candidates),
                "table_seconds": table_s, "refused": str(e), "plans": [],
                "refused_models": [m.to_dict() for m in e.models],
                "rows_ms": {c.key: timed[c.key].median_ms for c in candidates}}
    calibration_s = time.time() - t0 - table_s
    if model_.attempts > 1:             # the calibration re-timed the table
        timed = time_rows(candidates)
        rows = {c.key: (c, timed[c.key].median_ms) for c in candidates}
    dp = {c.key: model_.row_ms(c, t) for c, t in rows.values()}
    table = [Row(c.start, c.end, dp[c.key], datafree_importance(c), ref=c) for c in candidates]
    full = sum(dp[c.key] for c in candidates if is_trivial(c))
    additive_full = sum(t for c, t in rows.values() if is_trivial(c))
    frontier = solve(table, analysis.chain.length, steps=2000, max_latency_ms=full)
    out = {"model": name, "input_shape": list(shape), "candidates": len(analysis.candidates), "kept_candidates": len(candidates),
           "table_seconds": table_s, "calibration_seconds": calibration_s, "latency_model": model_.to_dict(),
           "rows_ms": {k: t for k, (_, t) in rows.items()},    # kept so a fit can be re-examined offline
           "plans": []}
    def network(blocks):
        plan = plan_from_blocks(analysis.chain, blocks)
        return build_merged(build_unmerged(analysis.gm, analysis.chain, plan).eval(), analysis.chain, plan).eval()

    solutions = {ratio: frontier.best(ratio * full) for ratio in BUDGETS[name]}
    networks = {f"{ratio:.0%}": network([r.ref for r in s.rows]) for ratio, s in solutions.items()}
    extra = report_plans(analysis, name, list(plans_from))
    missing = sorted({c.key: c for blocks in extra.values() for c in blocks if c.key not in rows}.values(),
                     key=lambda c: c.key)
    if missing:     # rows the dominance filter dropped here: timed now, in their own pass
        more = time_rows(missing)
        rows.update({c.key: (c, more[c.key].median_ms) for c in missing})
        dp.update({c.key: model_.row_ms(c, rows[c.key][1]) for c in missing})
    networks.update({label: network(blocks) for label, blocks in extra.items()})
    # the identity plan's network too: the original over it, now against at calibration, says how much the
    # machine moved between the two (eager MobileNetV2 saw x1.105 calibrating; a slow phase can shift it)
    networks["identity"] = network([c for c in analysis.candidates if is_trivial(c)])
    # all plans against the original in the same rounds: their order is not left to the machine's drift
    # between separate measurements
    measured = time_jointly(model, networks, x, backend, sessions=4, rounds=max_rounds)
    out["identity_now"] = measured["identity"].to_dict()
    for ratio, solution in solutions.items():
        est = measured[f"{ratio:.0%}"]
        predicted = model_.predicted_speedup(solution.latency_ms, full)
        body = sum(rows[r.ref.key][1] for r in solution.rows)
        other = est.original_ms - additive_full            # the plain sum seeded with the measured original
        additive = est.original_ms / (other + body)
        # the plan against the identity network, both measured now: the model's error without the
        # original's drift since calibration
        against_identity = est.ratio / measured["identity"].ratio
        out["plans"].append({"budget_ratio": ratio, "measured": est.to_dict(), "predicted": predicted,
                             "error": predicted / est.ratio - 1,
                             "error_against_identity": predicted / model_.original_factor / against_identity - 1,
                             "additive_predicted": additive,
                             "additive_error": additive / est.ratio - 1,
                             "blocks": [r.ref.key for r in solution.rows if not is_trivial(r.ref)]})
        print(f"{name} {ratio:.0%}: measured {est.describe()}, predicted x{predicted:.3f} "
              f"({predicted / est.ratio - 1:+.1%}), additive {additive / est.ratio - 1:+.1%}", flush=True)
    out["report_plans"] = []
    pace = Pace()                      # the probes of this network share their pace, as one compress run's do
    for label, blocks in extra.items():
        est = measured[label]
        predicted = model_.predicted_speedup(sum(dp[c.key] for c in blocks), full)
        # and alone against the original, as compress's landing probes it, with compress's default timing
        alone = probe_alone(model, networks[label], x, backend, pace)
        out["report_plans"].append({"plan": label, "measured": est.to_dict(), "predicted": predicted,
                                    "error": predicted / est.ratio - 1, "measured_alone": alone.to_dict(),
                                    "error_alone": predicted / alone.ratio - 1,
                                    "blocks": [c.key for c in blocks if not is_trivial(c)],
                                    "rows_timed_apart": [c.key for c in missing if c in blocks]})
        print(f"{name} {label}: measured {est.describe()}, alone {alone.describe()}, predicted x{predicted:.3f} "
              f"({predicted / est.ratio - 1:+.1%}; {predicted / alone.ratio - 1:+.1%} alone)", flush=True)
    return out


def monotone(plans: list[dict]) -> bool:
    """Measured speed-ups never fall as the budget tightens (plans are listed by decreasing budget)."""
    ratios = [p["measured"]["ratio"] for p in plans]
    return all(b >= a for a, b in zip(ratios, ratios[1:]))


def summary(runs: list[dict]) -> dict:
    per_model: dict[str, dict] = {}
    for run in runs:
        s = per_model.setdefault(run["model"], {"runs": 0, "refused": 0, "worst_error": 0.0,
                                                "worst_additive_error": 0.0, "monotone_runs": 0, "calls_ms": [],
                                                "self_errors": []})
        s["runs"] += 1
        if "refused" in run:
            s["refused"] += 1
            continue
        s["worst_error"] = max(s["worst_error"], *(abs(p["error"]) for p in run["plans"]))
        s["worst_error_against_identity"] = max(s.get("worst_error_against_identity", 0.0),
                                                *(abs(p["error_against_identity"]) for p in run["plans"]))
        s["worst_additive_error"] = max(s["worst_additive_error"], *(abs(p["additive_error"]) for p in run["plans"]))
        if run.get("report_plans"):
            s["worst_report_plan_error"] = max(s.get("worst_report_plan_error", 0.0),
                                               *(abs(p["error"]) for p in run["report_plans"]))
            s["worst_report_plan_error_alone"] = max(s.get("worst_report_plan_error_alone", 0.0),
                                                     *(abs(p["error_alone"]) for p in run["report_plans"]))
        s["monotone_runs"] += monotone(run["plans"])
        s["calls_ms"].append(run["latency_model"]["call_ms"])
        s["self_errors"].append(max(abs(p["modelled_ms"] / p["measured_ms"] - 1)
                                    for p in run["latency_model"]["calibration"]))
    return per_model


def pace(model: dict) -> str:
    """The calibration networks' pace against the table's, where the model was anchored on the table (runs of
    2026-12-07 written before the model named its anchor had only the table's)."""
    if model.get("anchor", "table" if "calibration_pace" in model else None) != "table":
        return ""
    return f"calibration networks timed at x{model['calibration_pace']:.2f} the table's pace; "


def markdown(report: dict) -> str:
    b, q = report["backend"].split(" ")[0], report.get("quantize") or (report["backend"].split(" ") + [None])[1]
    lines = [f"# Latency model on {b}{' ' + q if q else ''} CPU, {report['fresh']} runs from empty caches: "
             f"`python bench/latency_model.py --fresh {report['fresh']} --backend {b}"
             f"{' --quantize ' + q if q else ''}"
             f"{' --models ' + report['models'] if report.get('models', DEFAULT_MODELS) != DEFAULT_MODELS else ''}"
             f"{' --size ' + str(report['size']) if report.get('size') else ''}"
             f"{' --timing-threads ' + str(report['timing_threads']) if report.get('timing_threads') else ''}"
             f"{' --calibration-sessions ' + str(report['calibration_sessions']) if report.get('calibration_sessions', 4) != 4 else ''}"
             f"{' --plans-from ' + ' '.join(report['plans_from']) if report.get('plans_from') else ''}`", "",
             f"{report['cpu']}, {report['threads']} threads, runtime timed on "
             f"{report.get('timing_threads') or report['threads']} intra-op thread(s), {report['versions']}, batch 1, "
             f"input {', '.join(sorted({'x'.join(map(str, r.get('input_shape', [1, 3, 224, 224])[1:])) for r in report['runs']}))}"
             f" (channels x height x width), random weights, data-free importance proxy. Each run starts from an empty cache: "
             f"the latency table (every row its fastest of {PASSES} passes on fresh sessions, the original network timed in the same passes) and the per-call model calibrated on "
             f"up to {len(FRACTIONS) + 1 + REGIONS + (len(RANDOM_SERIES) * len(RANDOM_FRACTIONS) if report.get('random_series', False) else 0)} whole networks (the identity plan, latency-only plans under falling budgets, the fastest plan inside each third of the chain"
             f"{', plans under the same budgets with each merge worth a seeded random amount' if report.get('random_series', False) else ''}) (depthcut.latency.model). Measured = median of paired per-round ratios against the "
             f"original, every plan of a run in the same rounds, 95 % interval (depthcut.latency.compare.time_jointly), 4 runtime sessions, {report['max_rounds']} rounds; calibration networks on {report.get('calibration_sessions', 2)} sessions each. Predicted = the original as timed with the table over the plan's modelled network (LatencyModel.predicted_speedup; runs before 2026-12-07: rows from their median pass, the original as measured at calibration); error = predicted / measured - 1.", "",
             "| model | runs | refused by the sanity checks | worst error, per-call model | worst error against the "
             "identity network measured with the plans | worst error, plain sum of rows | measured speed-up monotone "
             "in the budget | fitted per-call cost a (us), over the runs |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in report["summary"].items():
        calls = (f"{1e3 * min(s['calls_ms']):.1f} - {1e3 * max(s['calls_ms']):.1f}" if s["calls_ms"] else "-")
        lines.append(f"| {name} | {s['runs']} | {s['refused']} | **{s['worst_error']:.1%}** | "
                     f"{s.get('worst_error_against_identity', 0.0):.1%} | "
                     f"{s['worst_additive_error']:.1%} | {s['monotone_runs']} of {s['runs'] - s['refused']} runs | "
                     f"{calls} |")
    for name, s in report["summary"].items():
        if "worst_report_plan_error" in s:
            lines += ["", f"{name}, the plans compress probed (`--plans-from`): worst error "
                          f"**{s['worst_report_plan_error']:.1%}** measured with the plans, "
                          f"**{s['worst_report_plan_error_alone']:.1%}** measured alone against the original."]
    for k, run in enumerate(report["runs"]):
        if "refused" in run:
            lines += ["", f"## run {run['run']}: {run['model']} - refused", "", f"`{run['refused']}`"]
            continue
        m = run["latency_model"]
        lines += ["", f"## run {run['run']}: {run['model']} - {run['kept_candidates']} of {run['candidates']} "
                      f"candidates, table {run['table_seconds']:.0f} s, calibration {run['calibration_seconds']:.0f} s",
                  "", f"Per-call cost {1e3 * m['call_ms']:.1f} us (leave-one-out {1e3 * m['call_ms_range'][0]:.1f}"
                      f" - {1e3 * m['call_ms_range'][1]:.1f}) + {1e9 * m['call_ms_per_byte']:.1f} us/MB; "
                      f"{1e9 * m.get('weight_ms_per_byte', 0.0):.1f} us/MB of weights; outside "
                      f"the body {m['other_ms']:.3f} ms; original / identity network x{m['original_factor']:.3f} "
                      f"calibrating, x{run['identity_now']['ratio']:.3f} [{run['identity_now']['low']:.3f}, "
                      f"{run['identity_now']['high']:.3f}] with the plans; "
                      f"{'table and calibration timed twice (the first failed the sanity checks); ' if m['attempts'] > 1 else ''}"
                      f"{pace(m)}"
                      f"largest error on its {len(m['calibration'])} calibration networks "
                      f"{max(abs(p['modelled_ms'] / p['measured_ms'] - 1) for p in m['calibration']):.1%}.", "",
                  "| budget | measured (95% CI) | rounds | predicted | error | error against the identity network "
                  "| plain sum | error |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in run["plans"]:
            e = p["measured"]
            lines.append(f"| {p['budget_ratio']:.0%} | x{e['ratio']:.2f} [{e['low']:.2f}, {e['high']:.2f}] | "
                         f"{e['rounds']} | x{p['predicted']:.2f} | {p['error']:+.1%} | {p['error_against_identity']:+.1%} | x{p['additive_predicted']:.2f}"
                         f" | {p['additive_error']:+.1%} |")
        lines.append(f"\nMonotone in the budget: {'yes' if monotone(run['plans']) else 'no'}.")
        if run.get("report_plans"):
            lines += ["", "Plans a compress run probed (`--plans-from`), measured in the same rounds:", "",
                      "| plan | merged blocks | measured with the plans (95% CI) | measured alone against the original, "
                      "as compress probes | predicted | error | error against alone |", "|---|---|---|---|---|---|---|"]
            for p in run["report_plans"]:
                e, a = p["measured"], p["measured_alone"]
                lines.append(f"| {p['plan']} | {len(p['blocks'])} | x{e['ratio']:.2f} [{e['low']:.2f}, "
                             f"{e['high']:.2f}] | x{a['ratio']:.2f} [{a['low']:.2f}, {a['high']:.2f}] | "
                             f"x{p['predicted']:.2f} | {p['error']:+.1%} | {p['error_alone']:+.1%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT_MODELS)
    ap.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "eager", "openvino"])
    ap.add_argument("--quantize", default=None, choices=["int8"], help="time int8 networks (onnxruntime, openvino)")
    ap.add_argument("--size", type=int, default=None, help="input height and width (default: each model's own)")
    ap.add_argument("--timing-threads", type=int, default=None,
                    help="the runtime's intra-op threads (onnxruntime, openvino; default: torch's, the machine's)")
    ap.add_argument("--fresh", type=int, default=1, help="runs, each from a new empty cache")
    ap.add_argument("--max-rounds", type=int, default=60, help="paired rounds of the plans' joint timing")
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "bench_latency_model"),
                    help="each run makes its own empty folder under this one")
    ap.add_argument("--calibration-sessions", type=int, default=4,
                    help="fresh runtime sessions per calibration network (compress: --timing-sessions, default 4)")
    ap.add_argument("--plans-from", nargs="*", default=[], metavar="REPORT",
                    help="compress reports (report.json) whose probed plans are measured too, next to the data-free ones")
    ap.add_argument("--out", default=None, help="default: bench/results/latency_model_<backend>")
    args = ap.parse_args()
    out = Path(args.out or ROOT / "bench" / "results" / (
        f"latency_model_{args.backend}{'_' + args.quantize if args.quantize else ''}"
        f"{'_' + args.models.replace(',', '_') if args.models != DEFAULT_MODELS else ''}"
        f"{f'_threads{args.timing_threads}' if args.timing_threads else ''}"))
    versions = f"torch {torch.__version__}"
    if args.backend in ("onnxruntime", "openvino"):
        versions += f", {args.backend} {get_backend(args.backend).version()}"
    report = {"backend": args.backend, "quantize": args.quantize, "cpu": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "versions": versions, "size": args.size, "models": args.models, "timing_threads": args.timing_threads, "fresh": args.fresh,
              "max_rounds": args.max_rounds, "calibration_sessions": args.calibration_sessions,
              "plans_from": args.plans_from, "random_series": bool(RANDOM_SERIES),
              "runs": []}
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    for k in range(args.fresh):
        for name in args.models.split(","):
            with tempfile.TemporaryDirectory(dir=args.cache, prefix=f"run{k}-") as cache:
                report["runs"].append({"run": k + 1, **one_run(name, args.backend, args.size, cache, args.max_rounds,
                                                                args.quantize, args.timing_threads,
                                                                args.plans_from, args.calibration_sessions)})
            report["summary"] = summary(report["runs"])
            out.with_suffix(".json").write_text(json.dumps(report, indent=1))
            out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out}.md")


if __name__ == "__main__":
    main()
