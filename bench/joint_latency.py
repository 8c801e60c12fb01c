"""The joint method's latency side on a model by name (issue 29): `layermerge+channel` on a torchvision or timm
network with random weights, no data and no fine-tune.

The stages of ``depthcut.joint.compress_joint`` that only time (its importance side needs the user's data and
fine-tunes; an importance of 1 for every block stands in, so each width's DP keeps the most blocks unchanged that
its budget allows): the width options (Torch-Pruning's channel-coupling groups of this network, uniform and
global L1 ratios), each timed against the original; the channel method's own landing; each width's latency rows
and calibrated model at that width, and the DP's plan at the target; then that plan's network built and timed
against the original in paired rounds, beside what the width's model predicted for it.

    .venv-coverage/bin/python bench/joint_latency.py --model timm:resnet18d@random --input-size 96 --target 1.5

Needs PyPI's torch build for timm (``make coverage`` builds that environment). Writes ``--out``.json and .md.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.data import TensorDataset

from depthcut.cache import atomic_write_result
from depthcut.compression import Compression, build_plan_network, probe_speed
from depthcut.config import LayerMergeConfig
from depthcut.joint import changed_blocks, choose_width, offered_widths, width_run

ROOT = Path(__file__).resolve().parents[1]


def stand_in_splits(size: int, classes: int) -> SimpleNamespace:
    """Random images whose labels span the model's classes: the run's input checks pass, nothing is learnt."""
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(8, 3, size, size, generator=g), torch.tensor([0, 1, 2, 3, 4, 5, 6, classes - 1]))
    return SimpleNamespace(train=data, test=data, finetune=data, score=data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="timm:resnet18d@random")
    ap.add_argument("--input-size", type=int, default=96)
    ap.add_argument("--classes", type=int, default=1000, help="the model's outputs (its head is kept)")
    ap.add_argument("--target", type=float, default=1.5)
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "joint_latency"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "joint_latency"))
    args = ap.parse_args()

    t0 = time.time()
    config = LayerMergeConfig(method="layermerge+channel", speedup=args.target, backend="onnxruntime",
                              input_shape=(1, 3, args.input_size, args.input_size), timing_threads=1,
                              cache_dir=args.cache, data="fashion-mnist")
    run = Compression(args.model, config, splits=stand_in_splits(args.input_size, args.classes))
    # stage 1 as compress_joint runs it, no fine-tune: every width's damage 0
    options, too_fast = offered_widths(run, args.target, {"start": t0}, accuracy=lambda run, option: run.base_accuracy)
    landed = options[-1]                                  # the channel method's own landing comes last
    landing = landed.landing
    for option in options:
        option.run = width_run(run, option, args.target)
    importance = {c.key: 1.0 for c in run.analysis.candidates}
    choices = choose_width(run, options, importance, args.target, run.base_accuracy)

    rows = []
    for c in choices:
        entry = {"width": c.option.name, "over_original": c.option.over_original,
                 "too_fast": False, "left_out": c.left_out, "model_fallback": c.model_fallback,
                 "rows": None, "latency_model": None, "predicted_speedup": c.predicted_speedup,
                 "blocks_changed": None, "measured_speedup": None, "interval": None}
        if c.left_out is None:
            inner = c.option.run
            entry["rows"] = len(inner.rows.candidates)
            entry["latency_model"] = inner.rows.model.kind
        if c.solution is not None and c.option.landing is None:
            entry["blocks_changed"] = changed_blocks(c.solution)
            network = build_plan_network(c.option.run, [r.ref for r in c.solution.rows])
            # the plan on the width's network, timed against the original: x r (the width) times the plan's own
            measured = probe_speed(run, network.to(run.device), decided=None)
            entry["measured_speedup"], entry["interval"] = measured.ratio, [measured.low, measured.high]
        elif c.option.landing is not None:
            entry["measured_speedup"] = landing.probe.estimate.ratio
        rows.append(entry)
        run.say(f"{entry['width']}: {entry}")
    for o in too_fast:
        rows.append({"width": o.name, "over_original": o.over_original, "too_fast": True})

    result = {"command": "python bench/joint_latency.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k in ("model", "input_size", "target")),
        "machine": f"{platform.machine()}, torch {torch.__version__}", "model": args.model,
        "input_shape": list(run.input_shape), "target": args.target, "seconds": time.time() - t0,
        "chain": {"positions": run.analysis.chain.length, "candidates": len(run.analysis.candidates)},
        "channel_landing": {"name": landed.name, "speedup": landing.probe.estimate.ratio}, "widths": rows}
    out = Path(args.out)
    atomic_write_result(out, result, markdown(result))
    print(json.dumps({k: v for k, v in result.items() if k != "widths"}))


def markdown(r: dict) -> str:
    lines = ["# The joint method's latency side on a model by name (issue 29)", "", f"`{r['command']}`", "",
             f"{r['machine']}; {r['model']} at input {tuple(r['input_shape'])}, ONNX Runtime CPU, one thread; its "
             f"chain: {r['chain']['positions']} positions, {r['chain']['candidates']} merge candidates; "
             f"{r['seconds'] / 60:.0f} minutes. No data and no fine-tune: every block's importance is 1, so each "
             "width's DP keeps the most blocks unchanged its budget allows; what is measured is the latency side: "
             "the width options, each width's own rows and latency model, and its plan at the target timed "
             f"against the original (paired rounds) beside its model's prediction. Channel landing: "
             f"{r['channel_landing']['name']} at x{r['channel_landing']['speedup']:.2f}.", "",
             "| width | width alone over the original | rows | latency model | blocks changed | predicted | measured "
             "[interval] | prediction error |", "|---|---|---|---|---|---|---|---|"]
    for w in r["widths"]:
        if w.get("too_fast"):
            lines.append(f"| {w['width']} | x{w['over_original']:.2f} | faster than the target alone: set aside "
                         "| | | | | |")
            continue
        pred, meas = w["predicted_speedup"], w["measured_speedup"]
        err = f"{100 * (pred / meas - 1):+.1f} %" if pred and meas and w["blocks_changed"] is not None else ""
        model = (w["latency_model"] or "-") + (" (per-call did not hold)" if w["model_fallback"] else "")
        lines.append(
            f"| {w['width']} | x{w['over_original']:.2f} | {w['rows'] or '-'} | {model} | "
            + ("-" if w["blocks_changed"] is None else str(len(w["blocks_changed"])))
            + f" | {'-' if pred is None else 'x%.2f' % pred} | "
            + ("-" if meas is None else f"x{meas:.2f}" + (f" [{w['interval'][0]:.2f}, {w['interval'][1]:.2f}]"
                                                         if w.get("interval") else ""))
            + f" | {err or (w['left_out'] or 'target beyond its fastest plan' if pred is None else '')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
