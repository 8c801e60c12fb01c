"""Depth up-scaling (SOLAR 10.7B, Kim et al. 2023; SPEC B5).

From an n-layer base take two copies A and B, drop the last m layers of A and the first m layers of B, and
concatenate: A[0 .. n-m) + B[m .. n), i.e. 2(n - m) layers (SOLAR: n = 32, m = 8 -> 48 layers). The m
"overlap" layers on each side of the seam are what is discarded, so that the seam joins layer n-m-1 to layer
m, two layers whose representations are closer than those of layer n-1 and layer 0. Every duplicated layer
is a deep copy; ``layer_idx``, ``num_hidden_layers`` and per-layer config lists are rebuilt by
:func:`depthcut.llm.surgery.duplicate_layers`. Continued pre-training is expected afterwards.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..errors import DepthcutError
from .surgery import duplicate_layers


def upscale_plan(n: int, overlap: int) -> list[int]:
    """Source layer of each up-scaled layer: ``[0..n-overlap) + [overlap..n)``."""
    if n < 1:
        raise DepthcutError(f"cannot up-scale a model with {n} layers")
    if not 0 <= overlap < n:
        raise DepthcutError(f"overlap m = {overlap} must satisfy 0 <= m < n = {n} (2(n-m) layers result)")
    return list(range(0, n - overlap)) + list(range(overlap, n))


def upscale(model: nn.Module, overlap: int, base_layers: Sequence[int] | None = None) -> nn.Module:
    """SOLAR depth up-scaling of ``model``. ``base_layers`` (default: all layers in order) is the base
    stack the two copies are made of, e.g. to up-scale an already-selected subset."""
    n_model = model.config.num_hidden_layers
    base = list(range(n_model)) if base_layers is None else [int(i) for i in base_layers]
    bad = [i for i in base if not 0 <= i < n_model]
    if bad:
        raise DepthcutError(f"base_layers {bad} out of range for a {n_model}-layer model")
    plan = upscale_plan(len(base), overlap)
    return duplicate_layers(model, [base[i] for i in plan])
