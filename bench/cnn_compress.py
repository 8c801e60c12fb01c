"""Benchmark: LayerMerge end to end on the embedded Fashion-MNIST models.

Runs depthcut.compress for each (model, speed-up) pair, then writes bench/results/cnn_compress.json and
bench/results/cnn_compress.md with the measured figures (all ratios from one interleaved run each).

    python bench/cnn_compress.py [--models resnet20_fmnist] [--speedups 1.5] [--backend onnxruntime]
    python bench/cnn_compress.py --from-runs demo-out      # tabulate finished runs (e.g. `make demo`'s)
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from depthcut.config import LayerMergeConfig  # noqa: E402
from depthcut.compression import compress  # noqa: E402


KEYS = ("model", "backend", "batch_size", "target_speedup", "speedup", "speedup_low", "speedup_high", "target_met",
        "within_band", "latency_ms_before",
        "latency_ms_after", "accuracy_before", "accuracy_after", "accuracy_drop", "convs_before", "convs_after",
        "activations_before", "activations_after", "candidates")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["resnet20_fmnist"])
    ap.add_argument("--speedups", nargs="+", type=float, default=[1.5])
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--from-runs", nargs="*", default=None, help="output folders of finished compress runs")
    args = ap.parse_args()
    rows = []
    for folder in args.from_runs or []:
        r = json.loads((Path(folder) / "report.json").read_text())
        rows.append({k: r[k] for k in KEYS} | {"seconds": r["seconds"], "run": str(folder), "probes": len(r["probes"])})
    for name in ([] if args.from_runs else args.models):
        for s in args.speedups:
            cfg = LayerMergeConfig(speedup=s, backend=args.backend, batch_size=args.batch_size)
            t0 = time.time()
            r = compress(name, cfg, out=ROOT / "runs" / f"{name}-x{s}").report
            rows.append({k: r[k] for k in KEYS} | {"seconds": time.time() - t0, "probes": len(r["probes"])})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    (out / "cnn_compress.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["| model | backend | batch | target | measured speed-up (95% CI) | plans probed | latency ms (before → after) | "
             "accuracy % (before → after) | convs | activations | compress time |", "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['model']} | {r['backend']} | {r['batch_size']} | x{r['target_speedup']} | "
                     f"**x{r['speedup']:.2f}** [{r['speedup_low']:.2f}, {r['speedup_high']:.2f}]"
                     f"{'' if r['within_band'] else ' (over +10%)'} | {r['probes']} | {r['latency_ms_before']:.3f} → {r['latency_ms_after']:.3f} | "
                     f"{r['accuracy_before']:.2f} → {r['accuracy_after']:.2f} | {r['convs_before']} → "
                     f"{r['convs_after']} | {r['activations_before']} → {r['activations_after']} | "
                     f"{r['seconds'] / 60:.1f} min |")
    text = "\n".join(lines) + f"\n\n{meta}\n"
    (out / "cnn_compress.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
