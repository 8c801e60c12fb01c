"""The runtime's fixed per-call cost, which single-conv timings count once per row (issue 9 §1).

A latency row times one conv as its own call: an ONNX Runtime session run, an eager call with a device
synchronisation. Each such call pays a fixed cost - binding the input, allocating and returning the output,
waking the thread pool, synchronising - that a whole network pays once, not once per conv. Summing rows
therefore over-counts, and the over-count grows with the number of convs in a plan: on ONNX Runtime CPU at
batch 1 it made every MobileNetV2 plan look 33-50% faster than it measured, and ranked two plans wrongly.

The cost is measured in context, on the backend itself: a chain of k cheap ops (depthwise 1x1 convs) at a
row's own input shape costs T(k) = call + k * op, so call = T(1) - (T(k) - T(1)) / (k - 1). It depends on the
tensor sizes (copies of inputs and outputs), so it is measured at a few sizes spanning the table's rows and
fitted as call(bytes) = a + b * bytes of input and output. A row's in-network cost is then its timing minus
call(its bytes), never below a floor fraction of the timing.
"""
from __future__ import annotations

import statistics
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..cache import json_number
from ..cnn.chain import Candidate
from .backends import Backend, measure

CHAIN = 5            # ops in the long chain; the short one has 1
FLOOR = 0.25         # a corrected row keeps at least this fraction of its timing


def row_bytes(candidate: Candidate, batch_size: int | None = None) -> float:
    """Bytes of the row's input and output tensors (float32)."""
    n = batch_size or candidate.input_shape[0]
    h, w = candidate.input_shape[2:]
    oh, ow = -(-h // candidate.stride), -(-w // candidate.stride)
    return 4.0 * n * (candidate.in_channels * h * w + candidate.out_channels * oh * ow)


def _chain(channels: int, k: int) -> nn.Module:
    gen = torch.Generator().manual_seed(k)
    convs = []
    for _ in range(k):
        conv = nn.Conv2d(channels, channels, 1, groups=channels, bias=False)
        with torch.no_grad():
            conv.weight.copy_(1.0 + 0.01 * torch.randn(conv.weight.shape, generator=gen))
        convs.append(conv)
    return nn.Sequential(*convs).eval()


def _call_cost(backend: Backend, shape: tuple[int, ...], repeats: int) -> float:
    """Fixed per-call cost (ms) at ``shape``: the intercept of a 1-op and a CHAIN-op timing."""
    x = torch.randn(shape)
    with torch.no_grad():
        short = backend.prepare(_chain(shape[1], 1), x)
        long = backend.prepare(_chain(shape[1], CHAIN), x)
        # interleave, so drift hits both
        t1, tk = [], []
        for _ in range(3):
            t1.append(measure(short, warmup=3, repeats=repeats, queued=backend.row_calls).median_ms)
            tk.append(measure(long, warmup=3, repeats=repeats, queued=backend.row_calls).median_ms)
    one, many = statistics.median(t1), statistics.median(tk)
    per_op = max(0.0, (many - one) / (CHAIN - 1))
    return max(0.0, one - per_op)


def sample_shapes(candidates: Iterable[Candidate], batch_size: int | None = None,
                  sizes: int = 4) -> list[tuple[int, ...]]:
    """``sizes`` row input shapes spanning the table's tensor sizes (smallest to largest)."""
    kept = sorted((c for c in candidates if c.kept), key=lambda c: row_bytes(c, batch_size))
    if not kept:
        return []
    picks = sorted({round(q * (len(kept) - 1)) for q in np.linspace(0.0, 1.0, sizes)})
    return [(batch_size or kept[i].input_shape[0], kept[i].in_channels) + tuple(kept[i].input_shape[2:])
            for i in picks]


def fit_overhead(shapes: Sequence[tuple[int, ...]], costs: Sequence[float]) -> tuple[float, float]:
    """Least squares call(bytes) = a + b * bytes over the measured points; (a ms, b ms per byte), both >= 0
    (a negative slope is noise: then a constant)."""
    xs = [8.0 * float(np.prod(s)) for s in shapes]           # a depthwise op reads and writes the same shape
    if not xs:
        return 0.0, 0.0
    if len(set(xs)) == 1:
        return max(0.0, float(np.median(costs))), 0.0
    b, a = np.polyfit(xs, costs, 1)
    if b < 0:
        return max(0.0, float(np.median(costs))), 0.0
    return max(0.0, float(a)), float(b)


def call_overhead_ms(backend: Backend, candidates: Iterable[Candidate], batch_size: int | None = None,
                     sizes: int = 4, repeats: int = 50, store=None) -> tuple[float, float]:
    """The backend's fixed per-call cost as (a ms, b ms per byte of input + output), measured at ``sizes``
    shapes spanning the rows. With ``store`` (the latency table's EntryStore) the result is cached next to
    the rows it corrects, so a resumed run uses the same correction."""
    shapes = sample_shapes(candidates, batch_size, sizes)
    key = "call-overhead:" + ";".join("x".join(map(str, s)) for s in shapes)
    if store is not None and key in store:
        value = store[key]
        try:
            a, b = json_number(value["a_ms"]), json_number(value["b_ms_per_byte"])
        except (KeyError, TypeError, ValueError):
            a = b = float("nan")
        if not (np.isfinite(a) and np.isfinite(b) and a >= 0 and b >= 0):
            from ..errors import CacheError
            raise CacheError(f"cache file {store.path(key)} does not hold a valid per-call overhead; "
                             f"delete it to recompute")
        return a, b
    costs = [_call_cost(backend, s, repeats) for s in shapes]
    a, b = fit_overhead(shapes, costs)
    if store is not None:
        store[key] = {"a_ms": a, "b_ms_per_byte": b, "shapes": [list(s) for s in shapes], "costs_ms": costs}
    return a, b


def in_network_ms(candidate: Candidate, timed_ms: float, overhead: tuple[float, float],
                  batch_size: int | None = None) -> float:
    """A row's cost inside a network: its single-call timing minus call(its bytes), at least FLOOR of the
    timing; identity rows stay 0. Monotone in ``timed_ms``, so a lower bound on a timing stays a lower
    bound (depthcut.latency.dominance relies on it)."""
    if not candidate.kept or timed_ms == 0:
        return 0.0
    a, b = overhead
    return max(FLOOR * timed_ms, timed_ms - (a + b * row_bytes(candidate, batch_size)))


def corrected(latency_ms: Mapping[str, float], candidates: Sequence[Candidate], overhead: tuple[float, float],
              batch_size: int | None = None) -> dict[str, float]:
    """:func:`in_network_ms` of every candidate."""
    return {c.key: in_network_ms(c, latency_ms[c.key], overhead, batch_size) for c in candidates}
