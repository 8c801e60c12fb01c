"""Do the 95 % intervals of a measured speed-up hold? (issue 33)

A landing accepts a plan when its probe's interval is at or above the target; if intervals exclude the truth
more often than they say, it accepts plans that are not fast enough (a timm resnet18d landed at x1.55
[1.43, 1.62] and measured x1.06 afterwards). Here the same pair is timed ``--repeats`` times with the protocol
every probe and the final timing use (``depthcut.compression.final_timing``, fresh runtime sessions each time),
for each timing configuration, the configurations interleaved repeat by repeat so that machine drift hits
them alike. The long-run ratio of a configuration is the median of its repeats' ratios; the coverage is the
fraction of repeats whose reported interval contains it. An honest 95 % interval covers it at least 90 % of
the time.

The intervals are the ones depthcut reports, with the backend's drift floor (``Backend.drift``: a relative
half-width the interval never goes below, because a shared machine moves between levels for tens of seconds,
longer than any one timing sees). The table also gives the coverage with no floor, and the smallest floor
that would reach 0.9 on these repeats.

Pair: the embedded ResNet-20 against a latency-only LayerMerge plan of it (the DP keeping the most blocks
within 55 % of the original's MACs; no importance needed).

    python bench/timing_coverage.py [--repeats 20] [--configs onnxruntime onnxruntime:1 eager compile]

Writes bench/results/timing_coverage.{json,md}.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from depthcut import zoo
from depthcut.cache import atomic_write_result
from depthcut.cnn.build import build_merged, build_unmerged, plan_from_blocks
from depthcut.cnn.graph import analyze
from depthcut.config import LayerMergeConfig
from depthcut.latency import get_backend
from depthcut.latency.compare import compare_speed
from depthcut.latency.dominance import macs
from depthcut.latency.model import calibration_plans
from depthcut.compression import final_timing

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "timing_coverage"
CONFIGS = ("onnxruntime", "onnxruntime:1", "eager", "compile")
FLOORS = (0.0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08)


def pair(name: str = "resnet20_fmnist") -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor, list[str]]:
    entry = zoo.get(name)
    model = zoo.load(name)
    analysis = analyze(model, entry.input_shape, exclude=entry.chain_exclude)
    rows = [(c, float(macs(c)) if c.kept else 0.0) for c in analysis.candidates]
    plan_rows = dict(calibration_plans(rows, analysis.chain.length, fractions=(0.55,)))["55% budget"]
    plan = plan_from_blocks(analysis.chain, plan_rows)
    merged = build_merged(build_unmerged(analysis.gm, analysis.chain, plan).eval(), analysis.chain, plan).eval()
    return model, merged, torch.randn(entry.input_shape), [c.key for c in plan_rows if c.end - c.start > 1]


def backend_for(config: str):
    name, _, threads = config.partition(":")
    return get_backend(name, **({"threads": int(threads)} if threads else {}))


def covered(estimate: dict, truth: float, floor: float) -> bool:
    """The interval as reported, widened (if narrower) to +-floor around its ratio, holds ``truth``."""
    low = min(estimate["low"], estimate["ratio"] / (1 + floor))
    high = max(estimate["high"], estimate["ratio"] * (1 + floor))
    return low <= truth <= high


def summarise(config: str, drift: float, estimates: list[dict], seconds: list[float]) -> dict:
    """``estimates`` were timed without a floor; depthcut reports them with ``drift`` (compare.with_drift)."""
    truth = statistics.median(e["ratio"] for e in estimates)
    coverage = {f: sum(covered(e, truth, f) for e in estimates) / len(estimates) for f in FLOORS}
    reported = sum(covered(e, truth, drift) for e in estimates) / len(estimates)
    ratios = [e["ratio"] for e in estimates]
    return {"config": config, "drift_floor": drift, "repeats": len(estimates), "long_run_ratio": truth,
            "coverage": reported, "coverage_without_floor": coverage[0.0],
            "smallest_floor_for_0.9": next((f for f in FLOORS if coverage[f] >= 0.9), None),
            "coverage_by_floor": {str(f): c for f, c in coverage.items()},
            "spread": (max(ratios) - min(ratios)) / truth,
            "median_width": statistics.median((max(e["high"], e["ratio"] * (1 + drift))
                                               - min(e["low"], e["ratio"] / (1 + drift))) / e["ratio"]
                                              for e in estimates),
            "seconds_per_measurement": statistics.median(seconds), "estimates": estimates}


def markdown(report: dict) -> str:
    command = f"python bench/timing_coverage.py --repeats {report['repeats']}"
    if report.get("command_extra"):
        command += " " + report["command_extra"]
    lines = [f"# Coverage of the 95 % speed-up intervals: `{command}`", "",
             f"{report['model']} against a latency-only LayerMerge plan of it ({len(report['plan'])} merged blocks), "
             f"{report['cpu']}, torch {report['torch']}, default threads {report['threads']}. Each configuration "
             f"timed the pair {report['repeats']} times with the final-timing protocol (fresh sessions each time; "
             f"{report['protocol']}), the configurations interleaved repeat by repeat. Long-run ratio: the median "
             f"of a configuration's repeats. Coverage: the fraction of repeats whose interval, as depthcut reports "
             f"it (drift floor included), contains the long-run ratio; 0.9 or more is honest.", "",
             "| configuration | drift floor | long-run ratio | spread of repeats | median interval width | "
             "**coverage** | coverage without the floor | smallest floor for 0.9 | s per timing |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in report["configs"]:
        best = s["smallest_floor_for_0.9"]
        lines.append(f"| {s['config']} | {s['drift_floor']:.1%} | x{s['long_run_ratio']:.3f} | {s['spread']:.1%} | "
                     f"{s['median_width']:.1%} | **{s['coverage']:.2f}** | {s['coverage_without_floor']:.2f} | "
                     f"{'-' if best is None else f'{best:.1%}'} | {s['seconds_per_measurement']:.1f} |")
    worst = min(s["coverage"] for s in report["configs"])
    lines += ["", f"Lowest coverage: **{worst:.2f}**.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS),
                    help="backend or backend:threads (ONNX Runtime's timing threads)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    original, merged, x, plan = pair()
    backends = {c: backend_for(c) for c in args.configs}
    how = final_timing(LayerMergeConfig())
    results: dict[str, list[dict]] = {c: [] for c in args.configs}
    seconds: dict[str, list[float]] = {c: [] for c in args.configs}
    for k in range(args.repeats):
        order = args.configs[k % len(args.configs):] + args.configs[:k % len(args.configs)]
        for c in order:
            t0 = time.time()
            est = compare_speed(original, merged, x, backends[c], drift=0.0, **how)   # the floor added below
            seconds[c].append(time.time() - t0)
            results[c].append(est.to_dict())
        print(f"repeat {k + 1}/{args.repeats}: " + ", ".join(f"{c} x{results[c][-1]['ratio']:.3f} "
                                                             f"[{results[c][-1]['low']:.3f}, {results[c][-1]['high']:.3f}]"
                                                             for c in args.configs), flush=True)
    extra = ("" if args.configs == list(CONFIGS) else "--configs " + " ".join(args.configs)) + (
        "" if Path(args.out) == OUT else f" --out {Path(args.out).relative_to(ROOT) if Path(args.out).is_relative_to(ROOT) else args.out}")
    report = {"model": "resnet20_fmnist", "plan": plan, "repeats": args.repeats, "cpu": platform.machine(),
              "command_extra": extra.strip(),
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "protocol": ", ".join(f"{k} {v}" for k, v in how.items()),
              "configs": [summarise(c, backends[c].drift(), results[c], seconds[c]) for c in args.configs]}
    out = Path(args.out)
    atomic_write_result(out, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
