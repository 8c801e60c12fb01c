"""Deep networks must not blow up: ResNet-101 and ResNet-152 (224x224) analysis + latency table on ONNX Runtime
CPU, with dominated candidates dropped before anything is built (depthcut.latency.dominance).

Reports per model: candidates, how many the MAC bound dropped unbuilt, how many were timed and then dropped,
how many remain, the largest remaining merged conv (weight bytes), wall time and the peak resident memory of
the process (``resource.getrusage``: the high-water mark of the whole run, so each model runs in its own
process). The importance bound assumes a base accuracy >= 30.7% (2-conv merges may then be dropped).
Writes bench/results/deep_resnets.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(name: str, cache: str, threads: int) -> dict:
    import torch

    from depthcut.zoo import analyze_zoo
    from depthcut.latency import get_backend, latency_table
    from depthcut.latency.dominance import max_accuracy_importance, measure_bandwidth, prune_dominated

    torch.set_num_threads(threads)
    t0 = time.time()
    analysis = analyze_zoo(name)
    t_analysis = time.time() - t0
    backend = get_backend("onnxruntime")
    timed = [0]

    def time_rows(rows):
        timed[0] += len(rows)
        return latency_table(rows, backend, batch_size=1, cache_dir=cache, progress=False, repeats=20)

    bandwidth = measure_bandwidth("cpu")
    kept, dominated, measured = prune_dominated(analysis.candidates, time_rows, bandwidth=bandwidth,
                                                max_importance=max_accuracy_importance(30.7))
    largest = max((c for c in kept if c.kept), key=lambda c: c.in_channels * c.out_channels * c.kernel ** 2)
    return {"model": name, "candidates": len(analysis.candidates), "kept": len(kept),
            "dropped_by_bound": sum(d.measured_ms is None for d in dominated),
            "dropped_after_timing": sum(d.measured_ms is not None for d in dominated), "rows_timed": timed[0],
            "largest_kept": f"{largest.kernel}x{largest.kernel} {largest.in_channels}->{largest.out_channels}",
            "largest_kept_weight_mb": largest.in_channels * largest.out_channels // largest.groups
            * largest.kernel ** 2 * 4 / 1e6,
            "analysis_s": t_analysis, "seconds": time.time() - t0,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "threads": threads, "onnxruntime": backend.version(), "bandwidth_gb_s": bandwidth / 1e6,
            "nchwc_estimated_rows": len(backend.nchwc_estimated_rows),
            "nchwc_cap_gb": backend.max_transient_bytes / 2**30}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet101,resnet152")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "deep_resnets"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(args.child, args.cache, args.threads)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for name in args.models.split(","):
            proc = subprocess.run([sys.executable, __file__, "--child", name, "--cache", cache, "--threads",
                                   str(args.threads)], capture_output=True, text=True, check=True)
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    lines = ["# Deep ResNets: analysis + ONNX Runtime CPU latency table, dominated candidates dropped "
             "(`python bench/deep_resnets.py`)", "",
             "| model | candidates | dropped by MAC bound (never built) | dropped after timing | kept | rows timed "
             "| largest kept conv | its weights MB | rows timed without NCHWc (over the cap) | analysis s | total s "
             "| peak RSS GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['candidates']} | {r['dropped_by_bound']} | {r['dropped_after_timing']} | "
                     f"{r['kept']} | {r['rows_timed']} | {r['largest_kept']} | {r['largest_kept_weight_mb']:.0f} | "
                     f"{r['nchwc_estimated_rows']} | "
                     f"{r['analysis_s']:.1f} | {r['seconds']:.0f} | {r['peak_rss_gb']:.2f} |")
    lines += ["", f"ONNX Runtime {rows[0]['onnxruntime']}, batch 1, {rows[0]['threads']} threads, 2-core CPU machine. "
              f"Rows whose NCHWc transient (~5x their weights while ONNX Runtime builds the session) would exceed "
              f"{rows[0]['nchwc_cap_gb']:g} GB are timed with that transformer off and scaled by its gain on a "
              f"channel-scaled proxy (depthcut.latency.backends.OnnxRuntimeBackend)."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
