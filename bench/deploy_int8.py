"""Depth compression deployed in int8, on ONNX Runtime and OpenVINO (issue 31).

For each model, target and seed, four runs of ``depthcut.compress`` (one importance table - adaptive for the
``--adaptive-models`` - and the same recovery):

* ``onnxruntime int8``  - the latency table measured on quantized rows, landed on the int8 original's latency;
* ``openvino float32``  - OpenVINO's own table and landing, float32;
* ``openvino int8``     - the same, quantized;
* ``float32 table -> int8`` - the depth frontier of ONNX Runtime's *float32* table (its rows and latency model),
  landed on the same measured int8 target: the float32 plan quantized afterwards, at the same int8 latency.

Then the two ONNX Runtime int8 networks (int8 table, float32 table) are timed again in the same rounds against
the int8 original. Every run is kept under ``--runs``/<model>-x<target>-seed<seed>/<arm>/ (skipped when present:
the benchmark resumes). Writes ``--out``.json and ``--out``.md.

    python bench/deploy_int8.py [--models resnet20_fmnist mobilenet_v2_fmnist] [--targets 1.5 2.0]
                                [--seeds resnet20_fmnist=0,1,2 mobilenet_v2_fmnist=0]
                                [--recovery-epochs 0.5] [--adaptive-models mobilenet_v2_fmnist]
                                [--timing-threads 1] [--cache .cache/deploy_int8]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from depthcut.cache import atomic_write_json, atomic_write_result
from depthcut.compression import Compression
from depthcut.config import LayerMergeConfig
from depthcut.errors import DepthcutError
from depthcut.latency import get_backend
from depthcut.latency.compare import time_jointly
from depthcut.latency.quantize import fix_batch

from cnn_frontier import seeds_of

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"onnxruntime int8": ("onnxruntime", "int8"), "openvino float32": ("openvino", None),
        "openvino int8": ("openvino", "int8"), "float32 table -> int8": ("onnxruntime", "int8")}


def arm_config(args, model: str, target: float, seed: int, arm: str) -> LayerMergeConfig:
    backend, quantize = ARMS[arm]
    return LayerMergeConfig(speedup=target, backend=backend, quantize=quantize, data="fashion-mnist",
                            recovery_epochs=args.recovery_epochs,
                            importance_mode="adaptive" if model in args.adaptive_models else "full",
                            importance_seed=0, seed=seed, cache_dir=args.cache, timing_threads=args.timing_threads)


def run_arm(args, model: str, target: float, seed: int, arm: str) -> dict:
    """One compression (its report cached on disk). The float32-table arm runs the int8 compression with the
    float32 run's latency rows standing in for its own (``Compression.use``): same stages, other table."""
    folder = Path(args.runs) / f"{model}-x{target:g}-seed{seed}" / arm.replace(" ", "_").replace(">", "")
    if (folder / "report.json").exists():
        return json.loads((folder / "report.json").read_text())
    if (folder / "refused.json").exists():
        return json.loads((folder / "refused.json").read_text())
    run = Compression(model, arm_config(args, model, target, seed, arm))
    try:
        if arm == "float32 table -> int8":
            floating = Compression(model, LayerMergeConfig(**{**arm_config(args, model, target, seed, arm).to_dict(),
                                                              "quantize": None}))
            run.use(rows=floating.rows)
        run.method.compress(run, folder)
    except DepthcutError as e:          # e.g. the latency model's sanity checks: recorded, not hidden
        refused = {"refused": " ".join(str(e).split()), "backend": ARMS[arm][0], "quantize": ARMS[arm][1]}
        print(f"{model} x{target:g} seed {seed} {arm}: refused: {refused['refused']}", flush=True)
        atomic_write_json(folder / "refused.json", refused)
        return refused
    return json.loads((folder / "report.json").read_text())


def retime_int8(args, model: str, target: float, seed: int) -> dict:
    """The int8 networks of the int8 table and of the float32 table, timed in the same rounds against the int8
    original on ONNX Runtime: the two plans at (nearly) the same measured int8 latency."""
    folder = Path(args.runs) / f"{model}-x{target:g}-seed{seed}"
    if (folder / "int8_joint.json").exists():
        return json.loads((folder / "int8_joint.json").read_text())
    run = Compression(model, arm_config(args, model, target, seed, "onnxruntime int8"))
    files = {arm: fix_batch(folder / arm.replace(" ", "_").replace(">", "") / "model_int8.onnx",
                            folder / f"{arm.replace(' ', '_').replace('>', '')}_batch1.onnx", run.example.shape[0])
             for arm in ("onnxruntime int8", "float32 table -> int8")}
    backend = get_backend("onnxruntime", quantize="int8",
                          **({"threads": args.timing_threads} if args.timing_threads else {}))
    timed = time_jointly(run.original, {arm: str(f) for arm, f in files.items()}, run.example, backend, rounds=60)
    out = {arm: e.to_dict() for arm, e in timed.items()}
    atomic_write_json(folder / "int8_joint.json", out)
    return out


def beyond_interval(probe: dict) -> float:
    """How far the model's prediction of a probed plan lies outside that probe's 95 % interval (0 inside it):
    the part of the model's error its measurement's own spread does not explain. A landing stops timing a plan
    once the verdict is clear, so a probe of a 70 us network can end at x2.57 [2.22, 3.09]."""
    predicted, low, high = probe["predicted"], probe["measured_low"], probe["measured_high"]
    return predicted / high - 1 if predicted > high else predicted / low - 1 if predicted < low else 0.0


def largest(cells: list[dict], arms, values) -> dict:
    """Per arm, the largest of ``values(row)`` over its rows that ran (None: none did)."""
    return {arm: max((v for c in cells for r in c["rows"] if r["arm"] == arm and "refused" not in r
                      for v in values(r)), default=None) for arm in arms}


def row(arm: str, r: dict) -> dict:
    if "refused" in r:
        return {"arm": arm, "backend": r["backend"], "quantize": r["quantize"], "refused": r["refused"]}
    q = r.get("int8") or {}
    return {"arm": arm, "backend": r["backend"], "quantize": r["config"].get("quantize"),
            "speedup": r["speedup"], "speedup_low": r["speedup_low"], "speedup_high": r["speedup_high"],
            "accuracy_float_before": r["accuracy_before"], "accuracy_float_after": r["accuracy_after"],
            "accuracy_int8_before": q.get("accuracy_int8_before"), "accuracy_int8_after": q.get("accuracy_int8_after"),
            "top1_agreement_after": q.get("top1_agreement_after"),
            "speedup_int8_over_float_original": (q.get("speedups_over_float_original") or {}).get("int8 deployed"),
            "model_errors": [p["model_error"] for p in r["probes"]], "model_error_largest": r["model_error_largest"],
            "model_errors_beyond_interval": [beyond_interval(p) for p in r["probes"]],
            # probes timed again because the original ran slow in them (depthcut.latency.compare.Pace): how slow
            "probes_slow_timings": [p.get("measured_slow_timings") or [] for p in r["probes"]],
            # the blocks that change the network: merged or pruned convs, or a removed activation
            "plan": [f"{b['start']}-{b['end']} k{b['kernel']} kept {len(b['kept'])}/{b['end'] - b['start']}"
                     + ("" if b["activation"] else " no act") for b in r["plan_blocks"]
                     if b["end"] - b["start"] > 1 or not b["activation"]],
            "convs": r["convs_after"], "seconds": r["seconds"],
            # latency_model "auto": the per-call model did not hold and the plain sum of rows chose the budgets
            "latency_model_fallback": r.get("latency_model_fallback")}


def timed_again(cells: list[dict]) -> dict[str, tuple[int, int]]:
    """Per arm: how many probes were timed again after a slow phase, of how many probes."""
    out: dict[str, tuple[int, int]] = {}
    for r in (r for c in cells for r in c["rows"] if "refused" not in r):
        again, probes = out.get(r["arm"], (0, 0))
        out[r["arm"]] = (again + sum(bool(t) for t in r.get("probes_slow_timings", [])),
                         probes + len(r["model_errors"]))
    return out


def markdown(result: dict, command: str) -> str:
    lines = ["# Depth compression deployed in int8 (issue 31)", "", f"`{command}`", "",
             f"{result['machine']}. Speed-ups of int8 runs are against the int8 original (its latency table, "
             "landing and final timing measure quantized networks), of float32 runs against the float32 original; "
             "the last column is the int8 network against the float32 original (one joint timing of the four "
             "networks). Model error: the latency model's prediction on every probed plan, against its "
             "measurement.", "",
             "| model | target | seed | arm | speed-up [95% CI] | accuracy float32 | accuracy int8 | int8 vs float32 "
             "top-1 agreement | model error per probe | int8 over float32 original |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for cell in result["cells"]:
        for r in cell["rows"]:
            if "refused" in r:
                lines.append(f"| {cell['model']} | x{cell['target']:g} | {cell['seed']} | {r['arm']} | refused: "
                             f"{r['refused']} | | | | | |")
                continue
            q8 = (f"{r['accuracy_int8_before']:.2f} -> {r['accuracy_int8_after']:.2f}"
                  if r["accuracy_int8_after"] is not None else "")
            over = r["speedup_int8_over_float_original"]
            lines.append(
                f"| {cell['model']} | x{cell['target']:g} | {cell['seed']} | {r['arm']} | x{r['speedup']:.2f} "
                f"[{r['speedup_low']:.2f}, {r['speedup_high']:.2f}] | {r['accuracy_float_before']:.2f} -> "
                f"{r['accuracy_float_after']:.2f} | {q8} | {r['top1_agreement_after'] or ''} | "
                + ", ".join(f"{100 * e:+.1f} %" for e in r["model_errors"])
                + (" (additive: the per-call model did not hold)" if r.get("latency_model_fallback") else "")
                + f" | {'' if over is None else 'x%.2f [%.2f, %.2f]' % (over['ratio'], over['low'], over['high'])} |")
    lines += ["", "## The int8 table's plan against the float32 table's plan quantized afterwards", "",
              "Both ONNX Runtime int8 networks timed again in the same rounds against the int8 original.", "",
              "| model | target | seed | int8 table: speed-up, int8 accuracy, plan | float32 table: speed-up, int8 "
              "accuracy, plan | accuracy difference (int8 table - float32 table) |", "|---|---|---|---|---|---|"]
    for cell in (c for c in result["cells"] if "int8_joint" in c):
        j = cell["int8_joint"]
        mine, theirs = (next(r for r in cell["rows"] if r["arm"] == a)
                        for a in ("onnxruntime int8", "float32 table -> int8"))

        def side(arm, r):
            e = j[arm]
            return (f"x{e['ratio']:.2f} [{e['low']:.2f}, {e['high']:.2f}], {r['accuracy_int8_after']:.2f}, "
                    f"{r['convs']} convs: {'; '.join(map(str, r['plan'])) or 'none'}")
        lines.append(f"| {cell['model']} | x{cell['target']:g} | {cell['seed']} | {side('onnxruntime int8', mine)} | "
                     f"{side('float32 table -> int8', theirs)} | "
                     f"{mine['accuracy_int8_after'] - theirs['accuracy_int8_after']:+.2f} |")
    s = result["summary"]
    lines += ["", "- latency model's largest error on any probed plan, per arm: "
              + ", ".join(f"{arm} {'-' if v is None else '%.1f %%' % (100 * v)}"
                          for arm, v in s["model_error_largest"].items())
              + (" (the float32 table -> int8 arm predicts int8 timings with the float32 table's rows and model: "
                 "its error is what choosing on the wrong table costs, the landing's probes absorb it)"
                 if "float32 table -> int8" in s["model_error_largest"] else ""),
              "- the same, beyond each probe's own 95 % interval (the part of the error the measurement's spread "
              "does not explain; a landing stops timing a plan once its verdict is clear): "
              + ", ".join(f"{arm} {'-' if v is None else '%.1f %%' % (100 * v)}"
                          for arm, v in s.get("model_error_beyond_interval_largest", {}).items()),
              "- probes timed again because the original ran over x1.4 its pace in the run's earlier timings "
              "(a slow phase of the machine; depthcut.latency.compare.Pace), per arm: " + ", ".join(
                  f"{arm} {again} of {probes}" for arm, (again, probes) in timed_again(result["cells"]).items()),
              f"- refused (one line each, above): {', '.join(s['refused']) or 'none'}",
              "- int8 table minus float32 table, int8 accuracy (mean over seeds): " + ", ".join(
                  f"{k} {v['mean']:+.2f} ({v['seeds']} seeds: {', '.join(f'{e:+.2f}' for e in v['each'])})"
                  for k, v in s["int8_table_advantage"].items()),
              ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet20_fmnist", "mobilenet_v2_fmnist"])
    p.add_argument("--targets", nargs="+", type=float, default=[1.5, 2.0])
    p.add_argument("--seeds", nargs="+", default=["resnet20_fmnist=0,1,2", "mobilenet_v2_fmnist=0"],
                   help="MODEL=S,S,... per model, or S S ... for every model")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--recovery-epochs", type=float, default=0.5)
    p.add_argument("--adaptive-models", nargs="*", default=["mobilenet_v2_fmnist"],
                   help="models whose importance table is adaptive (MobileNetV2's full table: ~75 min here)")
    # one intra-op thread: timed on both of this machine's two cores, the runtime's threads share them with
    # the timing loop and everything else (ONNX Runtime int8 MobileNetV2's latency model erred 6.6 % with one
    # of three fresh runs refused at 2 threads, 2.2 % and none refused at 1: latency_model_onnxruntime_int8_*)
    p.add_argument("--timing-threads", type=int, default=1, help="runtime intra-op threads (0: the machine's)")
    p.add_argument("--cache", default=str(ROOT / ".cache" / "deploy_int8"))
    p.add_argument("--runs", default=str(ROOT / "bench" / "results" / "deploy_int8"))
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "deploy_int8"))
    args = p.parse_args()
    command = "python bench/deploy_int8.py " + " ".join(
        [f"--models {' '.join(args.models)}", f"--targets {' '.join(f'{t:g}' for t in args.targets)}",
         f"--seeds {' '.join(args.seeds)}", f"--recovery-epochs {args.recovery_epochs:g}",
         f"--adaptive-models {' '.join(args.adaptive_models)}", f"--timing-threads {args.timing_threads}"])
    args.timing_threads = args.timing_threads or None
    cells = []
    for model in args.models:
        for target in args.targets:
            for seed in seeds_of(args.seeds, model):
                t0 = time.time()
                rows = [row(arm, run_arm(args, model, target, seed, arm)) for arm in args.arms]
                cell = {"model": model, "target": target, "seed": seed, "rows": rows}
                landed = {r["arm"] for r in rows if "refused" not in r}
                if {"onnxruntime int8", "float32 table -> int8"} <= landed:
                    cell["int8_joint"] = retime_int8(args, model, target, seed)
                cells.append(cell)
                print(f"{model} x{target:g} seed {seed}: {time.time() - t0:.0f} s", flush=True)
    # per (model, target): the int8 table's int8 accuracy minus the float32 table's, mean over seeds
    advantage: dict[str, list[float]] = {}
    for c in (c for c in cells if "int8_joint" in c):
        acc = {r["arm"]: r["accuracy_int8_after"] for r in c["rows"] if "refused" not in r}
        advantage.setdefault(f"{c['model']} x{c['target']:g}", []).append(
            acc["onnxruntime int8"] - acc["float32 table -> int8"])
    result = {"command": command, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads (runtimes timed "
                                             f"on {args.timing_threads or torch.get_num_threads()}), torch "
                                             f"{torch.__version__}",
              "cells": cells,
              "summary": {"model_error_largest": largest(cells, args.arms, lambda r: [r["model_error_largest"]]),
                          "model_error_beyond_interval_largest": largest(
                              cells, args.arms, lambda r: [abs(e) for e in r["model_errors_beyond_interval"]]),
                          "refused": [f"{c['model']} x{c['target']:g} seed {c['seed']} {r['arm']}" for c in cells
                                      for r in c["rows"] if "refused" in r],
                          "int8_table_advantage": {k: {"mean": statistics.mean(v), "seeds": len(v),
                                                       "each": v} for k, v in advantage.items()}}}
    atomic_write_result(args.out, result, markdown(result, command))
    print(markdown(result, command))


if __name__ == "__main__":
    main()
