"""Do networks timed in the same rounds measure the speed-ups they measure alone? (issue 31)

The latency model is calibrated on many networks timed in the same rounds (depthcut.latency.compare.
time_jointly), while compress probes and reports a plan alone against the original (compare_speed, as
depthcut.compression.probe_speed). In a round of many networks each one runs after the others have evicted its
weights from the caches. This times the same plans both ways, several times, interleaved:

* jointly, every plan and the identity plan's network in the same rounds as the original, with 0, 3 and 5
  untimed calls of a network before each of its samples (``warm_calls``; 5 timed calls a sample, 4 sessions,
  60 rounds);
* alone, each plan against the original, as compress's landing probes it (depthcut.compression.probe_speed
  with the default timing: 4 sessions, until the interval is 2 % wide or 100 rounds).

The plans are the ones a compress run probed (``--plans-from`` its report.json files; a plan is structure only,
so random weights time the same). Reports each plan's ratio per way, and per joint way the gap to alone.

    python bench/timing_warm_calls.py --model mobilenet_v2_fmnist --backend openvino [--quantize int8] \\
        --plans-from bench/results/deploy_int8/mobilenet_v2_fmnist-x*-seed0/openvino_float32/report.json

Writes bench/results/timing_warm_calls[_<model>_<backend>[_int8]].{json,md}.
"""
from __future__ import annotations

import argparse
import platform
import statistics
from pathlib import Path

import torch

from depthcut import zoo
from depthcut.cache import atomic_write_result
from depthcut.cnn.build import build_merged, build_unmerged, is_trivial, plan_from_blocks
from depthcut.cnn.graph import analyze
from depthcut.latency import get_backend
from depthcut.latency.compare import time_jointly

from latency_model import probe_alone, report_plans

ROOT = Path(__file__).resolve().parents[1]
WARM = (0, 3, 5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v2_fmnist")
    ap.add_argument("--backend", default="openvino", choices=["onnxruntime", "openvino", "eager"])
    ap.add_argument("--quantize", default=None, choices=["int8"])
    ap.add_argument("--timing-threads", type=int, default=1)
    ap.add_argument("--plans-from", nargs="+", required=True, metavar="REPORT")
    ap.add_argument("--reps", type=int, default=2, help="times every way is repeated, interleaved")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or ROOT / "bench" / "results" / (
        f"timing_warm_calls_{args.model}_{args.backend}{'_' + args.quantize if args.quantize else ''}"))

    entry = zoo.get(args.model)
    torch.manual_seed(0)
    model = zoo.randomize_batchnorm(entry.create()).eval()
    shape = (1,) + tuple(entry.input_shape[1:])
    analysis = analyze(model, shape, exclude=entry.chain_exclude, batch_size=1)

    def network(blocks):
        plan = plan_from_blocks(analysis.chain, blocks)
        return build_merged(build_unmerged(analysis.gm, analysis.chain, plan).eval(), analysis.chain, plan).eval()

    plans = {label: network(blocks) for label, blocks in report_plans(analysis, args.model, args.plans_from).items()}
    plans["identity"] = network([c for c in analysis.candidates if is_trivial(c)])
    backend = get_backend(args.backend, threads=args.timing_threads,
                          **({"quantize": args.quantize} if args.quantize else {}))
    x = torch.randn(shape)
    ways = [f"jointly, {w} warm calls" for w in WARM] + ["alone"]
    ratios: dict[str, dict[str, list[float]]] = {label: {way: [] for way in ways} for label in plans}
    for rep in range(args.reps):
        for w in WARM:
            for label, e in time_jointly(model, plans, x, backend, sessions=4, rounds=60, warm_calls=w).items():
                ratios[label][f"jointly, {w} warm calls"].append(e.ratio)
        for label, net in plans.items():
            ratios[label]["alone"].append(probe_alone(model, net, x, backend).ratio)
        print(f"repetition {rep + 1} of {args.reps} done", flush=True)

    gaps = {way: [statistics.mean(r[way]) / statistics.mean(r["alone"]) - 1 for label, r in ratios.items()
                  if label != "identity"] for way in ways[:-1]}
    report = {"command": "python bench/timing_warm_calls.py " + " ".join(
                  [f"--model {args.model}", f"--backend {args.backend}"]
                  + ([f"--quantize {args.quantize}"] if args.quantize else [])
                  + [f"--timing-threads {args.timing_threads}", f"--reps {args.reps}",
                     "--plans-from " + " ".join(args.plans_from)]),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
                         f"{args.backend} {backend.version() if hasattr(backend, 'version') else ''}".strip(),
              "ratios": ratios,
              "gap_to_alone": {way: {"each": g, "mean": statistics.mean(g), "worst": max(g, key=abs)}
                               for way, g in gaps.items()}}
    lines = [f"# Joint timing against timing alone: `{report['command']}`", "",
             f"{report['machine']}, runtime on {args.timing_threads} thread(s). Each plan's speed-up over the "
             f"original, mean of {args.reps} repetitions (interleaved: every way once per repetition). Jointly: "
             "all plans and the identity network in the same rounds (time_jointly, 4 sessions, 60 rounds, 5 timed "
             "calls a sample after the warm calls). Alone: each plan against the original (compare_speed, 4 "
             "sessions, up to 100 rounds), as compress probes it.", "",
             "| plan | " + " | ".join(ways) + " |", "|---" * (len(ways) + 1) + "|"]
    for label, r in ratios.items():
        lines.append(f"| {label} | " + " | ".join(
            f"x{statistics.mean(r[w]):.3f} ({', '.join(f'{v:.3f}' for v in r[w])})" for w in ways) + " |")
    lines += ["", "Gap to alone (joint / alone - 1), over the plans (identity network left out):", ""]
    lines += [f"- {way}: mean {100 * g['mean']:+.1f} %, worst {100 * g['worst']:+.1f} %"
              for way, g in report["gap_to_alone"].items()]
    atomic_write_result(out, report, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
