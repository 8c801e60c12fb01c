"""A measured speed-up with a confidence interval (issue 9).

A shared machine's timings drift and spike: a single median of pooled samples can say x2.02 in one run and
x2.66 in the next for the same plan. So the two networks are timed in *rounds*, interleaved (the order
alternates), and each round gives one paired ratio

    r_k = median(original samples of round k) / median(compressed samples of round k)

A drift slower than a round hits both alike and cancels in r_k. The estimate is the median of the r_k; its
95% confidence interval is distribution-free (order statistics of the rounds: the median lies between the
k-th smallest and k-th largest r with probability >= 95%, k from the binomial(n, 1/2) tail), so one outlier
round moves neither the estimate nor the interval much, and the outlier count is reported, not hidden in a
stdev. Rounds are added until the interval is narrow enough (``rel_width``) or ``max_rounds`` is reached.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn

from .backends import Backend, get_backend, measure, sample_ms

CONFIDENCE = 0.95


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Distribution-free confidence interval for the median of ``values``: [x_(k), x_(n+1-k)] with the
    largest k such that P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2. With too few values for the
    confidence asked (n < 6 at 95%) the interval is the whole range."""
    x = sorted(values)
    n = len(x)
    if n == 0:
        raise ValueError("no values")
    alpha = (1.0 - confidence) / 2
    k, tail = 0, 0.0
    while k < n // 2:                                   # tail = P(B < k + 1) after adding term k
        tail_next = tail + math.comb(n, k) / 2.0 ** n
        if tail_next > alpha:
            break
        tail, k = tail_next, k + 1
    if k == 0:
        return x[0], x[-1]
    return x[k - 1], x[n - k]


def outliers(values: list[float], scale: float = 3.0) -> int:
    """How many values lie more than ``scale`` robust standard deviations (1.4826 MAD) from the median."""
    if len(values) < 3:
        return 0
    med = statistics.median(values)
    mad = 1.4826 * statistics.median(abs(v - med) for v in values)
    if mad == 0:
        return sum(v != med for v in values)
    return sum(abs(v - med) > scale * mad for v in values)


@dataclass(frozen=True)
class SpeedupEstimate:
    """original / compressed latency from paired interleaved rounds; > 1 means compressed is faster."""

    ratio: float                  # median of the per-round ratios
    low: float                    # 95% confidence interval of that median
    high: float
    rounds: int
    outlier_rounds: int           # rounds whose ratio is > 3 robust stdevs from the median
    original_ms: float            # median over all samples
    compressed_ms: float
    compressed_high_ms: float     # upper end of the 95% interval of the compressed per-round medians

    @property
    def rel_width(self) -> float:
        return (self.high - self.low) / self.ratio

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        out = f"x{self.ratio:.3f} [{self.low:.3f}, {self.high:.3f}] over {self.rounds} rounds"
        return out + (f", {self.outlier_rounds} outlier rounds" if self.outlier_rounds else "")


def compare_speed(original: nn.Module, compressed: nn.Module, example_input: torch.Tensor,
                  backend: str | Backend = "eager", *, repeats: int = 5, min_rounds: int = 10,
                  max_rounds: int = 40, rel_width: float = 0.03, warmup: int = 3,
                  decided: Callable[[SpeedupEstimate], bool] | None = None) -> SpeedupEstimate:
    """Time ``original`` against ``compressed`` in interleaved rounds of ``repeats`` calls each until the 95%
    interval of the ratio is narrower than ``rel_width`` (relative) or ``decided(estimate)`` says the answer
    is already clear, with at least ``min_rounds`` and at most ``max_rounds`` rounds."""
    backend = get_backend(backend)
    with torch.no_grad():
        runners = {"original": backend.prepare(original, example_input),
                   "compressed": backend.prepare(compressed, example_input)}
    for run in runners.values():
        measure(run, warmup=warmup, repeats=1)
    return paired_rounds(lambda name: sample_ms(runners[name], repeats), min_rounds=min_rounds,
                         max_rounds=max_rounds, rel_width=rel_width, decided=decided)


def paired_rounds(sample: Callable[[str], list[float]], *, min_rounds: int = 10, max_rounds: int = 40,
                  rel_width: float = 0.03, decided: Callable[[SpeedupEstimate], bool] | None = None
                  ) -> SpeedupEstimate:
    """The one paired-timing loop every comparison uses (CNNs, LLM generation, diffusion sampling):
    ``sample(name)`` times one round of ``"original"`` or ``"compressed"`` (ms, one or more samples); the order
    alternates each round so drift and a warm cache favour neither; each round gives one ratio of the round
    medians. Stops once the 95% interval of the median ratio is narrower than ``rel_width`` (relative) or
    ``decided(estimate)``, with at least ``min_rounds`` and at most ``max_rounds`` rounds."""
    pooled: dict[str, list[float]] = {"original": [], "compressed": []}
    per_round: dict[str, list[float]] = {"original": [], "compressed": []}
    ratios: list[float] = []
    estimate = None
    for k in range(max(1, max_rounds)):
        for name in (("original", "compressed") if k % 2 == 0 else ("compressed", "original")):
            s = list(sample(name))
            pooled[name] += s
            per_round[name].append(statistics.median(s))
        ratios.append(per_round["original"][-1] / max(per_round["compressed"][-1], 1e-12))
        if len(ratios) >= min_rounds or len(ratios) == max_rounds:
            estimate = estimate_from_rounds(ratios, pooled, per_round)
            if estimate.rel_width <= rel_width or (decided is not None and decided(estimate)):
                break
    return estimate


def estimate_from_rounds(ratios: list[float], pooled: dict[str, list[float]], per_round: dict[str, list[float]]
              ) -> SpeedupEstimate:
    """The paired estimate from per-round ratios, all samples (``pooled``) and per-round medians (shared by
    the CNN comparison above and the LLM one, depthcut.llm.latency.compare_generation)."""
    low, high = median_interval(ratios)
    _, comp_high = median_interval(per_round["compressed"])
    return SpeedupEstimate(ratio=statistics.median(ratios), low=low, high=high, rounds=len(ratios),
                           outlier_rounds=outliers(ratios), original_ms=statistics.median(pooled["original"]),
                           compressed_ms=statistics.median(pooled["compressed"]), compressed_high_ms=comp_high)
