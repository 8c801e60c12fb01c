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
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from ..cache import DEFAULT_CACHE_DIR, EntryStore, fingerprint
from ..cnn.chain import Candidate
from ..errors import CacheError, DepthcutError
from ..progress import progress as _progress
from .backends import Backend, Timing, get_backend, measure, sample_ms, timing_copy

TABLE_FORMAT = 3       # 2: every row timed in PASSES passes, each on a fresh session, with its interval; 3: 5 passes
PASSES = 5             # passes over the table; a row's interval spans what its passes saw (3 left MobileNetV2 rows 9 % apart between runs)
REL_WIDTH = 0.05       # a pass samples until its median's 95 % interval is this narrow (relative) ...
MAX_REPEATS = 8        # ... or this many times ``repeats`` samples

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
        entry = store[key]
        stored = Timing.from_dict(entry)
        # from its passes when it has them: the row's statistic is derived from what was timed (:func:`_combined`)
        timing = Timing.from_dict(_combined(entry["passes"])) if "passes" in entry else stored
    except (KeyError, TypeError, ValueError):
        raise CacheError(f"cache file {store.path(key)} does not hold a timing for row {key!r}; "
                         f"delete it to recompute") from None
    for t in (stored, timing):
        values = (t.median_ms, t.stdev_ms, t.p10_ms, t.p90_ms, *t.interval)
        if not all(math.isfinite(v) and v >= 0 for v in values) or t.n < 1:
            raise CacheError(f"cache file {store.path(key)} holds an impossible timing for row {key!r} "
                             f"(median {t.median_ms} ms, n={t.n}: NaN, infinite or negative); "
                             f"delete it to recompute")
    return timing


def latency_table(candidates: Iterable[Candidate], backend: str | Backend = "eager", *,
                  batch_size: int | None = None, cache_dir: str | Path | None = None,
                  progress: bool = True, extra: Iterable["RowSpec"] = (), **how: Any) -> dict[str, Timing]:
    """Time every candidate's merged conv on ``backend``; returns ``{candidate.key: Timing}`` (ms).

    Candidates with the same :func:`row_key` share one row; identity options (``kept == ()``) cost 0. The
    rows are timed by :func:`time_rows` (``how``: its warmup, repeats, passes, ... and ``refresh``).
    ``backend`` is a name ("eager", "compile", "onnxruntime", "openvino", "tensorrt") or a :class:`Backend` instance
    (e.g. ``get_backend("eager", device="cuda")``). ``extra`` rows (e.g. :func:`network_spec`) are timed in the
    same passes and returned under their own keys.
    """
    candidates, extra = list(candidates), list(extra)
    specs: dict[str, RowSpec] = {spec.key: spec for spec in extra}
    for c in candidates:
        if c.kept:
            key = row_key(c, batch_size)
            specs.setdefault(key, RowSpec(key, lambda c=c: build_merged_conv(c), row_shape(c, batch_size)))
    timed = time_rows(specs.values(), backend, batch_size=batch_size, cache_dir=cache_dir, progress=progress,
                      **how)
    out = {spec.key: timed[spec.key] for spec in extra}
    return {**out, **{c.key: timed[row_key(c, batch_size)] if c.kept else Timing.zero() for c in candidates}}


@dataclass(frozen=True)
class RowSpec:
    """One row of a latency table: ``key`` names what is timed (the module's structure and its input shape,
    never where it sits in a network: rows that compute alike share a timing), ``build()`` makes the module,
    ``input_shape`` is the input it is timed on."""

    key: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]


def original_spec(network: nn.Module, input_shape: tuple[int, ...]) -> RowSpec:
    """:func:`network_spec` of a network named by its structure: the original timed with every table."""
    return network_spec(fingerprint({"network": repr(network)}), network, input_shape)


def network_spec(name: str, network: nn.Module, input_shape: tuple[int, ...]) -> RowSpec:
    """A whole network timed as one row of the table, in the same passes as the rows: the network at the
    table's pace, which the latency model's calibration anchors on (depthcut.latency.model.calibrate).
    ``name`` must change when the network's structure does (its weights do not change its latency)."""
    return RowSpec(f"network-{name}-in{'x'.join(map(str, input_shape))}", lambda: timing_copy(network),
                   tuple(input_shape))


def time_rows(specs: Iterable[RowSpec], backend: str | Backend = "eager", *, batch_size: int | None = None,
              cache_dir: str | Path | None = None, warmup: int = 5, repeats: int = 30, min_time_s: float = 0.0,
              progress: bool = True, seed: int = 0, passes: int = PASSES, rel_width: float = REL_WIDTH,
              refresh: bool = False) -> dict[str, Timing]:
    """Time every row on ``backend`` into the latency cache; returns ``{spec.key: Timing}`` (ms). The one
    way rows are timed: CNN candidates (:func:`latency_table`) and the diffusion U-Net's rows alike.

    A table timed in one quick sweep is a snapshot of one moment of a shared machine: the same MobileNetV2
    table timed five times gave per-call fits 8x apart (issue 32). So every row is timed in ``passes`` passes
    over the whole table (a burst of load hits one pass of a row, not all), each pass on a fresh runtime
    session (sessions differ too) and sampling until its median's 95 % interval is ``rel_width`` wide (or
    MAX_REPEATS x ``repeats`` samples). A row's time is its fastest pass's median, its interval spans its
    passes' (:func:`_combined`).

    Each pass of each row is cached as soon as it is timed (``batch_size`` is part of the cache's manifest),
    so an interrupted run resumes where it stopped; ``refresh`` times every row again and replaces what the
    cache held (a table timed through a slow phase of the machine, found out by the latency model's sanity
    checks, depthcut.latency.model.calibrate).
    """
    backend = get_backend(backend)
    store = latency_store(backend, batch_size, cache_dir)
    rows = {spec.key: spec for spec in specs}
    done: dict[str, list[dict]] = {}           # passes already timed of rows not yet complete
    for key in rows:                           # a damaged cached row fails now, before any timing
        if key in store and not refresh:
            entry = store[key]
            if _complete(entry):
                _read_row(store, key)
            else:
                done[key] = _read_passes(store, key)
        else:
            done[key] = []

    gen = torch.Generator().manual_seed(seed)
    bar = _progress(total=sum(passes - len(p) for p in done.values()), desc=f"latency [{backend.name}]",
                    enabled=progress, unit="row pass")
    try:
        for p in range(passes):                # pass p over every row that has p passes so far
            for key in [k for k, timed in done.items() if len(timed) == p]:
                done[key].append(_time_pass(rows[key], backend, gen, warmup=warmup, repeats=repeats,
                                            min_time_s=min_time_s, rel_width=rel_width))
                store[key] = _combined(done[key]) if len(done[key]) >= passes else {"passes": done[key]}
                bar.update(1)
    finally:
        bar.close()
    return {key: _read_row(store, key) for key in rows}


def _time_pass(spec: RowSpec, backend: Backend, gen: torch.Generator, **how: Any) -> dict[str, Any]:
    """One pass of one row on a fresh session: a Timing's fields (scaled where the backend can only time the
    row another way, with the raw median kept)."""
    module = spec.build().eval()
    x = torch.randn(spec.input_shape, generator=gen)
    with torch.no_grad():
        runner = backend.prepare_row(module, x)
        warmup, profile = how["warmup"], getattr(runner, "profile", None)
        if profile is not None:                   # warmed up here: the ops' share is of the timed calls only
            for _ in range(warmup):
                runner()
            warmup, start = 0, profile()
        timing = measure(runner, warmup=warmup, repeats=how["repeats"], min_time_s=how["min_time_s"],
                         max_repeats=MAX_REPEATS * how["repeats"], queued=backend.row_calls,
                         rel_width=how["rel_width"])
        entry = timing.to_dict()
        scale = getattr(runner, "time_scale", None)   # a row the backend could only time another way
        if profile is not None:
            scale = _ops_share(runner, start, profile())
        if scale is not None:
            entry = {**timing.scaled(scale).to_dict(), "measured_median_ms": timing.median_ms, "time_scale": scale}
        del runner, module                          # a giant row's session goes before the next one is built
    return entry


def _ops_share(runner: Any, start: tuple[int, float], end: tuple[int, float]) -> float:
    """The share of a profiled row's calls (``runner.profile()`` at ``start`` and ``end``: calls, ops' ms) that
    its ops ran, of their wall time (depthcut.latency.backends.OpenVINOBackend): the factor its timing is
    scaled by. At most 1: the profile keeps microseconds, and on a row of a few it can round above the wall."""
    calls = end[0] - start[0]
    ops_ms = (end[1] - start[1]) / calls
    return min(1.0, max(0.0, ops_ms) / runner.wall_ms(start[0]))


def _combined(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """A row's timing over its passes: the fastest pass's median; interval and spread span theirs.

    The fastest, not the median pass: what slows a pass down (another job on a shared machine, a slow phase
    lasting seconds) only ever adds time. On a quiet machine the passes agree and the choice hardly matters;
    through noisy phases whole passes of OpenVINO int8 rows (~50 us calls) run 1.5-2x slow, and a table of
    median passes is part fast, part slow, row by row: on the same timings, the latency model missed real
    MobileNetV2 plans by up to 16.6 % fitted on median passes and 4.0 % on fastest passes (3 fresh runs,
    bench/results/latency_pass_statistic.md)."""
    timings = [Timing.from_dict(p) for p in passes]
    low = min(t.interval[0] for t in timings)
    high = max(t.interval[1] for t in timings)
    combined = Timing(median_ms=min(t.median_ms for t in timings),
                      stdev_ms=max(t.stdev_ms for t in timings), p10_ms=min(t.p10_ms for t in timings),
                      p90_ms=max(t.p90_ms for t in timings), n=sum(t.n for t in timings), low_ms=low, high_ms=high)
    return {**combined.to_dict(), "passes": passes}


def _complete(entry: Any) -> bool:
    return isinstance(entry, dict) and "median_ms" in entry


def _read_passes(store: EntryStore, key: str) -> list[dict[str, Any]]:
    """The passes of a row cached before an interruption (each must be a valid timing)."""
    entry = store[key]
    try:
        passes = list(entry["passes"])
        for p in passes:
            Timing.from_dict(p)
    except (KeyError, TypeError, ValueError):
        raise CacheError(f"cache file {store.path(key)} does not hold timing passes for row {key!r}; "
                         f"delete it to recompute") from None
    return passes


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
            runners[name] = backend.prepare(timing_copy(models[name]), example_input)
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
