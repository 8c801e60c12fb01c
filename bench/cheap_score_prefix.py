"""What the shared prefix and the shared modules save on the cheap score (issue 30): each candidate's `bn-batch`
score as built (``depthcut.importance.prefix``, the candidate built over the original's own modules), on a copy
of the network, and without the prefix, and a fine-tuned entry with the table's recipe, timed interleaved.

For every ``--every``-th non-trivial candidate of each model (the embedded networks, pretrained): the cheap score
from the original's kept activations on the original's modules, the same on a copy of the network (as before
the modules were shared), and run from the input on a copy (the prefix disabled), in rotating order; the three
must be equal. For ``--finetunes`` evenly spaced candidates, the
full table's entry (the frontier's recipe: 20 steps, 10 for MobileNetV2). Reported as medians per entry and as
the share of a fine-tuned entry each cheap score costs: the adaptive stage's cheap scores cost
(candidates x that share) fine-tuned entries.

    python bench/cheap_score_prefix.py [--models resnet20_fmnist mobilenet_v2_fmnist] [--every 4]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import Subset, TensorDataset

from depthcut.cache import atomic_write_result
from depthcut.cnn.build import is_trivial
from depthcut.compression import Compression
from depthcut.config import LayerMergeConfig
from depthcut.data.datasets import _subset
from depthcut.importance.prefix import SharedPrefix
from depthcut.importance.scorer import BN_BATCH_SIZE, CHEAP_PROXY, CHEAP_SCORE_SIZE, CandidateAccuracy

ROOT = Path(__file__).resolve().parents[1]
STEPS = {"mobilenet_v2_fmnist": 10}       # the frontier's recipe (bench/cnn_frontier.py); 20 otherwise


def measure(model: str, args) -> dict:
    config = LayerMergeConfig(data="fashion-mnist", importance_steps=STEPS.get(model, 20), channels_last=True,
                              progress=False, threads=args.threads)
    run = Compression(model, config)
    analysis, splits = run.analysis, run.splits
    todo = [c for c in analysis.candidates if not is_trivial(c)]
    chosen = todo[::args.every]
    n = min(CHEAP_SCORE_SIZE, len(splits.score))
    first = (_subset(splits.score, torch.arange(n)) if isinstance(splits.score, TensorDataset)
             else Subset(splits.score, range(n)))
    device = str(next(run.original.parameters()).device)
    cheap_cfg = replace(run.config, importance=CHEAP_PROXY, importance_mode="full")

    def scorer(config, score):
        return CandidateAccuracy(run.original, tuple(analysis.input_shape), tuple(run.resolved.chain_exclude),
                                 splits.finetune, score, config, device, analysis)

    with_prefix, on_copy, from_input = (scorer(cheap_cfg, first) for _ in range(3))
    t0 = time.perf_counter()
    with_prefix.prefix = SharedPrefix(analysis.gm, first, BN_BATCH_SIZE, device)
    prefix_s = time.perf_counter() - t0
    assert with_prefix.prefix.enabled, "the kept activations do not fit in memory here"
    prefix_gb = with_prefix.prefix.kept_bytes / 2**30
    on_copy.prefix, on_copy.share_weights = with_prefix.prefix, False
    from_input.prefix = SharedPrefix(analysis.gm, first, BN_BATCH_SIZE, device, max_bytes=0)   # disabled
    from_input.share_weights = False
    arms = [("prefix", with_prefix), ("copy", on_copy), ("input", from_input)]
    times = {name: [] for name, _ in arms}
    equal = 0
    for i, c in enumerate(chosen):
        order = arms[i % 3:] + arms[:i % 3]
        accs = {}
        for name, s in order:
            t0 = time.perf_counter()
            accs[name] = s(c)
            times[name].append(time.perf_counter() - t0)
        equal += accs["prefix"] == accs["copy"] == accs["input"]
        if i % 25 == 0:
            print(f"[{model}] {i + 1}/{len(chosen)} candidates", flush=True)
    finetune = scorer(run.config, splits.score)
    picks = todo[::max(1, len(todo) // args.finetunes)][:args.finetunes]
    ft_times = []
    for c in picks:
        t0 = time.perf_counter()
        finetune(c)
        ft_times.append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ft = statistics.median(ft_times)
    return {"model": model, "candidates": len(todo), "timed": len(chosen), "equal": equal,
            "prefix_seconds": prefix_s, "prefix_gb": prefix_gb, "median_s": med, "finetune_median_s": ft, "finetunes_timed": len(picks),
            "importance_steps": config.importance_steps, "score_images": n,
            "share_of_finetune": {k: v / ft for k, v in med.items()}, "speedup": med["input"] / med["prefix"],
            "speedup_of_sharing": med["copy"] / med["prefix"],
            "total_s": {k: sum(v) for k, v in times.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet20_fmnist", "mobilenet_v2_fmnist"])
    ap.add_argument("--every", type=int, default=4, help="time every N-th candidate")
    ap.add_argument("--finetunes", type=int, default=10, help="fine-tuned entries timed per model")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cheap_score_prefix"))
    args = ap.parse_args()
    results = [measure(m, args) for m in args.models]
    command = "python bench/cheap_score_prefix.py" + ("" if args.models == ap.get_default("models")
                                                      else " --models " + " ".join(args.models)) \
        + ("" if args.every == ap.get_default("every") else f" --every {args.every}") \
        + ("" if args.out == ap.get_default("out") else f" --out {args.out}")
    lines = [f"# The cheap score with the shared prefix and the original's modules: `{command}`", "",
             f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}. The `bn-batch` "
             f"cheap score ({results[0]['score_images']} scoring images, batches of {BN_BATCH_SIZE}) of every "
             f"{args.every}-th candidate three ways, in rotating order: as built (from the original's kept "
             "activations, the candidate built over the original's own modules), from the kept activations on a "
             "copy of the network, and from the input on a copy; a fine-tuned entry with the table's recipe for "
             "comparison. Medians per entry (sums over the timed candidates in brackets).", "",
             "| model | candidates timed | equal scores | from the input, copy | prefix, copy | as built | "
             "x faster than the copy | x faster than from the input | prefix built once | fine-tuned entry | "
             "cheap score / fine-tuned entry (input -> as built) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        med, tot = r["median_s"], r["total_s"]
        cell = lambda k: f"{med[k]:.3f} s ({tot[k]:.0f} s)"     # noqa: E731
        lines.append(f"| {r['model']} | {r['timed']} of {r['candidates']} | {r['equal']} of {r['timed']} | "
                     f"{cell('input')} | {cell('copy')} | {cell('prefix')} | x{r['speedup_of_sharing']:.2f} | "
                     f"x{r['speedup']:.2f} | {r['prefix_seconds']:.1f} s, {r['prefix_gb']:.2f} GB | "
                     f"{r['finetune_median_s']:.2f} s ({r['importance_steps']} steps, {r['finetunes_timed']} entries) | "
                     f"{r['share_of_finetune']['input']:.0%} -> {r['share_of_finetune']['prefix']:.0%} |")
    out = Path(args.out)
    atomic_write_result(out, {"command": command, "results": results}, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
