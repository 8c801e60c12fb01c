"""Does the order in which runtime sessions are made bias a joint timing (issue 29)? The comparison timed two
copies of one MobileNetV2 plan at x1.54 and x1.61 in the same rounds, the one added last faster every time, and
``bench/timing_weights.py`` found the network added last fastest in 5 of 6 timings.

Here the embedded MobileNetV2 is timed against itself: three copies of the original, all in the same rounds, on
ONNX Runtime at one thread (the comparison's setting), ``--timings`` times with the sessions made one network
after another (``sequential``: how depthcut made them before) and as many with them made in turns
(``interleaved``: depthcut.latency.compare.interleaved_sessions), alternating. Every copy's true speed-up is
x1.000; the report gives, per way, how often each position (first, second, third copy added) measured fastest
and each position's median speed-up.

    python bench/timing_order.py | tee bench/results/timing_order.log
"""
import argparse
import copy
import math
import statistics
import time

import torch

import cnn_frontier as cf
import joint as bj
from depthcut.compression import Compression
from depthcut.config import LayerMergeConfig
from depthcut.latency.backends import timing_copy
from depthcut.latency.compare import compare_many, interleaved_sessions

COPIES = ("first", "second", "third")


def sequential_sessions(backend, networks: dict, x: torch.Tensor, sessions: int) -> dict:
    """The way depthcut made sessions before: every session of one network, then the next network's."""
    with torch.no_grad():
        return {name: backend.prepare_sessions(timing_copy(net), x, sessions) for name, net in networks.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--timings", type=int, default=20, help="joint timings per way")
    ap.add_argument("--rounds", type=int, default=60)
    opts = ap.parse_args()
    args = bj.parser().parse_args([])
    cfg = cf.compare_config("mobilenet_v2_fmnist", args)
    run = Compression("mobilenet_v2_fmnist", LayerMergeConfig(method="layermerge", speedup=1.5,
                                                               **{**cfg.compress, "progress": False}))
    original = run.original.eval()
    networks = {"original": original} | {name: copy.deepcopy(original).eval() for name in COPIES}
    ways = {"sequential": sequential_sessions, "interleaved": interleaved_sessions}
    seen: dict[str, list[dict[str, float]]] = {way: [] for way in ways}
    print(f"{run.backend.name}, {run.backend.intra_op_threads()} thread(s), {run.config.timing_sessions} sessions, "
          f"{opts.rounds} rounds; the original and three copies of it", flush=True)
    t0 = time.time()
    for k in range(opts.timings):
        for way, make in (ways.items() if k % 2 == 0 else reversed(ways.items())):
            runners = make(run.backend, networks, run.example, run.config.timing_sessions)
            est = compare_many(runners, rounds=opts.rounds, block_rounds=5, warmup=5)
            seen[way].append({name: e.ratio for name, e in est.items()})
            print(f"{way:11s} {k + 1:2d}: " + "  ".join(f"{n} x{r:.3f}" for n, r in seen[way][-1].items()), flush=True)
    print(f"\n{opts.timings} timings per way, {time.time() - t0:.0f} s in all. Every copy's true speed-up is x1.000.\n")
    print("| way | copy added | fastest of the three (times) | median speed-up | mean of log speed-up |")
    print("|---|---|---|---|---|")
    for way, timings in seen.items():
        fastest = [max(t, key=t.get) for t in timings]
        for name in COPIES:
            ratios = [t[name] for t in timings]
            mean_log = statistics.mean(math.log(r) for r in ratios)
            print(f"| {way} | {name} | {fastest.count(name)} of {len(timings)} | x{statistics.median(ratios):.3f} "
                  f"| {100 * mean_log:+.2f} % |")


if __name__ == "__main__":
    main()
