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

Timing schemes compared, each measuring every pair ``--repeats`` times (interleaved repeat by repeat, so that
machine drift hits every scheme alike):
* ``one session``: ``compare_speed``'s defaults with one session pair (10-40 rounds, stop at a 3 % interval);
* ``one session, 100 rounds``: the same session pair timed longer;
* ``pipeline final``: what ``depthcut compress`` now does for its final timing - ``timing_sessions`` (4) session
  pairs, each timed for blocks of 5 rounds in turn, 20-100 rounds, the interval widened to the sessions' spread;
* ``8 sessions, 400 rounds``: a long timing (blocks of 10 rounds).

With ``--threads 2 1`` every scheme runs at each ONNX Runtime thread count (``timing_threads``), interleaved
the same way: on this 2-core shared VM, 2-thread timings of a channel-pruned network flip between levels for
tens of seconds at a time, 1-thread timings do not (``bench/results/timing_stability_threads.md``).

    python bench/timing_stability.py [--repeats 10] [--backend onnxruntime] [--threads 2 1] [--schemes ...]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from depthcut.cache import atomic_write_result  # noqa: E402

OUT = ROOT / "bench" / "results" / "timing_stability"
PAIRS = (("global", 0.3), ("uniform", 0.5))
SCHEMES = {
    "one session": {},
    "one session, 100 rounds": {"min_rounds": 100, "max_rounds": 100},
    "pipeline final": "final",
    "8 sessions, 400 rounds": {"min_rounds": 400, "max_rounds": 400, "sessions": 8, "block_rounds": 10},
}


def scheme_kwargs(name: str) -> dict:
    spec = SCHEMES[name]
    if spec != "final":
        return spec
    from depthcut.config import LayerMergeConfig
    from depthcut.compression import final_timing

    return final_timing(LayerMergeConfig())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20_fmnist")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--threads", nargs="+", type=int, default=None,
                    help="ONNX Runtime thread counts to compare (default: torch's threads only)")
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    args = ap.parse_args()

    from depthcut.cnn.channels import count_macs, prune_channels
    from depthcut.latency import get_backend
    from depthcut.latency.compare import compare_speed
    from depthcut.models import resolve_model

    resolved = resolve_model(args.model)
    original = resolved.model.eval()
    x = torch.randn(*resolved.input_shape, generator=torch.Generator().manual_seed(0))
    report = {"model": args.model, "backend": args.backend, "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "repeats": args.repeats, "threads": args.threads, "pairs": []}
    threads = args.threads or [None]
    backends = {t: get_backend(args.backend, **({"threads": t} if t else {})) for t in threads}
    for scope, ratio in PAIRS:
        pruned = prune_channels(original, x[:1], ratio, scope)
        macs = count_macs(original, x[:1]) / count_macs(pruned, x[:1])
        entries = {(name, t): {"pair": f"channel {scope} {ratio:g}", "scheme": name, "kwargs": scheme_kwargs(name),
                               "threads": backends[t].describe()["threads"], "macs_ratio": macs, "measurements": []}
                   for name in args.schemes for t in threads}
        for k in range(args.repeats):
            for (name, t), entry in entries.items():
                t0 = time.time()
                e = compare_speed(original, pruned, x, backends[t], **entry["kwargs"])
                entry["measurements"].append(e.to_dict() | {"seconds": time.time() - t0})
                print(f"{entry['pair']} / {name} / {entry['threads']} threads #{k}: {e.describe()}", flush=True)
        for entry in entries.values():
            entry |= summary(entry["measurements"])
            report["pairs"].append(entry)
        out = Path(args.out)
        atomic_write_result(out, report, markdown(report))
    print(markdown(report))


def summary(ms: list[dict]) -> dict:
    """Spread of the repeats' medians, and how often one repeat's median lies inside another's interval."""
    ratios = [m["ratio"] for m in ms]
    inside = [ms[j]["low"] <= ms[i]["ratio"] <= ms[j]["high"] for i in range(len(ms)) for j in range(len(ms)) if i != j]
    width = statistics.median((m["high"] - m["low"]) / m["ratio"] for m in ms)
    return {"min": min(ratios), "max": max(ratios), "median": statistics.median(ratios),
            "spread": max(ratios) / min(ratios) - 1, "median_interval_width": width,
            "coverage": sum(inside) / max(len(inside), 1),
            "seconds_each": statistics.median(m["seconds"] for m in ms)}


def markdown(r: dict) -> str:
    lines = ["# Run-to-run spread of a measured speed-up: `python bench/timing_stability.py`", "",
             f"{r['model']} on {r['backend']} (batch 1, this 2-core shared CPU), {r['repeats']} measurements of "
             f"the same pair per scheme, each with fresh sessions, the schemes interleaved repeat by repeat. "
             f"Coverage: the fraction of (i, j) with repeat i's median inside repeat j's 95 % interval; an "
             f"interval honest about run-to-run noise gives about 0.9 or more (exactly 0.95 is not expected: "
             f"both ends are noisy).", "",
             "Schemes: *one session*: `compare_speed`'s defaults, one session pair, 10-40 paired rounds of 5 calls, "
             "stop at a 3 % interval (what every timing did before); *one session, 100 rounds*: the same, longer; "
             "*pipeline final*: what `depthcut compress` now does for its final timing (4 session pairs, each in turn "
             "for blocks of 5 rounds, 20-100 rounds, the interval widened to a t interval over the sessions' ratios); "
             "*8 sessions, 400 rounds*: a long timing (blocks of 10).", "",
             "| pair | scheme | threads | MACs ratio | medians (min / median / max) | spread | median interval width "
             "| coverage | s per measurement |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in r["pairs"]:
        lines.append(f"| {p['pair']} | {p.get('scheme', 'one session')} | {p.get('threads', '-')} "
                     f"| x{p['macs_ratio']:.2f} | x{p['min']:.3f} "
                     f"/ x{p['median']:.3f} / x{p['max']:.3f} | {p['spread']:.1%} | {p['median_interval_width']:.1%} "
                     f"| {p['coverage']:.2f} | {p.get('seconds_each', float('nan')):.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
