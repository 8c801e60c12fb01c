"""Depth and width chosen together, against each alone, at equal measured latency (issue 29).

For each model, target and seed, ``depthcut.compare`` runs layermerge, channel and layermerge+channel (the same
importance table, the same landing band, the same recovery, every network of one (target, seed) timed jointly
against the original) and the comparison (report and networks) is kept under ``--runs``/<model>-x<target>-seed<seed>/
(skipped when present: the benchmark resumes). Writes ``--out``.json and ``--out``.md: per (model, target), accuracy
(mean +/- std over seeds) and joint speed-up per method, every run's plan (depth blocks and width), the joint
method's extra cost, and the issue's two checks (the joint method at least the better of the other two minus
0.1 points everywhere; at least 0.5 points above it at x2.0 or x2.5 on some network).

    python bench/joint.py [--models resnet20_fmnist mobilenet_v2_fmnist] [--targets 1.5 2.0 2.5]
                          [--seeds 0 1 2] [--recovery-epochs 1.0] [--cache .cache/compare]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from depthcut.cache import atomic_write_json, atomic_write_text
from depthcut.comparison import CompareConfig, compare

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("layermerge", "channel", "layermerge+channel")
JOINT = "layermerge+channel"


def run_dir(runs: Path, model: str, target: float, seed: int) -> Path:
    return runs / f"{model}-x{target:g}-seed{seed}"


def one_comparison(model: str, target: float, seed: int, args) -> dict:
    """One (model, target, seed): every method landed, recovered alike and timed jointly (cached on disk)."""
    folder = run_dir(Path(args.runs), model, target, seed)
    if (folder / "report.json").exists():
        return json.loads((folder / "report.json").read_text())
    config = CompareConfig(methods=METHODS, speedups=(target,), seeds=(seed,), compress={
        "data": "fashion-mnist", "backend": args.backend, "recovery_epochs": args.recovery_epochs,
        "importance_seed": 0, "cache_dir": args.cache, "timing_threads": args.timing_threads})
    compare(model, config, out=folder, command=f"bench/joint.py {model} x{target:g} seed {seed}")
    return json.loads((folder / "report.json").read_text())


def summary(reports: list[dict], models: list[str], targets: list[float]) -> dict:
    """Per (model, target): each method's accuracy over seeds and joint speed-ups, and the issue's checks."""
    cells = {}
    for model in models:
        for target in targets:
            runs = [r for rep in reports if rep["model"] == model for r in rep["runs"] if r["target"] == target]
            row = {}
            for method in METHODS:
                mine = [r for r in runs if r["method"] == method and r["accuracy_after"] is not None and r["joint"]]
                acc = [r["accuracy_after"] for r in mine]
                row[method] = {"seeds": len(mine), "errors": [r["error"] for r in runs if r["method"] == method
                                                                and r["error"]],
                               "accuracy": statistics.mean(acc) if acc else None,
                               "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0 if acc else None,
                               "speedup": statistics.mean(r["joint"]["ratio"] for r in mine) if mine else None,
                               "speedup_low": min((r["joint"]["low"] for r in mine), default=None),
                               "speedup_high": max((r["joint"]["high"] for r in mine), default=None)}
            others = [row[m]["accuracy"] for m in METHODS if m != JOINT and row[m]["accuracy"] is not None]
            joint = row[JOINT]["accuracy"]
            margin = joint - max(others) if joint is not None and others else None
            cells[f"{model} x{target:g}"] = {"model": model, "target": target, "methods": row, "margin": margin,
                                             "runs": runs}
    margins = [c["margin"] for c in cells.values()]
    return {"cells": cells,
            "never_worse_by_0.1": all(m is not None and m >= -0.1 for m in margins),
            "ahead_by_0.5_at_2_or_2.5": any(c["margin"] is not None and c["margin"] >= 0.5 and c["target"] >= 2.0
                                            for c in cells.values())}


def markdown(result: dict, command: str) -> str:
    lines = ["# Depth and width together, at equal measured latency (issue 29)", "", f"`{command}`", "",
             "Each cell: accuracy after the same recovery, mean ± std over seeds, and the joint speed-up (every "
             "method's network of one target and seed timed against the original in the same rounds; mean, and "
             "the widest interval). Margin: layermerge+channel minus the better of the other two.", "",
             "| model | target | layermerge | channel | layermerge+channel | margin |", "|---|---|---|---|---|---|"]
    for c in result["cells"].values():
        cells = []
        for m in METHODS:
            r = c["methods"][m]
            cells.append("-" if r["accuracy"] is None else
                         f"{r['accuracy']:.2f} ± {r['accuracy_std']:.2f} (x{r['speedup']:.2f} "
                         f"[{r['speedup_low']:.2f}, {r['speedup_high']:.2f}], {r['seeds']} seeds)")
        margin = "-" if c["margin"] is None else f"{c['margin']:+.2f}"
        lines.append(f"| {c['model']} | x{c['target']:g} | " + " | ".join(cells) + f" | {margin} |")
    lines += ["", f"- never worse than the better of the two by more than 0.1 points: "
                  f"**{result['never_worse_by_0.1']}**",
              f"- at least 0.5 points ahead at x2.0 or x2.5 on some network: **{result['ahead_by_0.5_at_2_or_2.5']}**",
              "", "## Runs", "", "| model | target | seed | method | accuracy | joint speed-up | plan |",
              "|---|---|---|---|---|---|---|"]
    for c in result["cells"].values():
        for r in sorted(c["runs"], key=lambda r: (r["seed"], r["method"])):
            speed = f"x{r['joint']['ratio']:.3f}" if r.get("joint") else "-"
            acc = f"{r['accuracy_after']:.2f}" if r["accuracy_after"] is not None else r["error"] or "-"
            lines.append(f"| {c['model']} | x{c['target']:g} | {r['seed']} | {r['method']} | {acc} | {speed} "
                         f"| {json.dumps(r['plan'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet20_fmnist", "mobilenet_v2_fmnist"])
    ap.add_argument("--targets", nargs="+", type=float, default=[1.5, 2.0, 2.5])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--recovery-epochs", type=float, default=1.0)
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--timing-threads", type=int, default=None)
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "compare"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "joint"))
    ap.add_argument("--runs", default=str(ROOT / ".cache" / "joint_runs"),
                    help="where each comparison's report and networks are kept (resumable)")
    ap.add_argument("--report-only", action="store_true", help="summarise the comparisons already present")
    args = ap.parse_args()
    reports = []
    for model in args.models:
        for target in args.targets:
            for seed in args.seeds:
                folder = run_dir(Path(args.runs), model, target, seed)
                if args.report_only:
                    if (folder / "report.json").exists():
                        reports.append(json.loads((folder / "report.json").read_text()))
                    continue
                reports.append(one_comparison(model, target, seed, args))
    command = "python bench/joint.py " + " ".join(
        [f"--models {' '.join(args.models)}", f"--targets {' '.join(f'{t:g}' for t in args.targets)}",
         f"--seeds {' '.join(map(str, args.seeds))}", f"--recovery-epochs {args.recovery_epochs:g}"])
    result = summary(reports, args.models, args.targets) | {"command": command}
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), result)
    atomic_write_text(out.with_suffix(".md"), markdown(result, command))
    print(markdown(result, command))


if __name__ == "__main__":
    main()
