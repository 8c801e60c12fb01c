"""Where and in what precision an LLM runs (issue 10): ``--device cpu|cuda[:i]``, ``--dtype float32|bfloat16|
float16`` for loading, scoring, healing, timing and saving.

Inputs follow the model: every consumer moves its token ids to the model's device, so the text pipeline
stays on the CPU. Timings synchronise the device before reading the clock. Checks that compare two
computations of the same function allow the rounding of the dtype they run in (measured in
tests/llm/test_device.py): a broken KV cache differs by O(1), far above any of them.
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import DepthcutError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# relative logit error allowed between two evaluations of the same function (cached vs full-sequence,
# in-memory vs reloaded): float32 rounding, or bf16/fp16 rounding of activations through the whole stack
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise DepthcutError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def resolve_device(name: str | None) -> torch.device:
    """The device a run uses: the one named, else cuda when a GPU is present, else cpu. A CUDA device that is
    not there is a one-line error."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise DepthcutError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DepthcutError(f"device {name} requested but CUDA is not available on this machine")
        if index and int(index) >= torch.cuda.device_count():
            raise DepthcutError(f"device {name} requested but this machine has {torch.cuda.device_count()} GPU(s)")
    return torch.device(name)


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def model_dtype(model: Any) -> torch.dtype:
    return next(model.parameters()).dtype


def to_model(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """Token ids on the model's device."""
    return ids.to(model_device(model))


def synchronize(device: torch.device | Any) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so a clock reading covers it."""
    device = device if isinstance(device, torch.device) else model_device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tolerance(model: Any) -> float:
    return TOLERANCE.get(model_dtype(model), 1e-4)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return platform.processor() or platform.machine() or "cpu"
