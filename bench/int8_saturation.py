"""ONNX Runtime int8 accuracy with 8-bit and 7-bit weights, against OpenVINO on the same files (issue 31).

On x86 CPUs without VNNI (AVX2), ONNX Runtime's u8s8 int8 kernels sum pairs of uint8 x int8 products in 16
bits (VPMADDUBSW) and can saturate; 7-bit weights (the quantizer's ``reduce_range``) cannot. For each embedded
network, its original is exported and quantized on the run's calibration images (the scoring split, as
``--quantize int8`` does) twice, 8-bit and 7-bit weights, and each file's test accuracy and top-1 agreement
with the float network are measured by ONNX Runtime and by OpenVINO (when installed). No timing.

    python bench/int8_saturation.py [--models resnet20_fmnist mobilenet_v2_fmnist]

Writes bench/results/int8_saturation.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import platform
import tempfile
from pathlib import Path

import torch

from depthcut.cache import atomic_write_result
from depthcut.compression import Compression
from depthcut.config import LayerMergeConfig
from depthcut.latency.onnx_export import export_onnx
from depthcut.latency.quantize import (agreement, calibration_batches, onnx_predictor, openvino_predictor,
                                       quantize_onnx)

ROOT = Path(__file__).resolve().parents[1]


def cpu_flags() -> str:
    try:
        flags = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    found = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]
    return ", ".join(found) or "none of avx2 / avx512 / vnni"


def one_model(name: str, cache: str) -> list[dict]:
    run = Compression(name, LayerMergeConfig(speedup=1.5, backend="onnxruntime", quantize="int8",
                                             data="fashion-mnist", cache_dir=cache, progress=False))
    network = copy.deepcopy(run.original).cpu().eval()
    batches = calibration_batches(run.splits.score)
    runtimes = {"onnxruntime": onnx_predictor}
    if importlib.util.find_spec("openvino"):
        runtimes["openvino"] = openvino_predictor
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(network, run.example, f"{tmp}/model.onnx", dynamic_batch=True)
        for bits, reduce in ((8, False), (7, True)):
            path = quantize_onnx(f"{tmp}/model.onnx", f"{tmp}/int8_{bits}.onnx", batches, reduce_range=reduce)
            for runtime, predictor in runtimes.items():
                a = agreement(network, predictor(path, 1), run.splits.test)
                out.append({"model": name, "weight_bits": bits, "runtime": runtime, **a})
                print(f"{name}: {bits}-bit weights on {runtime}: float {a['accuracy_float']:.2f} -> int8 "
                      f"{a['accuracy_int8']:.2f}, top-1 agreement {a['top1_agreement']:.2f}", flush=True)
    return out


def markdown(result: dict) -> str:
    lines = ["# int8 weight saturation: 8-bit against 7-bit weights (`python bench/int8_saturation.py`)", "",
             f"{result['machine']}; CPU flags: {result['cpu_flags']}. Each network's original, quantized on the "
             "256 scoring images `--quantize int8` uses; test-split accuracy.", "",
             "| model | weights | runtime | float | int8 | int8 - float | top-1 agreement | relative error |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['weight_bits']} bits | {r['runtime']} | {r['accuracy_float']:.2f} | "
                     f"{r['accuracy_int8']:.2f} | {r['accuracy_int8'] - r['accuracy_float']:+.2f} | "
                     f"{r['top1_agreement']:.2f} | {r['relative_error']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet20_fmnist", "mobilenet_v2_fmnist"])
    p.add_argument("--cache", default=str(ROOT / ".cache" / "int8_saturation"))
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "int8_saturation"))
    args = p.parse_args()
    result = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}",
              "cpu_flags": cpu_flags(), "rows": [r for m in args.models for r in one_model(m, args.cache)]}
    atomic_write_result(args.out, result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
