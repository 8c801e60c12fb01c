"""GPU check (issues 7 and 8): LayerMerge on CUDA in about 5 minutes.

For ResNet-34 and MobileNetV2-1.0 (random weights, random BN statistics: latency does not depend on the
weights) at batch 128, 224x224, CUDA eager, cuDNN benchmark on, PyTorch's default math mode (TF32 for cuDNN
convs):

1. the latency table (every (block, kernel option) row timed on the GPU);
2. plans at the papers' budget ratios (ResNet-34 71/60/50 %, MobileNetV2 55/46/38/33 % of the table's
   unmerged body latency) from the LayerMerge DP, with a data-free importance proxy (every block 1, minus
   0.05 per pruned conv and 0.02 per removed activation: the budget alone decides; real importance needs
   data and does not change what is timed here);
   The DP's rows are the pipeline's default latency model: per-call costs calibrated on whole networks
   (depthcut.latency.model, issue 32), checked by its sanity checks.
3. every plan's network, the BN-folded original and the identity plan's network measured against the original
   in one joint run of paired rounds (depthcut.latency.compare.time_jointly: medians, 95 % intervals), next to
   the speed-up the calibrated model predicts and the one the plain sum of rows predicts;
4. the exactness of each merge on the GPU: against the intended function in float64 (the check depthcut
   runs) and merged vs unmerged in float32 with TF32 on (what a float32 check would see);
5. ``depthcut.compress`` end to end on CUDA: the CIFAR ResNet-20 on a generated 2-class image folder,
   20-step importance fine-tunes, a short recovery, speed-up target x1.3 on the eager backend.

Writes ``--out`` (JSON + Markdown). ``--quick`` shrinks everything for a CPU dry run of the script itself.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from depthcut import zoo  # noqa: E402
from depthcut.cnn.build import build_merged, build_unmerged, fold_batchnorms, is_trivial, plan_from_blocks  # noqa: E402
from depthcut.cnn.graph import analyze, symbolic_trace  # noqa: E402
from depthcut.cnn.intended import verify_plan  # noqa: E402
from depthcut.importance.datafree import datafree_importance  # noqa: E402
from depthcut.latency import get_backend, latency_table, time_models  # noqa: E402
from depthcut.latency.backends import math_mode  # noqa: E402
from depthcut.latency.compare import time_jointly  # noqa: E402
from depthcut.latency.model import calibrate, network_timer  # noqa: E402
from depthcut.search.layermerge import solve  # noqa: E402
from depthcut.search.tables import Row  # noqa: E402

BUDGETS = {"resnet34": (0.71, 0.60, 0.50), "mobilenet_v2": (0.55, 0.46, 0.38, 0.33)}
PAPER_PYTORCH = {"resnet34": (1.36, 1.56, 1.79), "mobilenet_v2": (1.63, 1.90, 2.18, 2.49)}


def folded(model: torch.nn.Module) -> torch.nn.Module:
    gm = symbolic_trace(model)
    fold_batchnorms(gm)
    gm.recompile()
    return gm.eval()


def float32_error(a, b, x) -> float:
    with torch.no_grad():
        ya, yb = a(x), b(x)
    return float((ya - yb).norm() / yb.norm())


def check_model(name: str, device: str, batch: int, size: int, rounds: int, cache: str,
                memory_format: str = "contiguous", compile_ratio: float | None = None,
                row_calls: int | None = None) -> dict:
    entry = zoo.get(name)
    torch.manual_seed(0)
    model = zoo.randomize_batchnorm(entry.create()).to(device)
    t0 = time.time()
    analysis = analyze(model, (1, 3, size, size), exclude=entry.chain_exclude, batch_size=batch)
    backend = get_backend("eager", device=device, memory_format=memory_format)
    if row_calls is not None:       # 1: the pre-issue-8 timing, one synchronised call per sample
        backend.row_calls = row_calls

    def time_rows(candidates, refresh=False):
        return latency_table(candidates, backend, batch_size=batch, cache_dir=cache, progress=False,
                             repeats=20, refresh=refresh)

    lat = time_rows(analysis.candidates)
    table_s = time.time() - t0
    timed = {c.key: lat[c.key].median_ms for c in analysis.candidates}
    x_cpu = torch.randn(batch, 3, size, size)     # the timings' input (each backend places its own copy)
    # the pipeline's default latency model: calibrated on whole networks (depthcut.latency.model, issue 32)
    model_ = calibrate({c.key: (c, timed[c.key]) for c in analysis.candidates}, analysis.chain.length,
                       batch_size=batch, say=print, time_networks=network_timer(analysis, backend, x_cpu, model),
                       retime_rows=lambda: {k: t.median_ms for k, t in time_rows(analysis.candidates, True).items()})
    calibration_s = time.time() - t0 - table_s
    if model_.attempts > 1:         # the calibration re-timed the table
        lat = time_rows(analysis.candidates)
        timed = {c.key: lat[c.key].median_ms for c in analysis.candidates}
    rows = [Row(c.start, c.end, model_.row_ms(c, timed[c.key]), datafree_importance(c), ref=c)
            for c in analysis.candidates]
    body_ms = sum(r.latency_ms for r in rows if is_trivial(r.ref))
    additive_body_ms = sum(timed[c.key] for c in analysis.candidates if is_trivial(c))
    frontier = solve(rows, analysis.chain.length, steps=2000, max_latency_ms=body_ms)
    x = x_cpu[:8].to(device)
    out = {"model": name, "memory_format": memory_format, "positions": analysis.chain.length,
           "candidates": len(analysis.candidates), "table_seconds": table_s, "calibration_seconds": calibration_s,
           "table_body_ms": body_ms, "additive_body_ms": additive_body_ms, "row_calls": backend.row_calls,
           "latency_model": model_.to_dict(), "call_overhead_us": 1e3 * model_.call_ms,
           "call_overhead_us_per_mb": 1e9 * model_.call_ms_per_byte, "plans": []}
    solutions = {ratio: frontier.best(ratio * body_ms) for ratio in BUDGETS[name]}

    def build(blocks):
        plan = plan_from_blocks(analysis.chain, blocks)
        unmerged = build_unmerged(analysis.gm, analysis.chain, plan).eval()
        return plan, unmerged, build_merged(unmerged, analysis.chain, plan)

    built = {ratio: build([r.ref for r in solution.rows]) for ratio, solution in solutions.items()}
    # every plan, the BN-folded original and the identity plan's network against the original in the same
    # paired rounds (medians, 95 % intervals): the plans' order is not left to drift between separate runs
    networks = {f"{ratio:.0%}": merged for ratio, (_, _, merged) in built.items()}
    networks["bn_folded"] = folded(model)
    networks["identity"] = build([c for c in analysis.candidates if is_trivial(c)])[2]
    measured = time_jointly(model, networks, x_cpu, backend, sessions=2, rounds=rounds)
    out["bn_folded"] = measured["bn_folded"].to_dict()
    out["identity_now"] = measured["identity"].to_dict()
    for (ratio, solution), paper in zip(solutions.items(), PAPER_PYTORCH[name]):
        plan, unmerged, merged = built[ratio]
        est = measured[f"{ratio:.0%}"]
        predicted = model_.predicted_speedup(solution.latency_ms, body_ms)
        e2e = est.original_ms
        plan_additive_ms = sum(timed[r.ref.key] for r in solution.rows)
        predicted_additive = e2e / (e2e - additive_body_ms + plan_additive_ms)
        out["plans"].append({
            "budget_ratio": ratio, "paper_pytorch_speedup": paper, "measured": est.to_dict(),
            "modelled_body_ms": solution.latency_ms, "original_ms": e2e,
            "speedup": est.ratio, "low": est.low, "high": est.high,
            "speedup_vs_bn_folded": est.ratio / measured["bn_folded"].ratio,
            "predicted_speedup": predicted, "prediction_error": predicted / est.ratio - 1,
            "predicted_speedup_additive": predicted_additive,
            "prediction_error_additive": predicted_additive / est.ratio - 1,
            "blocks": sum(not is_trivial(b) for b in plan.blocks),
            "intended_error_float64": verify_plan(merged, model, analysis.chain, plan, (1, 3, size, size)),
            "merged_vs_unmerged_float32": float32_error(merged, unmerged, x),
        })
        p = out["plans"][-1]
        if compile_ratio is not None and abs(ratio - compile_ratio) < 1e-9:
            p["compile"] = compiled_speedup(model, merged, x_cpu.to(device), device, memory_format, rounds)
        print(f"{name} {ratio:.0%}: {est.describe()} (predicted x{predicted:.2f}, additive x{predicted_additive:.2f}, "
              f"paper x{paper}), vs BN-folded x{p['speedup_vs_bn_folded']:.2f}; intended error "
              f"{p['intended_error_float64']:.1e} (float64), merged vs unmerged {p['merged_vs_unmerged_float32']:.1e} "
              f"(float32)", flush=True)
    return out


def compiled_speedup(model, merged, x, device: str, memory_format: str, rounds: int) -> dict:
    """The same plan under torch.compile (inductor) on the device: speed-up and cold-compile seconds."""
    backend = get_backend("compile", device=device, memory_format=memory_format)
    t = time_models({"original": model, "merged": merged}, x, backend, rounds=rounds, repeats=5)
    summary = backend.compile_summary()
    result = {"original_ms": t["original"].median_ms, "merged_ms": t["merged"].median_ms,
              "speedup": t["original"].median_ms / t["merged"].median_ms,
              "compile_seconds": summary["compile_s_last_two"], "fx_graph_cache": summary["fx_graph_cache"]}
    print(f"  torch.compile: x{result['speedup']:.2f}, cold compile {result['compile_seconds']} s", flush=True)
    return result


def compress_on_device(device: str, quick: bool) -> dict:
    from PIL import Image

    from depthcut.config import LayerMergeConfig
    from depthcut.compression import compress

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        gen = torch.Generator().manual_seed(0)
        for c, name in enumerate(("a", "b")):
            (root / name).mkdir(parents=True)
            for i in range(60 if quick else 300):
                base = torch.full((32, 32, 3), 60.0 + 120 * c) + 40 * torch.randn(32, 32, 3, generator=gen)
                Image.fromarray(base.clamp(0, 255).byte().numpy()).save(root / name / f"{i}.png")
        model = zoo.get("resnet20").create(num_classes=2)
        cfg = LayerMergeConfig(speedup=1.3, backend="eager", device=device, data=str(root),
                               input_shape=(1, 3, 32, 32), batch_size=1 if quick else 64,
                               importance_steps=2 if quick else 20, finetune_size=32 if quick else 200,
                               score_size=32 if quick else 160, recovery_epochs=0.2 if quick else 5.0,
                               timing_rounds=5 if quick else 30, cache_dir=str(Path(tmp) / "cache"), progress=False)
        t0 = time.time()
        result = compress(model, cfg, out=Path(tmp) / "out")
        r = result.report
        return {k: r[k] for k in ("device", "device_name", "speedup", "target_met", "accuracy_before",
                                  "accuracy_after", "intended_relative_error", "merge_relative_error",
                                  "math_mode", "convs_before", "convs_after")} | {"seconds": time.time() - t0}


def markdown(report: dict) -> str:
    lines = [f"# GPU check ({report['device_name']}): `{report.get('command', 'python bench/gpu_check.py')}`", "",
             f"torch {report['torch']}, batch {report['batch']}, {report['size']}x{report['size']}, eager on {report['device']}, "
             f"memory format {report.get('memory_format', 'contiguous')}, "
             f"math mode {report['math_mode']}. Random weights; plans from a data-free importance proxy "
             f"(bench/gpu_check.py docstring). Every plan, the BN-folded original and the identity plan's network "
             f"are timed against the original in one joint run of paired rounds (medians; 95 % interval).",
             "Plans are solved on the pipeline's default latency model (per-call costs calibrated on whole networks, "
             "depthcut.latency.model); 'predicted' is that model, 'additive' the raw sum of row timings seeded with "
             "the measured original. Rows are timed as `row calls` calls queued back to back per sample.",
             "", "| model | row calls | budget | measured speed-up [95 %] | predicted | error | additive | error "
             "| vs BN-folded | paper (PyTorch, 2080 Ti) | intended error (float64) | merged vs unmerged (float32, TF32) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in report["models"]:
        for p in m["plans"]:
            additive = (f"x{p['predicted_speedup_additive']:.2f} | {p['prediction_error_additive']:+.1%}"
                        if "predicted_speedup_additive" in p else "- | -")
            lines.append(f"| {m['model']} | {m.get('row_calls', 1)} | {p['budget_ratio']:.0%} | x{p['speedup']:.2f}"
                         + (f" [{p['low']:.2f}, {p['high']:.2f}]" if "low" in p else "") + " "
                         f"| x{p['predicted_speedup']:.2f} | {p['prediction_error']:+.1%} | {additive} "
                         f"| x{p['speedup_vs_bn_folded']:.2f} | x{p['paper_pytorch_speedup']} "
                         f"| {p['intended_error_float64']:.1e} | {p['merged_vs_unmerged_float32']:.1e} |")
    compiled = [(m, p) for m in report["models"] for p in m["plans"] if "compile" in p]
    if compiled:
        lines += ["", "The same plans under `torch.compile` (inductor, default mode) on the device:", "",
                  "| model | budget | eager speed-up | compiled speed-up | original compiled ms | merged compiled ms "
                  "| cold compile s (original, merged) |", "|---|---|---|---|---|---|---|"]
        for m, p in compiled:
            c = p["compile"]
            lines.append(f"| {m['model']} | {p['budget_ratio']:.0%} | x{p['speedup']:.2f} | x{c['speedup']:.2f} | "
                         f"{c['original_ms']:.2f} | {c['merged_ms']:.2f} | "
                         f"{', '.join(f'{v:.0f}' for v in c['compile_seconds'])} |")
    lines += ["", "| model | row calls | positions | candidates | table time s | calibration s | table body ms "
              "| additive body ms | per-call cost | outside the body ms | model's largest error on its networks "
              "| original / identity (calibration, now) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in report["models"]:
        cost = (f"{m['call_overhead_us']:.1f} us + {m['call_overhead_us_per_mb']:.2f} us/MB"
                if "call_overhead_us" in m else "-")
        lm = m.get("latency_model")
        fit = (f"{lm['other_ms']:.2f} | {max(abs(c['modelled_ms'] / c['measured_ms'] - 1) for c in lm['calibration']):.1%} "
               f"({len(lm['calibration'])} networks) | x{lm['original_factor']:.3f}, "
               f"x{m['identity_now']['ratio']:.3f}" if lm else "- | - | -")
        lines.append(f"| {m['model']} | {m.get('row_calls', 1)} | {m['positions']} | {m['candidates']} | "
                     f"{m['table_seconds']:.0f} | {m.get('calibration_seconds', 0):.0f} | {m['table_body_ms']:.2f} "
                     f"| {m.get('additive_body_ms', m['table_body_ms']):.2f} | {cost} | {fit} |")
    c = report.get("compress")
    if c:
        lines += ["", f"`depthcut.compress` on {c['device']} ({c['device_name']}): x{c['speedup']:.2f} "
                      f"(target met: {c['target_met']}), accuracy {c['accuracy_before']:.1f} -> "
                      f"{c['accuracy_after']:.1f}, intended error {c['intended_relative_error']:.1e}, "
                      f"{c['convs_before']} -> {c['convs_after']} convs, {c['seconds']:.0f} s end to end."]
    return "\n".join(lines) + "\n"


def runs_markdown(paths: list[str]) -> str:
    """Several fresh runs (each its own empty cache) side by side: per plan the lowest and highest measured
    speed-up, and the worst error of the calibrated and of the additive model over the runs."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    lines = [f"# GPU check over {len(reports)} fresh runs ({reports[0]['device_name']})", "",
             "Runs: " + ", ".join(f"`{r.get('command', '?')}`" for r in reports) + ". Each run timed its own "
             "latency table and calibrated its own model from an empty cache; the worst error over the runs is "
             "reported.", "",
             "| model | budget | measured speed-up (lowest - highest) | worst error, calibrated model "
             "| worst error, additive | paper (PyTorch, 2080 Ti) |", "|---|---|---|---|---|---|"]
    for i, m in enumerate(reports[0]["models"]):
        for j, p in enumerate(m["plans"]):
            same = [r["models"][i]["plans"][j] for r in reports]
            worst = max((q["prediction_error"] for q in same), key=abs)
            worst_add = max((q["prediction_error_additive"] for q in same), key=abs)
            lines.append(f"| {m['model']} | {p['budget_ratio']:.0%} | x{min(q['speedup'] for q in same):.2f} - "
                         f"x{max(q['speedup'] for q in same):.2f} | {worst:+.1%} | {worst_add:+.1%} "
                         f"| x{p['paper_pytorch_speedup']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--models", default="resnet34,mobilenet_v2")
    ap.add_argument("--memory-format", default="contiguous", choices=("contiguous", "channels_last"))
    ap.add_argument("--compile-budget", type=float, default=None,
                    help="also time the plan at this budget ratio under torch.compile (e.g. 0.5)")
    ap.add_argument("--row-calls", type=int, default=None,
                    help="calls queued per latency-row sample (default: the backend's; 1 = one synchronised "
                         "call per sample, the timing before issue 8's fix)")
    ap.add_argument("--skip-compress", action="store_true", help="leave out the end-to-end compress run")
    ap.add_argument("--quick", action="store_true", help="tiny settings for a CPU dry run")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_check"))
    ap.add_argument("--summarize", nargs="+", metavar="JSON",
                    help="write --out.md from these runs' JSON files (worst error over the runs) and exit")
    args = ap.parse_args()
    if args.summarize:
        Path(args.out).with_suffix(".md").write_text(runs_markdown(args.summarize))
        return
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    report = {"command": " ".join(["python bench/gpu_check.py"] + sys.argv[1:]), "device": args.device,
              "device_name": get_backend("eager", device=args.device).describe()["device"],
              "torch": torch.__version__, "python": platform.python_version(), "batch": args.batch,
              "size": args.size, "memory_format": args.memory_format, "math_mode": math_mode(args.device), "models": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:   # after every stage: a run cut short still leaves what it measured
        out.with_suffix(".json").write_text(json.dumps(report, indent=1))
        out.with_suffix(".md").write_text(markdown(report))

    with tempfile.TemporaryDirectory() as cache:
        for name in args.models.split(","):
            report["models"].append(check_model(name, args.device, args.batch, args.size, args.rounds, cache,
                                                args.memory_format, args.compile_budget, args.row_calls))
            save()
    if not args.skip_compress:
        report["compress"] = compress_on_device(args.device, args.quick)
        save()
    print(markdown(report))


if __name__ == "__main__":
    main()
