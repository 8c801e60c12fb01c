"""int8 deployment (issue 31): quantized latency rows and networks, the deployed files, their agreement."""
from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from depthcut.config import LayerMergeConfig
from depthcut.errors import DepthcutError
from depthcut.latency import get_backend
from depthcut.latency.quantize import Int8Deployment, agreement, calibration_batches, onnx_predictor

pytest.importorskip("onnxruntime")


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
                         nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False), nn.BatchNorm2d(12), nn.ReLU6(),
                         nn.Conv2d(12, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


def relative_error(out, ref) -> float:
    return float((torch.as_tensor(out).reshape(ref.shape) - ref).norm() / ref.norm())


def test_int8_rows_and_networks_are_quantized_and_follow_the_float_function():
    """A latency row (built directly) and a network (exported) on the int8 backend run int8 kernels: their
    outputs differ from float32 by quantization error - not zero, not more than a few percent."""
    backend = get_backend("onnxruntime", quantize="int8")
    row = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU()).eval()
    x = torch.randn(1, 16, 12, 12)
    net, y = small_net(), torch.randn(1, 1, 12, 12)
    for module, inp in ((row, x), (net, y)):
        with torch.no_grad():
            ref = module(inp)
        outs = [run()[0] for run in backend.prepare_sessions(module, inp, 2)]
        for out in outs:
            assert 1e-5 < relative_error(out, ref) < 0.05
    float_backend = get_backend("onnxruntime")
    assert relative_error(float_backend.prepare(row, x)()[0], row(x).detach()) < 1e-5
    # int8 timings never share a cache entry with float32 ones
    assert backend.describe()["quantize"] == "int8" and "quantize" not in float_backend.describe()


def test_quantize_needs_a_backend_that_runs_int8():
    with pytest.raises(DepthcutError, match="quantize='int8' needs a backend that runs int8 networks"):
        LayerMergeConfig(backend="eager", quantize="int8")
    with pytest.raises(DepthcutError, match="unknown quantization 'int4'"):
        LayerMergeConfig(quantize="int4")
    with pytest.raises(DepthcutError, match="unknown quantization"):
        get_backend("onnxruntime", quantize="fp8")
    assert LayerMergeConfig(quantize="int8").quantize == "int8"
    assert LayerMergeConfig.from_dict(LayerMergeConfig(quantize="int8").to_dict()).quantize == "int8"


def test_deployed_int8_files_run_at_any_batch_and_report_their_agreement():
    """The deployed file has a symbolic batch (any batch runs it), its fixed-batch copy the timing's batch; the
    int8 network follows the float one on real images (calibrated on other images of the same data)."""
    from depthcut.data import make_splits
    from depthcut.train import train

    splits = make_splits("digits", finetune_size=200, score_size=200, seed=0)
    net = small_net()
    train(net, splits.train, epochs=10, lr=0.2, batch_size=32, progress=False)
    net.eval()
    batches = calibration_batches(splits.score, images=100, batch_size=32)
    assert [len(b) for b in batches] == [32, 32, 32, 4]
    files = Int8Deployment({"deployed": net}, torch.randn(1, 1, 8, 8), batches)
    assert files.calibration_images == 100
    graph = onnx.load(str(files.files["deployed"])).graph
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) >= 3
    predict = onnx_predictor(files.files["deployed"])
    assert predict(torch.randn(7, 1, 8, 8)).shape == (7, 10)
    fixed = onnx.load(str(files.fixed("deployed", "int8", 3))).graph
    assert fixed.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    follows = agreement(net, predict, splits.test)
    assert follows["accuracy_float"] > 80
    assert follows["top1_agreement"] > 90 and abs(follows["accuracy_int8"] - follows["accuracy_float"]) < 5
    assert 0 < follows["relative_error"] < 0.1
