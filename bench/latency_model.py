"""How well does the latency table predict end-to-end speed-ups? (issue 9 §1)

For ResNet-34 and MobileNetV2-1.0 (random weights: latency does not depend on them) at batch 1, 224x224, on
ONNX Runtime CPU with the machine's threads:

1. the latency table (every non-dominated (block, kernel option) row, single-conv sessions);
2. plans at the papers' budget ratios (ResNet-34 71/60/50 %, MobileNetV2 55/46/38/33 % of the table's
   unmerged body latency) from the LayerMerge DP with a data-free importance proxy (bench/gpu_check.py);
3. each plan measured against the original with paired interleaved rounds (ratio, 95% interval:
   depthcut.latency.compare), next to the speed-up each latency model predicts:
   * ``additive``: the sum of row latencies (what the DP optimised before issue 9);
   * ``per-call``: rows minus the runtime's fixed per-call cost, which a single-conv session pays once per
     row but a network pays once (depthcut.latency.overhead);
   and the plan the DP picks under each model.

Writes bench/results/latency_model.{json,md}. Resumes from its cache (latency rows) after a kill.

    python bench/latency_model.py [--models resnet34,mobilenet_v2] [--size 224]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from depthcut import zoo  # noqa: E402
from depthcut.cnn.build import build_merged, build_unmerged, is_trivial, plan_from_blocks  # noqa: E402
from depthcut.cnn.graph import analyze  # noqa: E402
from depthcut.latency import get_backend, latency_table  # noqa: E402
from depthcut.latency.compare import compare_speed  # noqa: E402
from depthcut.latency.dominance import measure_bandwidth, prune_dominated  # noqa: E402
from depthcut.latency.overhead import call_overhead_ms, corrected  # noqa: E402
from depthcut.search.layermerge import solve  # noqa: E402
from depthcut.search.tables import Row  # noqa: E402
from gpu_check import BUDGETS, proxy_importance, randomize_bn  # noqa: E402

OUT = ROOT / "bench" / "results" / "latency_model"


def study(name: str, size: int, cache: str, max_rounds: int) -> dict:
    entry = zoo.get(name)
    torch.manual_seed(0)
    model = randomize_bn(entry.create())
    shape = (1, 3, size, size)
    analysis = analyze(model, shape, exclude=entry.chain_exclude, batch_size=1)
    backend = get_backend("onnxruntime")
    t0 = time.time()

    def time_rows(cands):
        return latency_table(cands, backend, batch_size=1, cache_dir=cache, progress=False)

    candidates, dominated, lat = prune_dominated(analysis.candidates, time_rows, max_importance=2.0,
                                                 batch_size=1, bandwidth=measure_bandwidth("cpu", 64))
    overhead = call_overhead_ms(backend, candidates, batch_size=1)
    table_s = time.time() - t0
    models = {"additive": {c.key: lat[c.key] for c in candidates},
              "per-call": corrected({c.key: lat[c.key] for c in candidates}, candidates, overhead)}
    x = torch.randn(shape)
    out = {"model": name, "candidates": len(analysis.candidates), "kept_candidates": len(candidates),
           "table_seconds": table_s, "call_overhead_ms": overhead, "plans": []}
    solved = {}
    for m, ms in models.items():
        rows = [Row(c.start, c.end, ms[c.key], proxy_importance(c), ref=c) for c in candidates]
        body = sum(r.latency_ms for r in rows if is_trivial(r.ref))
        solved[m] = (solve(rows, analysis.chain.length, steps=2000, max_latency_ms=body), body)
    for ratio in BUDGETS[name]:
        for m, (frontier, body) in solved.items():
            solution = frontier.best(ratio * body)
            plan = plan_from_blocks(analysis.chain, [r.ref for r in solution.rows])
            merged = build_merged(build_unmerged(analysis.gm, analysis.chain, plan).eval(), analysis.chain, plan)
            est = compare_speed(model, merged, x, backend, repeats=5, min_rounds=10, max_rounds=max_rounds,
                                rel_width=0.02)
            row = {"budget_ratio": ratio, "dp_model": m, "measured": est.to_dict(),
                   "blocks": [r.ref.key for r in solution.rows if not is_trivial(r.ref)], "predicted": {}}
            for pm, ms in models.items():
                pbody = sum(ms[r.ref.key] for r in solution.rows)
                ibody = sum(ms[c.key] for c in candidates if is_trivial(c))
                other = est.original_ms - ibody          # what the table does not model, from the original
                row["predicted"][pm] = est.original_ms / (other + pbody)
            out["plans"].append(row)
            errs = ", ".join(f"{pm} {p / est.ratio - 1:+.1%}" for pm, p in row["predicted"].items())
            print(f"{name} {ratio:.0%} (DP on {m}): measured {est.describe()}; prediction error {errs}", flush=True)
    return out


def markdown(report: dict) -> str:
    lines = ["# Latency model on ONNX Runtime CPU: `python bench/latency_model.py`", "",
             f"{report['cpu']}, {report['threads']} threads, onnxruntime {report['onnxruntime']}, batch 1, "
             f"{report['size']}x{report['size']}, random weights, data-free importance proxy. Measured = median of "
             f"paired per-round ratios, 95% interval from order statistics (depthcut.latency.compare). Prediction "
             f"error = predicted / measured - 1.", ""]
    for m in report["models"]:
        lines += [f"## {m['model']}: {m['kept_candidates']} of {m['candidates']} candidates timed, per-call "
                  f"overhead {1e3 * m['call_overhead_ms'][0]:.1f} us + {1e9 * m['call_overhead_ms'][1]:.1f} us/MB, table {m['table_seconds']:.0f} s", "",
                  "| budget | DP on | measured (95% CI) | rounds | additive pred. | error | per-call pred. | error |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in m["plans"]:
            e = p["measured"]
            cells = [f"x{p['predicted'][k]:.2f} | {p['predicted'][k] / e['ratio'] - 1:+.1%}"
                     for k in ("additive", "per-call")]
            lines.append(f"| {p['budget_ratio']:.0%} | {p['dp_model']} | x{e['ratio']:.2f} [{e['low']:.2f}, "
                         f"{e['high']:.2f}] | {e['rounds']} | " + " | ".join(cells) + " |")
        worst = {k: max(abs(p["predicted"][k] / p["measured"]["ratio"] - 1) for p in m["plans"])
                 for k in ("additive", "per-call")}
        mono = all(_monotone([p["measured"]["ratio"] for p in m["plans"] if p["dp_model"] == dm])
                   for dm in ("additive", "per-call"))
        lines += ["", f"Largest prediction error: additive {worst['additive']:.1%}, per-call {worst['per-call']:.1%}. "
                      f"Measured speed-up monotone in the budget (for the DP on either model): "
                      f"{'yes' if mono else 'no'}.", ""]
    return "\n".join(lines)


def _monotone(speedups_by_decreasing_budget: list[float]) -> bool:
    return all(b >= a for a, b in zip(speedups_by_decreasing_budget, speedups_by_decreasing_budget[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet34,mobilenet_v2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--max-rounds", type=int, default=30)
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "bench_latency_model"))
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    import onnxruntime

    report = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "size": args.size, "models": []}
    out = Path(args.out)
    for name in args.models.split(","):
        report["models"].append(study(name, args.size, args.cache, args.max_rounds))
        out.with_suffix(".json").write_text(json.dumps(report, indent=1))
        out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out}.md")


if __name__ == "__main__":
    main()
