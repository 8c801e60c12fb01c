"""OpenVINO sessions with and without CPU pinning: how much one latency row's time varies between sessions.

depthcut's OpenVINO backend compiles every session with ENABLE_CPU_PINNING off (depthcut.latency.backends.
OpenVINOBackend). This measures why: the same int8 latency rows (a late MobileNetV2-at-28x28 row and an early
one, built and quantized as the backend builds them) compiled ``--sessions`` times each way, pinned and
unpinned sessions alternating, each session timed as a table pass times a row (median of ``--calls`` calls
after a warm-up).

    python bench/openvino_pinning.py [--sessions 12] [--calls 200] [--threads 1]

Writes bench/results/openvino_pinning.{json,md}.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from depthcut.cache import atomic_write_result
from depthcut.latency import get_backend

ROOT = Path(__file__).resolve().parents[1]
ROWS = {"conv 80->80 k3, 4x4 input": (80, 80, 3, (1, 80, 4, 4)),
        "conv 16->16 k1, 28x28 input": (16, 16, 1, (1, 16, 28, 28))}


def session_us(path: str, x, threads: int, pinning: bool, calls: int) -> float:
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(threads),
              "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": "YES" if pinning else "NO"}
    compiled = ov.Core().compile_model(ov.Core().read_model(path), "CPU", config)
    request, feed = compiled.create_infer_request(), {0: x.numpy()}
    for _ in range(20):
        request.infer(feed)
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        request.infer(feed)
        samples.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=12)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "openvino_pinning"))
    args = ap.parse_args()
    backend = get_backend("openvino", threads=args.threads, quantize="int8")
    result = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                         f"openvino {backend.version()}, {args.threads} inference thread(s)", "rows": {}}
    for name, (cin, cout, k, shape) in ROWS.items():
        module = nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2)).eval()
        with backend._timing_file(module, torch.randn(shape)) as (path, x):   # the int8 row as the table times it
            times = {"pinned": [], "unpinned": []}
            for _ in range(args.sessions):
                for label in times:
                    times[label].append(session_us(path, x, args.threads, label == "pinned", args.calls))
        result["rows"][name] = times
    lines = [f"# OpenVINO int8 latency rows with and without CPU pinning: `python bench/openvino_pinning.py "
             f"--sessions {args.sessions} --calls {args.calls} --threads {args.threads}`", "",
             f"{result['machine']}. Each session: the row compiled afresh (LATENCY hint, one stream), 20 warm-up "
             f"calls, the median of {args.calls} calls; pinned and unpinned sessions alternate.", "",
             "| row | sessions | pinned: median (min - max) us | unpinned: median (min - max) us | sessions over 1.3x "
             "the row's fastest, pinned / unpinned |", "|---|---|---|---|---|"]
    for name, times in result["rows"].items():
        fastest = min(min(v) for v in times.values())
        cell = {k: f"{statistics.median(v):.1f} ({min(v):.1f} - {max(v):.1f})" for k, v in times.items()}
        slow = {k: sum(t > 1.3 * fastest for t in v) for k, v in times.items()}
        lines.append(f"| {name} | {args.sessions} each | {cell['pinned']} | {cell['unpinned']} | "
                     f"{slow['pinned']} / {slow['unpinned']} |")
    atomic_write_result(args.out, result, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
