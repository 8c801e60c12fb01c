"""Networks to ONNX files: the one exporter every runtime backend, the int8 quantizer and the saved results use."""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from ..errors import DepthcutError


def export_onnx(module: nn.Module, example_input: torch.Tensor, path: str, opset: int = 17,
                dynamic_batch: bool = False) -> None:
    """Export with the TorchScript exporter (fast, robust for plain convs); fall back to the dynamo one.
    ``dynamic_batch`` makes the batch dimension symbolic (for deployed files; timing needs none)."""
    module = copy.deepcopy(module).cpu().float().eval()   # never move the caller's module
    x = example_input.detach().cpu().float()
    axes = {"x": {0: "batch"}, "y": {0: "batch"}} if dynamic_batch else None
    try:
        with warnings.catch_warnings():  # the TorchScript exporter is deprecated but still the sturdier one
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(module, (x,), path, dynamo=False, opset_version=opset,
                              input_names=["x"], output_names=["y"], dynamic_axes=axes)
    except Exception as first:  # noqa: BLE001 — any exporter failure: try the other exporter
        try:
            torch.onnx.export(module, (x,), path, dynamo=True, opset_version=max(opset, 18),
                              input_names=["x"], output_names=["y"], external_data=False)
        except Exception as second:
            raise DepthcutError(f"cannot export {type(module).__name__} to ONNX: {first}; dynamo exporter: "
                                f"{second}") from second
