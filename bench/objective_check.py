"""What LayerMerge's DP maximises, measured: the paper's sum of importances against the summed accuracy change.

The DP maximises Σ I over a plan's blocks with I = exp(Δacc / 100) (SPEC A6-A7): a block adds about 1, so one
more block is worth as much as 100 points of summed damage, and on MobileNetV2 the regenerated frontier
benchmark's x1.5 plan removed a depthwise conv to keep one more block (bench/results/cnn_frontier_select.md,
docs/benchmarks.md). Here the same runs - the frontier benchmark's settings and caches - land with either
objective: ``Σ I`` (depthcut's default) and ``Σ log I`` = Σ Δacc / 100, the summed accuracy change, given to
the DP through the stage API (``Compression.use(importance=...)``). Each lands on its target, is verified and
recovered with the same recipe; accuracy and measured speed-up come from compress's own report.

    python bench/objective_check.py [--model mobilenet_v2_fmnist] [--targets 1.25 1.5 2.0] [--seeds 0]

``--matched``: the registered variant ``layermerge-damage`` against ``layermerge`` through ``depthcut compare
--match select`` with the frontier benchmark's settings (3 seeds sharing the seed-0 networks, the same recovery,
fresh joint timings), written to ``--out``_matched.md and kept under .cache/objective_check_runs (resumable).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from depthcut.cache import atomic_write_json, atomic_write_text
from depthcut.compression import Compression

import cnn_frontier as cf

OUT = Path(__file__).resolve().parents[1] / "bench" / "results" / "objective_check"
OBJECTIVES = {"sum I (default)": lambda i: i, "sum log I (summed accuracy change)": math.log}


def one(model: str, target: float, seed: int, objective: str, args) -> dict:
    cfg = cf.compare_config(model, args).run_config("layermerge", target, seed)
    run = Compression(model, cfg)
    run.use(importance={k: OBJECTIVES[objective](v) for k, v in run.importance.items()})
    r = run.report
    return {"model": model, "target": target, "seed": seed, "objective": objective,
            "accuracy_after": r["accuracy_after"], "speedup": r["speedup"], "speedup_low": r["speedup_low"],
            "speedup_high": r["speedup_high"], "blocks": len(r["plan_blocks"]),
            "convs_after": r["convs_after"], "seconds": r["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mobilenet_v2_fmnist")
    ap.add_argument("--targets", nargs="+", type=float, default=[1.25, 1.5, 2.0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--matched", action="store_true", help="the two objectives at matched latency, 3 seeds")
    args = ap.parse_args()
    frontier_args = cf.parser().parse_args([])           # the frontier benchmark's budgets and caches
    if args.matched:
        return matched(args, frontier_args)
    out, rows = Path(args.out), []
    for target in args.targets:
        for seed in args.seeds:
            for objective in OBJECTIVES:
                path = out / f"{args.model}-x{target:g}-s{seed}-{objective.split(' (')[0].replace(' ', '_')}.json"
                if not path.exists():                     # resumable: one file a run
                    atomic_write_json(path, one(args.model, target, seed, objective, frontier_args))
                rows.append(json.loads(path.read_text()))
    lines = [f"# LayerMerge's objective: `python bench/objective_check.py --model {args.model}`", "",
             "Same settings and caches as `bench/cnn_frontier.py` (one importance table, seed 0; recovery "
             f"{cf.per_model(frontier_args.recovery_epochs, args.model, '1.0')} epochs); each run lands on its "
             f"target alone (its final timing shown), no matching. {sum(r['seconds'] for r in rows) / 60:.0f} "
             "minutes of compress runs (the importance table cached by the frontier benchmark).", "",
             "| target | seed | objective | accuracy after recovery | speed-up (final, 95 % CI) | blocks | convs |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| x{r['target']:g} | {r['seed']} | {r['objective']} | {r['accuracy_after']:.2f} | "
                     f"x{r['speedup']:.2f} [{r['speedup_low']:.2f}, {r['speedup_high']:.2f}] | {r['blocks']} | "
                     f"{r['convs_after']} |")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


def matched(args, frontier_args) -> None:
    from depthcut.comparison import compare

    frontier_args.methods, frontier_args.targets = ["layermerge", "layermerge-damage"], args.targets
    folder = Path(__file__).resolve().parents[1] / ".cache" / "objective_check_runs" / args.model
    c = compare(args.model, cf.compare_config(args.model, frontier_args), out=folder,
                command=f"python bench/objective_check.py --matched --model {args.model}")
    lines = ["# LayerMerge's objective at matched latency: `python bench/objective_check.py --matched`", "",
             *cf.headline({args.model: c}), "", (folder / "report.md").read_text().replace("\n## ", "\n### ")]
    atomic_write_text(Path(str(args.out) + "_matched.md"), "\n".join(lines))
    print("\n".join(lines[:12]))


if __name__ == "__main__":
    main()
