"""Which pass of a latency row should stand for it: the median pass, the fastest, or between? (issue 31)

Every row of a latency table is timed in PASSES passes, each on a fresh runtime session
(depthcut.latency.table). On a shared machine a slow phase (another job, seconds long) makes some passes slow,
and only ever slower. This times, per fresh run and from an empty cache:

1. the latency table of one embedded network (its trained weights) on one backend, with the original network
   timed in the same passes (depthcut.latency.table.network_spec: the latency model's anchor);
2. in ONE joint timing against the original (depthcut.latency.compare.time_jointly): the latency model's
   calibration networks (depthcut.latency.model.calibration_plans) and the plans that bench/deploy_int8.py
   probed for this network and backend (bench/results/deploy_int8/<model>-*/<arm>/report.json), real plans
   chosen with real importance;

then fits the library's per-call model (depthcut.latency.model.model_from_points, the fit compress uses) once per
statistic on the same timings - rows and anchor taken from each row's median pass, its fastest pass, its second
fastest, or the median of the passes within 5 % / 10 % of its fastest (OpenVINO's profile moves a row in
microsecond steps, bench/results/openvino_profile_steps.md: the fastest pass is also the lowest step) - and
reports each fit's error on the probed plans (predicted / measured - 1) and its sanity checks (depthcut.latency.
model.problems). No timing is repeated between them: the statistic is the only difference. ``--refit`` fits a
report's recorded timings again (after a statistic is added), timing nothing.

    python bench/latency_pass_statistic.py [--model mobilenet_v2_fmnist] [--backend openvino] [--quantize int8]
                                           [--arm openvino_int8] [--fresh 3] [--timing-threads 1]
                                           [--refit bench/results/latency_pass_statistic.json] [--out ...]

Writes bench/results/latency_pass_statistic.{json,md} (``--out``).
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from depthcut.cache import atomic_write_result
from depthcut.cnn.build import plan_changing
from depthcut.compression import Compression, build_plan_network
from depthcut.config import LayerMergeConfig
from depthcut.latency import latency_store, latency_table, original_spec, row_key
from depthcut.latency.compare import time_jointly
from depthcut.latency.dominance import max_accuracy_importance, measure_bandwidth, prune_dominated
from depthcut.latency.model import calibration_plans, model_from_points, plan_point, problems
from depthcut.latency.table import PASSES

ROOT = Path(__file__).resolve().parents[1]


def within(band: float):
    """The median of the passes within ``band`` (relative) of the fastest: the fastest pass's microsecond step
    (OpenVINO's profile, bench/results/openvino_profile_steps.md) averaged out, slow passes still left out."""
    return lambda v: statistics.median([x for x in v if x <= min(v) * (1 + band)])


STATISTICS = {"median pass": statistics.median, "fastest pass": min, "second fastest pass": lambda v: sorted(v)[1],
              "median within 5 % of the fastest": within(0.05), "median within 10 % of the fastest": within(0.10)}
# the original's milliseconds the calibration networks' ratios are turned into: as timed in the table's passes
# (the library's anchor), or as timed with the networks (the anchor before 2026-12-07)
ANCHORS = ("table", "joint")
FITS = [f"{s}, {a} anchor" for s in STATISTICS for a in ANCHORS]


def probed_plans(model: str, arm: str) -> dict[str, list[str]]:
    """The plans bench/deploy_int8.py probed for ``model`` on ``arm`` (name -> changed blocks' keys)."""
    plans = {}
    for report in sorted((ROOT / "bench" / "results" / "deploy_int8").glob(f"{model}-*/{arm}/report.json")):
        for i, probe in enumerate(json.loads(report.read_text()).get("probes", [])):
            plans[f"{report.parent.parent.name} probe {i + 1}"] = probe["blocks"]
    return plans


def one_run(args, cache: str) -> dict:
    config = LayerMergeConfig(speedup=1.5, backend=args.backend, quantize=args.quantize, data="fashion-mnist",
                              timing_threads=args.timing_threads, cache_dir=cache, progress=False)
    run = Compression(args.model, config)
    analysis, t0 = run.analysis, time.time()
    reference = original_spec(run.original, tuple(run.example.shape))

    def time_rows(rows, refresh=False):
        return latency_table(rows, run.backend, batch_size=1, cache_dir=cache, progress=False, refresh=refresh,
                             extra=[reference])
    candidates, _, timed = prune_dominated(analysis.candidates, time_rows, batch_size=1,
                                           max_importance=max_accuracy_importance(run.base_accuracy),
                                           bandwidth=measure_bandwidth("cpu", megabytes=64))
    table_s = time.time() - t0
    store = latency_store(run.backend, 1, cache)
    passes = {key: [p["median_ms"] for p in store[key]["passes"]]
              for key in {row_key(c, 1) for c in candidates if c.kept} | {reference.key}}
    by_key = {c.key: c for c in analysis.candidates}
    # the calibration networks as compress would choose them (on the fastest-pass rows, the library's table)
    cal = calibration_plans([(c, timed[c.key]) for c in candidates], analysis.chain.length)
    networks = {f"calibration: {name}": [c.key for c in plan] for name, plan in cal}
    usable = {c.key for c in candidates}
    for name, blocks in probed_plans(args.model, args.arm).items():
        plan = plan_changing(analysis.chain, [by_key[k] for k in blocks])
        if all(c.key in usable or not c.kept for c in plan.blocks):   # a probe whose row is dominated here
            networks[name] = [c.key for c in plan.blocks]
    measured = time_jointly(run.original, {n: build_plan_network(run, [by_key[k] for k in ks])
                                           for n, ks in networks.items()},
                            run.example, run.backend, sessions=3, rounds=args.rounds)
    out = {"table_seconds": table_s, "candidates": len(candidates), "passes": passes,
           "networks": networks, "measured": {n: e.to_dict() for n, e in measured.items()},
           "reference": reference.key}
    out["fits"] = fits(out, by_key)
    return out


def fits(run: dict, by_key: dict) -> dict:
    """The per-call model fitted with each statistic and anchor on one run's timings (``run``: as one_run
    records it), and its errors on the probed plans."""
    networks, passes = run["networks"], run["passes"]
    measured = {n: SimpleNamespace(**e) for n, e in run["measured"].items()}
    # the identity network first: the model's full body and the original's factor are the identity plan's
    names = sorted((n for n in networks if n.startswith("calibration: ")), key=lambda n: n != "calibration: identity")
    identity_ratio = measured[names[0]].ratio                   # original / identity network
    original_now = statistics.median(e.original_ms for e in measured.values())
    reference = run.get("reference") or next(k for k in passes if k.startswith("network-"))
    out = {}
    for (label, stat), anchor in itertools.product(STATISTICS.items(), ANCHORS):
        ms = {k: stat(passes[row_key(by_key[k], 1)]) if by_key[k].kept else 0.0 for ks in networks.values() for k in ks}
        original_ms = stat(passes[reference]) if anchor == "table" else original_now
        label = f"{label}, {anchor} anchor"
        rows = [[(by_key[k], ms[k]) for k in networks[n] if by_key[k].kept] for n in names]
        points = [plan_point(r, original_ms / measured[n].ratio, 1) for r, n in zip(rows, names)]
        model = model_from_points(points, rows, [n.split(": ", 1)[1] for n in names], 1)
        model.original_factor = identity_ratio
        full = sum(model.row_ms(c, t) for c, t in rows[0])
        errors = {}
        for n, keys in networks.items():
            if n in names:
                continue
            body = sum(model.row_ms(by_key[k], ms[k]) for k in keys if by_key[k].kept)
            errors[n] = model.predicted_speedup(body, full) / measured[n].ratio - 1
        out[label] = {"errors": errors, "worst": max(map(abs, errors.values()), default=0.0),
                      "self_error": model.self_error, "problems": problems(model),
                      "call_us": 1e3 * model.call_ms, "other_ms": model.other_ms}
        print(f"{label}: worst error {out[label]['worst']:.1%}, self {model.self_error:.1%}, "
              f"{'refused' if problems(model) else 'passes its checks'}", flush=True)
    return out


def markdown(report: dict) -> str:
    a = report["args"]
    runs = report["runs"]
    fitted = [s for s in FITS if all(s in r["fits"] for r in runs)]
    lines = [f"# Which pass stands for a row: `python bench/latency_pass_statistic.py --model {a['model']} --backend "
             f"{a['backend']}{' --quantize ' + a['quantize'] if a['quantize'] else ''} --arm {a['arm']} --fresh "
             f"{a['fresh']} --timing-threads {a['timing_threads']}`", "",
             f"{report['machine']}. Each run from an empty cache: the latency table ({PASSES} passes per row, each "
             "on a fresh session, the original network timed in the same passes), then the latency model's "
             "calibration networks and the plans bench/deploy_int8.py probed (trained weights, real importance) "
             "in one joint timing against the original. The library's per-call model is fitted on the same "
             "timings once per statistic: rows and anchor from each row's median pass, its fastest pass (the "
             "library's), its second fastest, or the median of its passes within 5 % / 10 % of the fastest; the "
             "calibration networks' ratios turned into milliseconds with the original as timed in the table's "
             "passes (*table anchor*, the library's) or as timed with the networks (*joint anchor*, before "
             "2026-12-07). Error = predicted / measured speed-up - 1 on the probed plans; *self*: the largest "
             "error on the calibration networks; *refused*: the model's own sanity checks "
             "(depthcut.latency.model.problems) would have re-timed the table."
             + (f" Refitted from the timings of `{report['refit']}` (`--refit`)." if report.get("refit") else ""), "",
             "Rows across passes, slowest / fastest pass (median row), by run: " + ", ".join(
                 f"x{statistics.median(max(v) / min(v) for k, v in r['passes'].items() if not k.startswith('network-')):.2f}"
                 for r in runs) + f"; {len(runs[0]['fits'][fitted[0]]['errors'])} probed plans a run.", "",
             *reproducibility(runs),
             "| statistic, anchor | worst error over the runs | " +
             " | ".join(f"run {k + 1}: worst (self)" for k in range(len(runs))) + " |",
             "|---|---|" + "---|" * len(runs)]
    for s in fitted:
        cells = [f"{r['fits'][s]['worst']:.1%} ({r['fits'][s]['self_error']:.1%}"
                 f"{', refused' if r['fits'][s]['problems'] else ''})" for r in runs]
        lines.append(f"| {s} | **{max(r['fits'][s]['worst'] for r in runs):.1%}** | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def reproducibility(runs: list[dict]) -> list[str]:
    """How far one probed plan's measured speed-up moves between the runs' joint timings: no fit is judged more
    finely than that."""
    plans = [n for n in runs[0]["measured"] if not n.startswith("calibration: ") and all(n in r["measured"] for r in runs)]
    if len(runs) < 2 or not plans:
        return []
    spread = [max(r["measured"][n]["ratio"] for r in runs) / min(r["measured"][n]["ratio"] for r in runs) - 1
              for n in plans]
    return [f"The same probed plan's measured speed-up across the {len(runs)} runs (largest over smallest - 1): "
            f"median {statistics.median(spread):.1%}, largest {max(spread):.1%} over {len(plans)} plans.", ""]


def refit(path: str) -> dict:
    """A committed report's runs fitted again with every statistic, on the timings it recorded (no timing)."""
    report = json.loads(Path(path).read_text())
    a = report["args"]
    config = LayerMergeConfig(speedup=1.5, backend=a["backend"], quantize=a["quantize"], data="fashion-mnist",
                              timing_threads=a["timing_threads"], progress=False)
    by_key = {c.key: c for c in Compression(a["model"], config).analysis.candidates}
    for run in report["runs"]:
        run["fits"] = fits(run, by_key)
    return {**report, "refit": str(Path(path).resolve().relative_to(ROOT))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v2_fmnist")
    ap.add_argument("--backend", default="openvino", choices=["onnxruntime", "openvino"])
    ap.add_argument("--quantize", default="int8", choices=["int8", "none"])
    ap.add_argument("--arm", default="openvino_int8", help="the deploy_int8 arm whose probed plans are timed")
    ap.add_argument("--fresh", type=int, default=3)
    ap.add_argument("--timing-threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "latency_pass_statistic"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "latency_pass_statistic"))
    ap.add_argument("--refit", metavar="JSON", help="fit a report's recorded timings again (no timing; its args "
                    "stand), written to --out")
    args = ap.parse_args()
    if args.refit:
        report = refit(args.refit)
        atomic_write_result(args.out, report, markdown(report))
        print(markdown(report))
        return
    args.quantize = None if args.quantize == "none" else args.quantize
    report = {"args": vars(args), "runs": [],
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                         f"torch {torch.__version__}, runtime on {args.timing_threads} thread(s)"}
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    for k in range(args.fresh):
        with tempfile.TemporaryDirectory(dir=args.cache, prefix=f"run{k}-") as cache:
            report["runs"].append(one_run(args, cache))
        atomic_write_result(args.out, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
