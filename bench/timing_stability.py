"""How far a measured speed-up moves between repeated measurements of the *same* pair (issue 9).

`depthcut.latency.compare.compare_speed` reports a 95% interval from paired interleaved rounds. That interval
covers the noise *within* one measurement (a second or so). This script measures the noise *between*
measurements: the same original and the same compressed network, timed ``--repeats`` times in a row, each time
with fresh runtime sessions (as every landing probe and the final timing do). If the intervals were honest
about the run-to-run spread, each repeat's median would fall inside most other repeats' intervals; the table
says how often it does (pairwise coverage) and the spread of the medians.

Pairs: the embedded ResNet-20 (~0.6 ms a call) against two channel-pruned copies (Torch-Pruning, the channel
baseline's plans, whose landing on the frontier was erratic). The spread is a property of the timing on this
machine, not of the rewrite.

    python bench/timing_stability.py [--repeats 8] [--backend onnxruntime]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from depthcut.cache import atomic_write_json, atomic_write_text  # noqa: E402

OUT = ROOT / "bench" / "results" / "timing_stability"
PAIRS = (("global", 0.3), ("uniform", 0.5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20_fmnist")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()

    from depthcut.cnn.channels import count_macs, prune_channels
    from depthcut.latency.compare import compare_speed
    from depthcut.models import resolve_model

    resolved = resolve_model(args.model)
    original = resolved.model.eval()
    x = torch.randn(*resolved.input_shape, generator=torch.Generator().manual_seed(0))
    report = {"model": args.model, "backend": args.backend, "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "repeats": args.repeats, "pairs": []}
    for scope, ratio in PAIRS:
        pruned = prune_channels(original, x[:1], ratio, scope)
        entry = {"pair": f"channel {scope} {ratio:g}",
                 "macs_ratio": count_macs(original, x[:1]) / count_macs(pruned, x[:1]), "measurements": []}
        for k in range(args.repeats):
            t0 = time.time()
            e = compare_speed(original, pruned, x, args.backend)
            entry["measurements"].append(e.to_dict() | {"seconds": time.time() - t0})
            print(f"{entry['pair']} #{k}: {e.describe()}", flush=True)
        entry |= summary(entry["measurements"])
        report["pairs"].append(entry)
        out = Path(args.out)
        atomic_write_json(out.with_suffix(".json"), report)
        atomic_write_text(out.with_suffix(".md"), markdown(report))
    print(markdown(report))


def summary(ms: list[dict]) -> dict:
    """Spread of the repeats' medians, and how often one repeat's median lies inside another's interval."""
    ratios = [m["ratio"] for m in ms]
    inside = [ms[j]["low"] <= ms[i]["ratio"] <= ms[j]["high"] for i in range(len(ms)) for j in range(len(ms)) if i != j]
    width = statistics.median((m["high"] - m["low"]) / m["ratio"] for m in ms)
    return {"min": min(ratios), "max": max(ratios), "median": statistics.median(ratios),
            "spread": max(ratios) / min(ratios) - 1, "median_interval_width": width,
            "coverage": sum(inside) / max(len(inside), 1)}


def markdown(r: dict) -> str:
    lines = ["# Run-to-run spread of a measured speed-up: `python bench/timing_stability.py`", "",
             f"{r['model']} on {r['backend']} (batch 1, this 2-core shared CPU), {r['repeats']} measurements of "
             f"the same pair, each with fresh sessions and `compare_speed`'s defaults (10-40 paired rounds of 5 "
             f"calls, stop at a 3 % interval). Coverage: the fraction of (i, j) with repeat i's median inside "
             f"repeat j's 95 % interval; an interval honest about run-to-run noise would give about 0.9 or more.",
             "", "| pair | MACs ratio | medians (min / median / max) | spread | median interval width | coverage |",
             "|---|---|---|---|---|---|"]
    for p in r["pairs"]:
        lines.append(f"| {p['pair']} | x{p['macs_ratio']:.2f} | x{p['min']:.3f} / x{p['median']:.3f} / x{p['max']:.3f} "
                     f"| {p['spread']:.1%} | {p['median_interval_width']:.1%} | {p['coverage']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
