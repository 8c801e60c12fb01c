"""Latency lookup table T(i, j, k) per candidate (SPEC A5) and fair end-to-end timing.

Each candidate (block, kernel option) becomes the *single* merged convolution it will be after compression,
followed by the activation at its end, timed on the block's real input shape. Identity options cost 0.
Many candidates share a conv configuration and shape (e.g. every ResNet stage repeats), so rows are keyed
by what is timed, not by candidate, and each distinct row is timed once.

Rows are cached one file each in ``cache_dir/latency/<fingerprint>/`` where the fingerprint covers the
backend and its version, torch version, device name, dtype, threads and batch size; the input shape is part
of each row key. A table from another machine therefore lands in another directory and is never reused.

The sum of block latencies is a *model* of the network's latency; :func:`time_models` measures whole
networks against each other, interleaved, to check it.
"""
from __future__ import annotations

import math

from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from ..cache import DEFAULT_CACHE_DIR, EntryStore, fingerprint
from ..cnn.chain import Candidate
from ..errors import CacheError, DepthcutError
from ..progress import progress as _progress
from .backends import Backend, Timing, get_backend, measure, sample_ms

TABLE_FORMAT = 1

def make_activation(kind: str | None) -> nn.Module:
    """The module for an activation kind as recorded in the chain (None = no activation); the kinds are the
    analysis's own, so every chain the analysis accepts can be timed."""
    from ..cnn.graph import activation_module

    return nn.Identity() if kind is None else activation_module(kind)


def row_shape(candidate: Candidate, batch_size: int | None) -> tuple[int, ...]:
    """The input shape actually timed: the block's, with the batch replaced when the user deploys another."""
    shape = tuple(candidate.input_shape)
    if len(shape) != 4:
        raise DepthcutError(f"candidate {candidate.key} has input shape {shape}; expected (N, C, H, W)")
    return shape if batch_size is None else (batch_size, *shape[1:])


def row_key(candidate: Candidate, batch_size: int | None = None) -> str:
    """What is timed: conv config + activation + input shape. Candidates with equal keys share one row."""
    groups = candidate.in_channels if candidate.depthwise else candidate.groups
    shape = "x".join(map(str, row_shape(candidate, batch_size)))
    return (f"conv{candidate.in_channels}-{candidate.out_channels}-k{candidate.kernel}-s{candidate.stride}"
            f"-g{groups}-{candidate.activation or 'none'}-in{shape}")


def build_merged_conv(candidate: Candidate) -> nn.Module:
    """The single conv a candidate becomes after merging, followed by its end activation."""
    if candidate.depthwise and candidate.in_channels != candidate.out_channels:
        raise DepthcutError(f"candidate {candidate.key} is depthwise but maps {candidate.in_channels} -> "
                            f"{candidate.out_channels} channels")
    conv = nn.Conv2d(candidate.in_channels, candidate.out_channels, candidate.kernel, stride=candidate.stride,
                     padding=candidate.kernel // 2,
                     groups=candidate.in_channels if candidate.depthwise else candidate.groups,
                     bias=True)  # BN folds into a bias, so the deployed conv always has one
    return nn.Sequential(conv, make_activation(candidate.activation))


def latency_manifest(backend: Backend, batch_size: int | None) -> dict[str, Any]:
    """Everything that changes timings of a row, except its shape (which is in the row key)."""
    return {"table": "latency", "format": TABLE_FORMAT, **backend.describe(), "batch_size": batch_size}


def latency_store(backend: Backend, batch_size: int | None = None,
                  cache_dir: str | Path | None = None) -> EntryStore:
    manifest = latency_manifest(backend, batch_size)
    root = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    return EntryStore(root / "latency" / fingerprint(manifest), manifest)


def _read_row(store: EntryStore, key: str) -> Timing:
    try:
        timing = Timing.from_dict(store[key])
    except (KeyError, TypeError, ValueError):
        raise CacheError(f"cache file {store.path(key)} does not hold a timing for row {key!r}; "
                         f"delete it to recompute") from None
    values = (timing.median_ms, timing.stdev_ms, timing.p10_ms, timing.p90_ms, *timing.interval)
    if not all(math.isfinite(v) and v >= 0 for v in values) or timing.n < 1:
        raise CacheError(f"cache file {store.path(key)} holds an impossible timing for row {key!r} "
                         f"(median {timing.median_ms} ms, n={timing.n}: NaN, infinite or negative); "
                         f"delete it to recompute")
    return timing


def latency_table(candidates: Iterable[Candidate], backend: str | Backend = "eager", *,
                  batch_size: int | None = None, cache_dir: str | Path | None = None, warmup: int = 5,
                  repeats: int = 30, min_time_s: float = 0.0, progress: bool = True,
                  seed: int = 0) -> dict[str, Timing]:
    """Time every candidate's merged conv on ``backend``; returns ``{candidate.key: Timing}`` (ms).

    Identity options (``kept == ()``) cost 0. Each distinct row is timed once and cached immediately, so an
    interrupted run resumes where it stopped. ``backend`` is a name ("eager", "compile", "onnxruntime",
    "tensorrt") or a :class:`Backend` instance (e.g. ``get_backend("eager", device="cuda")``).
    """
    backend = get_backend(backend)
    candidates = list(candidates)
    store = latency_store(backend, batch_size, cache_dir)

    rows: dict[str, Candidate] = {}            # row key -> one representative candidate
    for c in candidates:
        if c.kept:
            rows.setdefault(row_key(c, batch_size), c)
    todo = [k for k in rows if k not in store]
    for key in rows.keys() - set(todo):      # a damaged cached row fails now, before any timing
        _read_row(store, key)

    gen = torch.Generator().manual_seed(seed)
    bar = _progress(todo, desc=f"latency [{backend.name}]", enabled=progress, unit="row")
    for key in bar:
        c = rows[key]
        module = build_merged_conv(c)
        x = torch.randn(row_shape(c, batch_size), generator=gen)
        with torch.no_grad():
            runner = backend.prepare(module, x)
            timing = measure(runner, warmup=warmup, repeats=repeats, min_time_s=min_time_s,
                             queued=backend.row_calls)
            entry = timing.to_dict()
            scale = getattr(runner, "time_scale", None)   # a row the backend could only time another way
            if scale is not None:
                entry = {**timing.scaled(scale).to_dict(), "measured_median_ms": timing.median_ms,
                         "time_scale": scale}
            del runner, module                     # a giant row's session goes before the next one is built
        store[key] = entry

    table: dict[str, Timing] = {}
    for c in candidates:
        table[c.key] = _read_row(store, row_key(c, batch_size)) if c.kept else Timing.zero()
    return table


# ---------------------------------------------------------------------------- end-to-end timing ---

def time_models(models: Mapping[str, nn.Module], example_input: torch.Tensor,
                backend: str | Backend = "eager", *, rounds: int = 10, repeats: int = 5,
                warmup: int = 3) -> dict[str, Timing]:
    """End-to-end latency of several models on the same input, measured *interleaved*.

    Each round runs ``repeats`` timed calls of every model in turn (the order rotates each round), so slow
    drifts of a shared, noisy machine (other jobs, thermal state) hit all models alike and their ratio stays
    fair. Returns one Timing per model over all its ``rounds * repeats`` samples.
    """
    backend = get_backend(backend)
    if not models:
        raise ValueError("time_models needs at least one model")
    names = list(models)
    runners = {}
    with torch.no_grad():
        for name in names:
            runners[name] = backend.prepare(models[name], example_input)
    for name in names:
        measure(runners[name], warmup=warmup, repeats=1)   # warm every model before any sample counts
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            samples[name].extend(sample_ms(runners[name], repeats))
    return {n: Timing.from_samples(s) for n, s in samples.items()}


def speedup(before: Timing, after: Timing) -> float:
    """before / after in median latency (> 1 means ``after`` is faster)."""
    if after.median_ms <= 0:
        raise ValueError(f"cannot compute a speed-up against a latency of {after.median_ms} ms")
    return before.median_ms / after.median_ms
