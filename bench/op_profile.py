"""Where a network's time goes on OpenVINO, op by op, against the latency rows that model it.

Takes one run that ``bench/latency_model.py --backend openvino`` wrote (its rows, timed by OpenVINO's per-op
profile, and the plans it probed), builds the identity plan's network and every probed plan's network, runs
each with OpenVINO's per-op profile on (``PERF_COUNT``; one thread, as the run) and reports:

* the network's ops by type (the profile's mean over the calls), their sum, and the sum of the plan's rows;
* every conv whose time inside the network differs from its row's by more than ``--show`` microseconds and
  more than 20 %: what a per-row model cannot see (a row is timed alone, its weights hot in cache).

    python bench/op_profile.py bench/results/latency_model_openvino_mobilenet_v2_fmnist_threads1_profiled.json \
        [--run 1] [--calls 300] [--out bench/results/op_profile_openvino_mobilenet_v2_fmnist]
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch

from depthcut.cache import atomic_write_result
from depthcut.cnn.build import build_merged, build_unmerged, plan_changing
from depthcut.latency import get_backend
from depthcut.latency.model import weight_bytes

from latency_model_replay import ROOT, analysis_of, input_shape

CONVS = ("Convolution", "GroupConvolution")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", type=Path)
    ap.add_argument("--run", type=int, default=None, help="the run to take (default: the first with plans)")
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--show", type=float, default=3.0, help="microseconds a conv must differ from its row by")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "op_profile_openvino"))
    args = ap.parse_args()
    report = json.loads(args.file.read_text())
    run = next(r for r in report["runs"] if r.get("plans") and (args.run is None or r["run"] == args.run))
    if report.get("quantize"):
        raise SystemExit("op_profile.py reads float32 runs (an int8 network's ops are quantized and fused)")
    analysis = analysis_of(run["model"], input_shape(report, run))
    candidates = {c.key: c for c in analysis.candidates}
    torch.manual_seed(0)
    backend = get_backend("openvino", threads=1)
    x = torch.randn(input_shape(report, run))
    networks = {"identity": []} | {f"plan at {p['budget_ratio']:.0%}": p["blocks"] for p in run["plans"]}
    out = {"file": str(args.file), "run": run["run"], "model": run["model"], "calls": args.calls, "networks": []}
    for name, merged in networks.items():
        plan = plan_changing(analysis.chain, [candidates[k] for k in merged])
        network = build_merged(build_unmerged(analysis.gm, analysis.chain, plan).eval(), analysis.chain, plan).eval()
        ops, wall_ms = backend.op_profile(network, x, args.calls)
        kept = [c for c in sorted(plan.blocks, key=lambda c: c.start) if c.kept]
        convs = [op for op in ops if op["type"] in CONVS]
        by_type = collections.Counter()
        for op in ops:
            by_type[op["type"]] += op["us"] / 1e3
        differing = []
        if len(convs) == len(kept):         # the network's convs run in the chain's order, one per kept block
            for c, op in zip(kept, convs):
                row_us = 1e3 * run["rows_ms"][c.key]
                if abs(op["us"] - row_us) > args.show and abs(op["us"] / row_us - 1) > 0.2:
                    differing.append({"block": c.key, "conv": f"{c.in_channels}->{c.out_channels} k{c.kernel} "
                                      f"s{c.stride}{' dw' if c.depthwise else ''} at {c.input_shape[2]}x{c.input_shape[3]}",
                                      "weights_kb": weight_bytes(c) / 1e3, "row_us": row_us, "network_us": op["us"]})
        out["networks"].append({"network": name, "wall_with_profile_ms": wall_ms,
                                "ops_ms": sum(by_type.values()), "by_type_ms": dict(by_type.most_common()),
                                "rows_ms": sum(run["rows_ms"][c.key] for c in kept), "convs": len(convs),
                                "rows": len(kept), "differing": differing})
        print(f"{name}: ops {sum(by_type.values()):.3f} ms, rows {out['networks'][-1]['rows_ms']:.3f} ms", flush=True)
    atomic_write_result(args.out, out, markdown(out))
    print(markdown(out))


def markdown(r: dict) -> str:
    lines = [f"# Op by op on OpenVINO: `python bench/op_profile.py {r['file']} --run {r['run']}`", "",
             f"{r['model']}, float32, one thread: the identity plan's network and every plan probed in run "
             f"{r['run']} of {Path(r['file']).name}, each run {r['calls']} times with OpenVINO's per-op profile on "
             "(each op's mean over the calls). *Ops*: the profile's sum over every op; *rows*: the sum of the "
             "plan's latency rows, each timed alone by the same profile (the table of that run). Wall: the mean "
             "call with the profile on (it adds its own cost).", "",
             "| network | wall (ms) | ops (ms) | convs | group convs | other ops | rows (ms) | rows / ops |",
             "|---|---|---|---|---|---|---|---|"]
    for n in r["networks"]:
        t = n["by_type_ms"]
        other = n["ops_ms"] - t.get("Convolution", 0.0) - t.get("GroupConvolution", 0.0)
        lines.append(f"| {n['network']} | {n['wall_with_profile_ms']:.3f} | {n['ops_ms']:.3f} | "
                     f"{t.get('Convolution', 0.0):.3f} | {t.get('GroupConvolution', 0.0):.3f} | {other:.3f} | "
                     f"{n['rows_ms']:.3f} | {n['rows_ms'] / n['ops_ms']:.2f} |")
    lines += ["", "Convs whose time inside the network differs from their row's by more than 3 us and 20 %:", "",
              "| network | block | conv | weights (kB) | row alone (us) | in the network (us) |", "|---|---|---|---|---|---|"]
    for n in r["networks"]:
        for d in n["differing"]:
            lines.append(f"| {n['network']} | {d['block']} | {d['conv']} | {d['weights_kb']:.0f} | {d['row_us']:.1f} | "
                         f"{d['network_us']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
