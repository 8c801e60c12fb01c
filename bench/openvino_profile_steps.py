"""Do OpenVINO int8 latency rows move by whole microseconds between fresh sessions? (issue 31)

OpenVINO's CPU profile (``PERF_COUNT``), by which depthcut times an OpenVINO row (depthcut.latency.backends.
OpenVINOBackend), keeps each op's time per call in whole microseconds. An int8 row of ResNet-20 at 28x28 is one
convolution of 5-15 us, so a step of 1 us is 7-20 % of it. Each row here is compiled in ``--sessions`` fresh
sessions (as a latency table's passes are), warmed up, then called ``--calls`` times; per session it reports the
row's time as the table reads it (the profiled ops' time per call over those calls), the wall time per call, and
what the profile itself reports per op. The spread (max - min over the median) of each, per row.

    python bench/openvino_profile_steps.py [--sessions 8] [--calls 400] [--out bench/results/openvino_profile_steps]
"""
from __future__ import annotations

import argparse
import platform
import statistics
from pathlib import Path

import torch
import torch.nn as nn

from depthcut.cache import atomic_write_result
from depthcut.latency.backends import get_backend

ROOT = Path(__file__).resolve().parents[1]
ROWS = {   # ResNet-20-like int8 rows at Fashion-MNIST's 28x28: (in, out, kernel, input shape)
    "16-16 k3 relu 28x28": (16, 16, 3, (1, 16, 28, 28)),
    "16-16 k5 relu 28x28": (16, 16, 5, (1, 16, 28, 28)),
    "1-16 k5 relu 28x28 (a merged stem)": (1, 16, 5, (1, 1, 28, 28)),
    "32-32 k3 relu 14x14": (32, 32, 3, (1, 32, 14, 14)),
    "64-64 k3 relu 7x7": (64, 64, 3, (1, 64, 7, 7)),
}


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def spread_text(values: list[float], digits: int) -> str:
    """(max - min) in us, and over the median: how a row's time moved between sessions."""
    return f"{max(values) - min(values):.{digits}f} us ({spread(values):.0%})"


def one_row(backend, c_in: int, c_out: int, kernel: int, shape: tuple[int, ...], sessions: int, calls: int) -> dict:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2), nn.ReLU()).eval()
    x = torch.randn(shape)
    profiled, wall, reported = [], [], []
    for _ in range(sessions):
        run = backend.prepare_row(module, x)
        for _ in range(50):
            run()
        n0, t0 = run.profile()
        for _ in range(calls):
            run()
        n1, t1 = run.profile()
        profiled.append(1e3 * (t1 - t0) / (n1 - n0))
        wall.append(1e3 * run.wall_ms(n0))
        reported.append([[op.node_type, op.real_time.total_seconds() * 1e6]
                         for op in run.keepalive[1].get_profiling_info()
                         if op.node_type not in backend.UNTIMED_OPS and op.real_time.total_seconds() > 0])
        del run
    return {"profiled_us": profiled, "wall_us": wall, "reported_ops_us": reported,
            "profiled_spread": spread(profiled), "wall_spread": spread(wall)}


def markdown(report: dict) -> str:
    lines = [f"# OpenVINO int8 rows: the profile's microsecond steps (`{report['command']}`)", "",
             f"{report['machine']}. Each row compiled in {report['sessions']} fresh sessions (one inference thread, "
             f"int8 as `--quantize int8` builds it), 50 warm-up calls, then {report['calls']} calls. Profiled: the "
             "row's time as a latency table reads it (its ops' profiled time per call); wall: the call's wall time. "
             "Spread: (max - min) over the sessions, in us and over the median. The wall time holds the call around "
             "the ops (binding, reorders, about 20-25 us here), which the latency model would have to subtract "
             "again, so the spreads to compare are the ones in microseconds.", "",
             "| row | profiled us per call, per session | spread | wall us per call, per session | spread | "
             "what the profile reports per op (us) |", "|---|---|---|---|---|---|"]
    for name, r in report["rows"].items():
        ops = sorted({f"{t} {us:g}" for session in r["reported_ops_us"] for t, us in session})
        lines.append(f"| {name} | {', '.join(f'{v:.2f}' for v in r['profiled_us'])} | "
                     f"{spread_text(r['profiled_us'], 2)} | {', '.join(f'{v:.1f}' for v in r['wall_us'])} | "
                     f"{spread_text(r['wall_us'], 1)} | {'; '.join(ops)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "openvino_profile_steps"))
    args = ap.parse_args()
    import openvino

    backend = get_backend("openvino", threads=1, quantize="int8")
    report = {"command": "python bench/openvino_profile_steps.py"
              + (f" --sessions {args.sessions}" if args.sessions != 8 else "")
              + (f" --calls {args.calls}" if args.calls != 400 else ""),
              "machine": f"{platform.machine()}, torch {torch.__version__}, openvino {openvino.__version__}",
              "sessions": args.sessions, "calls": args.calls, "rows": {}}
    for name, (c_in, c_out, kernel, shape) in ROWS.items():
        report["rows"][name] = one_row(backend, c_in, c_out, kernel, shape, args.sessions, args.calls)
        r = report["rows"][name]
        print(f"{name}: profiled spread {spread_text(r['profiled_us'], 2)}, wall {spread_text(r['wall_us'], 1)}",
              flush=True)
    out = Path(args.out)
    atomic_write_result(out, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
