"""Dominated candidates: never build, time or score a merge that can never be chosen (issue 7).

Deep networks yield candidates no plan would pick: ResNet-152 has 9,591, the largest one 73x73 conv of
1024 -> 2048 channels (44.7 GB of weights, 548 GMAC per image against 11.5 for the whole network). Building
or timing it would exhaust any machine. A candidate over n >= 2 convs is *dominated* by the original convs it
replaces (the n single-conv blocks, always valid) when

* latency: they are no slower. In the DP's discretised latency (ceil(P*T) per row, P = steps / range) the n
  rows may round up by < 1 step each, so we ask T(candidate) >= T(path) + n * range / steps: then the
  candidate costs at least as many steps as the path, at every budget;
* importance: they are worth at least as much. The path earns n (every original block scores exp(0) = 1);
  a candidate earns at most ``max_importance`` (accuracy scores exp(dacc / 100) <= exp((100 - base) / 100),
  which is <= 2 once the base accuracy is >= 30.7%). So n >= max_importance.

Then removing the candidate changes no DP answer at any budget: the frontier is exactly the one computed
over all candidates (tests/latency/test_dominance.py checks it against the full enumeration).

The latency side is decided without building the candidate when a bound can: T(candidate) >= its MACs /
(the best MAC rate measured among this network's own single-conv rows x ``safety``), and, for weights larger
than any cache, >= its weight bytes / (the measured memory bandwidth x ``safety``). Only candidates the bounds
cannot decide are timed; those measured no faster than their path are dropped too (before their importance
is scored). A measured row is a median with a 95 % interval, and single timings on a loaded machine move by
more than their medians differ: a candidate is dropped only when the *low* end of its interval is at or above
the *high* end of its path's (the sum of its originals' high ends) plus the grid margin. Near-ties stay in
the table (the DP decides them), so which candidates are scored does not flip between fresh runs on timing
noise, and the same cached timings always drop the same candidates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from ..cnn.build import is_trivial
from ..cnn.chain import Candidate

SAFETY = 2.0   # the bound assumes a merged conv runs at most 2x faster per MAC than the best single conv
CACHE_BYTES = 64 * 2**20   # weights above this cannot stay in cache: they are read from memory every call


def weight_bytes(candidate: Candidate) -> int:
    groups = candidate.in_channels if candidate.depthwise else candidate.groups
    return 4 * candidate.out_channels * (candidate.in_channels // groups) * candidate.kernel ** 2


def measure_bandwidth(device: str = "cpu", megabytes: int = 256, repeats: int = 3) -> float:
    """Peak memory bandwidth in bytes per ms (the best of ``repeats`` copies of ``megabytes``; a copy reads
    and writes each byte). A conv whose weights do not fit in cache takes at least weights / bandwidth."""
    import time

    import torch

    src = torch.empty(megabytes * 2**18, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats + 1):
        if src.device.type == "cuda":
            torch.cuda.synchronize(src.device)
        t0 = time.perf_counter()
        dst.copy_(src)
        if src.device.type == "cuda":
            torch.cuda.synchronize(src.device)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / (best * 1e3)


def macs(candidate: Candidate, batch_size: int | None = None) -> int:
    """Multiply-accumulates of the candidate's merged conv ('same' padding, its stride) on its input."""
    n, c, h, w = candidate.input_shape
    n = batch_size or n
    ho, wo = -(-h // candidate.stride), -(-w // candidate.stride)
    groups = candidate.in_channels if candidate.depthwise else candidate.groups
    return n * candidate.out_channels * ho * wo * (candidate.in_channels // groups) * candidate.kernel ** 2


def max_accuracy_importance(base_accuracy: float) -> float:
    """The largest I = exp(dacc / 100) a candidate can score when the original scores ``base_accuracy`` %."""
    return math.exp((100.0 - base_accuracy) / 100.0)


@dataclass(frozen=True)
class Dominated:
    key: str
    span: int
    path_ms: float             # the high end of the original convs' summed interval
    bound_ms: float | None     # lower bound from MACs (when it decided)
    measured_ms: float | None  # the low end of the measured latency's interval (when the bound could not decide)

    @property
    def reason(self) -> str:
        how = (f"MAC bound {self.bound_ms:.3g} ms" if self.measured_ms is None
               else f"measured at least {self.measured_ms:.3g} ms")
        return f"{how} >= the {self.span} original convs' at most {self.path_ms:.3g} ms (+ grid margin)"

    def to_dict(self) -> dict[str, object]:
        return {"key": self.key, "reason": self.reason}


def _interval(timing: object) -> tuple[float, float, float]:
    """(median, low, high) of a row's timing: a :class:`~depthcut.latency.backends.Timing`, or a plain number
    (an exact latency, e.g. a synthetic table)."""
    if isinstance(timing, (int, float)):
        return float(timing), float(timing), float(timing)
    low, high = timing.interval
    return timing.median_ms, low, high


def prune_dominated(candidates: Iterable[Candidate], time_rows: Callable[[list[Candidate]], Mapping[str, object]],
                    *, max_importance: float, steps: int = 2000, batch_size: int | None = None,
                    safety: float = SAFETY, bandwidth: float | None = None,
                    in_network: Callable[[Candidate, float], float] | None = None,
                    ) -> tuple[list[Candidate], list[Dominated], dict[str, float]]:
    """Drop dominated candidates (module docstring). ``time_rows(candidates) -> {key: Timing or ms}`` measures
    rows (the cached latency table). ``bandwidth`` (bytes/ms, :func:`measure_bandwidth`) adds the memory bound
    for weights larger than any cache. ``in_network(candidate, timed_ms)`` maps a row's timing to what the DP
    sees (depthcut.latency.model); dominance is decided on those values, and the MAC bound uses their rate
    (the weight bound holds in a network as in a single call: the weights are read either way). Returns (kept candidates, dominated ones with their reasons, DP ms of every
    kept candidate)."""
    candidates = list(candidates)
    seen = in_network or (lambda c, t: t)

    def dp_view(batch: list[Candidate]) -> dict[str, tuple[float, float, float]]:
        """(median, low, high) of each row as the DP sees it."""
        timed = time_rows(batch)
        return {c.key: tuple(seen(c, t) for t in _interval(timed[c.key])) for c in batch}

    originals = [c for c in candidates if is_trivial(c)]
    rows = dp_view(originals)
    single = {c.end: rows[c.key] for c in originals}
    body_ms = sum(m for m, _, _ in single.values())
    grid_ms = body_ms / steps                    # one step of the DP's latency grid (range = the original body)
    # the MAC rate of the network's own convs as the DP sees them (in-network): the bound below is on that
    peak = max((macs(c, batch_size) / rows[c.key][0] for c in originals if rows[c.key][0] > 0), default=0.0)
    min_span = max(2, math.ceil(max_importance - 1e-12))

    def path_high_ms(c: Candidate) -> float:
        """The slowest the candidate's original convs can be, by their intervals, plus the grid margin."""
        return sum(single[p][2] for p in range(c.start + 1, c.end + 1)) + (c.end - c.start) * grid_ms

    def eligible(c: Candidate) -> bool:
        return bool(c.kept) and not is_trivial(c) and c.end - c.start >= min_span

    dominated: list[Dominated] = []
    to_time: list[Candidate] = []
    for c in candidates:
        if c.key in rows or not c.kept:
            continue
        if eligible(c) and peak > 0:
            bound = macs(c, batch_size) / (peak * safety)
            if bandwidth and weight_bytes(c) > CACHE_BYTES:
                bound = max(bound, weight_bytes(c) / (bandwidth * safety))
            if bound >= path_high_ms(c):
                dominated.append(Dominated(c.key, c.end - c.start, path_high_ms(c), bound, None))
                continue
        to_time.append(c)
    rows.update(dp_view(to_time))
    for c in to_time:
        if eligible(c) and rows[c.key][1] >= path_high_ms(c):
            dominated.append(Dominated(c.key, c.end - c.start, path_high_ms(c), None, rows[c.key][1]))
    gone = {d.key for d in dominated}
    kept = [c for c in candidates if c.key not in gone]
    return kept, dominated, {c.key: (rows[c.key][0] if c.kept else 0.0) for c in kept}
