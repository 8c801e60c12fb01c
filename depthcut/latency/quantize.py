"""int8 deployment: post-training static quantization of an exported network, and running it.

One quantizer serves both CPU runtimes: ONNX Runtime's ``quantize_static`` writes a QDQ ONNX file (every conv's
input and weights wrapped in QuantizeLinear / DequantizeLinear pairs: per-channel symmetric int8 weights in
7 bits (no saturation in ONNX Runtime's u8s8 kernels on CPUs without VNNI), per-tensor asymmetric uint8
activations, min-max calibration). ONNX Runtime fuses each QDQ group into an int8 kernel; OpenVINO reads the
same file, turns each pair into a FakeQuantize and runs the group in int8 (its low-precision transformations).
So the file deployed is the file timed, on either runtime; NNCF, OpenVINO's own quantizer, would give OpenVINO a
second path to the same kind of network and is not used.

Latency does not depend on the quantization's scales, only on which ops run in int8: a latency row or a
landing probe is quantized with its timing input as the only calibration batch (cheap, and the kernel is the
one the deployed network runs); the deployed network is calibrated on real images (``calibration_batches``).
"""
from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from ..errors import DepthcutError

QUANTIZE = ("int8",)          # what --quantize accepts
CALIBRATION_IMAGES = 256      # images of the scoring split that calibrate a deployed network's activations


def quantizer() -> str:
    """What quantizes (in the latency cache's fingerprint and the report)."""
    import onnxruntime

    return (f"onnxruntime {onnxruntime.__version__} QDQ static, per-channel s8 weights in 7 bits, u8 activations, "
            "min-max; rows uint8 in and out")


def check_quantize(quantize: str | None) -> None:
    if quantize is not None and quantize not in QUANTIZE:
        raise DepthcutError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZE)} (or none)")


@contextmanager
def _quiet():
    """The quantizer logs a pre-processing hint on the root logger, and ONNX Runtime warns about every unused
    exporter constant it drops: neither is the user's concern."""
    import onnxruntime as ort

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        root.setLevel(level)
        ort.set_default_logger_severity(2)


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike, batches: Iterable[Any],
                  reduce_range: bool = True) -> Path:
    """Quantize the float ONNX file ``src`` (one input, named as exported) to an int8 QDQ file ``dst``,
    calibrating the activations' ranges on ``batches`` (numpy arrays or tensors shaped as the input).
    ``reduce_range=False`` (8-bit weights) only to measure what 7 bits avoid (bench/int8_saturation.py)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_static)
    import onnx

    name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    feeds = iter([{name: b.detach().cpu().float().numpy() if isinstance(b, torch.Tensor) else b} for b in batches])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(feeds, None)

    with _quiet():
        # 7-bit weights (reduce_range): on x86 CPUs without VNNI (AVX2, this project's VM) ONNX Runtime's u8s8
        # kernels add pairs of uint8 x int8 products in 16 bits (VPMADDUBSW) and saturate; with 8-bit weights its
        # int8 networks lost 0.4-3.4 points against float where OpenVINO, running the same files, lost at most
        # 0.6 (ResNet-20's int8 original 92.52 %, 92.99 % with 7 bits, float 92.93 %; MobileNetV2 90.18 ->
        # 91.42 %, float 91.37 %). A file may be deployed on either kind of CPU; the kernels, so the latency, are
        # the same.
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return Path(dst)


def quantized_file(module: nn.Module, example_input: torch.Tensor, folder: str | os.PathLike,
                   batches: Iterable[Any] | None = None, *, dynamic_batch: bool = False) -> Path:
    """``module`` exported to ``folder/model.onnx`` and quantized to ``folder/model_int8.onnx``, calibrated on
    ``batches`` (default: ``example_input`` alone, which is enough for timing)."""
    from .onnx_export import export_onnx

    folder = Path(folder)
    export_onnx(module, example_input, str(folder / "model.onnx"), dynamic_batch=dynamic_batch)
    return quantize_onnx(folder / "model.onnx", folder / "model_int8.onnx",
                         [example_input] if batches is None else batches)


def row_file(graph: bytes, weights: dict, folder: str | os.PathLike) -> Path:
    """A latency row built directly (``conv_row_onnx``: weights declared external) as a self-contained float
    ONNX file, the quantizer's input."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(graph)
    inits = model.graph.initializer
    for k, init in enumerate(inits):
        if init.name in weights:
            inits[k].CopyFrom(numpy_helper.from_array(weights[init.name], init.name))
    path = Path(folder) / "row.onnx"
    onnx.save(model, str(path))
    return path


def int8_row(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """A quantized latency row as it runs inside an int8 network: its input already uint8 and its output left
    uint8. The quantizer wraps an isolated row in float: a QuantizeLinear on its input and a DequantizeLinear
    on its output, conversions of a whole tensor that a network runs once, not at every conv. Timed in, they
    made OpenVINO int8 plans measure up to 30 % slower than the rows predicted (ResNet-20, 28x28); out, the
    rows time what the deployed network's convs run. Where the activation stays float (one the quantizer does
    not fold, e.g. HardSwish), a QuantizeLinear is appended, as the next conv's input would have it."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    graph = model.graph
    x = graph.input[0]
    first = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == x.name)
    shape = [d.dim_value for d in x.type.tensor_type.shape.dim]
    y = graph.output[0].name
    producers = {out: n for n in graph.node for out in n.output}
    last, identities = producers[y], []
    while last.op_type == "Identity":                  # back to the row's last op
        identities.append(last)
        last = producers[last.input[0]]
    drop = [first]
    if last.op_type == "DequantizeLinear":
        out_name = last.input[0]                       # the uint8 tensor it dequantizes
        drop += identities + [last]
    else:
        scale, zero = helper.make_tensor("y_scale", TensorProto.FLOAT, [], [0.05]), \
            helper.make_tensor("y_zero_point", TensorProto.UINT8, [], [128])
        graph.initializer.extend([scale, zero])
        out_name = "y_uint8"
        graph.node.append(helper.make_node("QuantizeLinear", [y, "y_scale", "y_zero_point"], [out_name]))
    for node in drop:
        graph.node.remove(node)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(first.output[0], TensorProto.UINT8, shape))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(out_name, TensorProto.UINT8, None))
    onnx.save(model, str(dst))
    return Path(dst)


def calibration_batches(dataset, images: int = CALIBRATION_IMAGES, batch_size: int = 32) -> list[torch.Tensor]:
    """The first ``images`` inputs of ``dataset`` (the scoring split: never the test split), in batches."""
    from ..data.datasets import loader

    out, seen = [], 0
    for x, _ in loader(dataset, batch_size):
        out.append(x[:images - seen])
        seen += len(out[-1])
        if seen >= images:
            break
    return out


def onnx_predictor(path: str | os.PathLike, threads: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function running the ONNX file at ``path`` with ONNX Runtime on a batch (the file's batch dimension
    must be symbolic): how a deployed int8 network's accuracy is measured."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.detach().cpu().float().numpy()})[0])
    return predict


def openvino_predictor(path: str | os.PathLike, threads: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """As :func:`onnx_predictor`, run by OpenVINO on CPU (float32 precision hint: int8 where the file says so)."""
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": str(threads or torch.get_num_threads()), "INFERENCE_PRECISION_HINT": "f32"}
    compiled = ov.Core().compile_model(ov.Core().read_model(str(path)), "CPU", config)

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(compiled(x.detach().cpu().float().numpy())[0].copy())
    return predict


def agreement(float_model: nn.Module, predict: Callable[[torch.Tensor], torch.Tensor], dataset,
              batch_size: int = 256) -> dict[str, float]:
    """How the int8 network (``predict``) follows the float one it was quantized from on ``dataset``: its
    accuracy, the float network's, the share of inputs where their top-1 classes agree, and the relative
    error of its outputs (norm of the difference over the float outputs' norm)."""
    from ..data.datasets import loader

    correct_q = correct_f = same = n = 0
    diff2 = ref2 = 0.0
    float_model = float_model.eval()
    with torch.no_grad():
        for x, y in loader(dataset, batch_size):
            ref = float_model(x.to(next(float_model.parameters()).device)).float().cpu()
            out = predict(x).reshape(ref.shape)
            correct_q += int((out.argmax(1) == y).sum())
            correct_f += int((ref.argmax(1) == y).sum())
            same += int((out.argmax(1) == ref.argmax(1)).sum())
            diff2 += float(((out - ref) ** 2).sum())
            ref2 += float((ref ** 2).sum())
            n += len(y)
    return {"accuracy_int8": 100.0 * correct_q / n, "accuracy_float": 100.0 * correct_f / n,
            "top1_agreement": 100.0 * same / n, "relative_error": (diff2 / max(ref2, 1e-30)) ** 0.5}


class Int8Deployment:
    """Networks (the deployed one and the original), each exported (batch symbolic) and quantized on the same
    calibration images, in one temporary folder that lives as long as this object: the files that
    ``save_pretrained`` copies, the backends time and the predictors evaluate."""

    def __init__(self, networks: dict[str, nn.Module], example_input: torch.Tensor, batches: Sequence[torch.Tensor]):
        self._tmp = tempfile.TemporaryDirectory(prefix="depthcut-int8-")
        self.files: dict[str, Path] = {}
        for name, net in networks.items():
            folder = Path(self._tmp.name) / name
            folder.mkdir()
            self.files[name] = quantized_file(net, example_input, folder, batches, dynamic_batch=True)
        self.calibration_images = sum(len(b) for b in batches)

    def fixed(self, name: str, kind: str, batch: int) -> Path:
        """Network ``name``'s ``kind`` ("float" or "int8") file with its batch dimension fixed to ``batch``
        (what a timing reads: a runtime may pick other kernels for a symbolic shape)."""
        src = self.files[name] if kind == "int8" else self.files[name].with_name("model.onnx")
        return fix_batch(src, src.with_name(f"{src.stem}_batch{batch}.onnx"), batch)


def fix_batch(src: str | os.PathLike, dst: str | os.PathLike, batch: int) -> Path:
    """A copy of the ONNX file ``src`` with its input's and outputs' batch dimension fixed to ``batch``."""
    import onnx

    model = onnx.load(str(src))
    for value in list(model.graph.input) + list(model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = batch
    onnx.save(model, str(dst))
    return Path(dst)
