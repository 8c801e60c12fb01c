"""Adaptive importance (issue 30): fine-tune only the entries that can change the DP's answer.

The full table fine-tunes every candidate (391-448 short fine-tunes for MobileNetV2). The DP needs far fewer:
most candidates are never near an optimal plan. So:

1. **A cheap score for every candidate**: its accuracy on a subset of the scoring split with every BatchNorm
   normalising each batch by that batch's own statistics, no gradient step (the ``bn-batch`` proxy: what BN
   re-calibration measures, which ranks candidates at Spearman 0.88 against the fine-tuned table in
   ``bench/results/importance_proxies.md``, in one pass instead of two). What the original computes before a
   candidate's block is the same for every candidate: it is computed once (``importance.prefix``).
2. **A calibrated bound**: a seeded random sample of the candidates is fine-tuned with the full recipe. A
   monotone (isotonic) map ``g`` from cheap score to fine-tuned accuracy is fitted on it, and the margin ``q``
   is a split-conformal quantile of the sample's leave-one-out residuals ``|acc - g(cheap)|``. An unrefined
   entry's accuracy is taken to lie in ``[g(cheap) - q, g(cheap) + q]``; for an entry exchangeable with the
   sample that holds with probability at least ``coverage``.
3. **Branch and bound over the DP** (:class:`AdaptiveFrontier`): at a budget, solve with every unrefined
   entry at its optimistic bound; fine-tune the unrefined candidates of that optimistic plan; repeat until the
   optimistic plan is fully fine-tuned. Then its value is exact and at least every other plan's optimistic
   value, so - where the bounds hold - at least every plan's true value: it is the plan the full table gives
   (up to ties). With ``tolerance`` > 0 it stops earlier, when the pessimistic plan (unrefined entries at their
   lower bound) is within ``tolerance`` importance of the optimistic one: the returned plan's true value is then
   within ``tolerance`` of the full table's optimum.

Every new budget (the landing re-solves at several) refines only the candidates newly in contention. A
refined entry is the full table's entry: same store, same recipe, same seed; the cheap scores have their own
store; the sample is chosen by hashing keys with the seed. A killed run resumes from both stores and replays
the same refinements from cache.

The guarantee is the bounds': it is statistical (per entry, ``coverage``), not a proof for every entry, and
it holds for searches that return the exact optimum of their scores (the LayerMerge DP and the methods built
on it; not DepthShrinker's greedy ranking).
"""
from __future__ import annotations

import bisect
import hashlib
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from ..cnn.chain import Candidate

COVERAGE = 0.9            # each unrefined entry's interval holds with at least this probability
SAMPLE_FRACTION = 0.05    # of the candidates fine-tuned at random to calibrate the bound ...
MIN_SAMPLE = 8            # ... and at least this many


# --------------------------------------------------------------------------- the cheap-to-full map ---

def isotonic(xs: Sequence[float], ys: Sequence[float]) -> Callable[[float], float]:
    """The non-decreasing least-squares fit of ys on xs (pool adjacent violators), as a function that
    interpolates linearly between the fitted points and is constant beyond them."""
    if not xs:
        raise ValueError("isotonic needs at least one point")
    pairs = sorted(zip(xs, ys))
    blocks: list[list[float]] = []          # [sum of y, count, first x, last x]
    for x, y in pairs:
        blocks.append([y, 1, x, x])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, n, _, last = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += n
            blocks[-1][3] = last
    knots_x, knots_y = [], []
    for s, n, first, last in blocks:        # a pooled block is flat over its x range
        for x in ((first, last) if last > first else (first,)):
            knots_x.append(x)
            knots_y.append(s / n)

    def g(x: float) -> float:
        i = bisect.bisect_left(knots_x, x)
        if i == 0:
            return knots_y[0]
        if i == len(knots_x):
            return knots_y[-1]
        x0, x1, y0, y1 = knots_x[i - 1], knots_x[i], knots_y[i - 1], knots_y[i]
        return y1 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return g


def conformal_margin(cheap: Sequence[float], exact: Sequence[float], coverage: float = COVERAGE) -> float:
    """The split-conformal margin of the isotonic map: the ceil((n + 1) * coverage)-th smallest of the n
    leave-one-out residuals |exact_j - g_{-j}(cheap_j)|. A new entry exchangeable with the sample has
    |exact - g(cheap)| <= margin with probability >= coverage. With too few points for that rank, the largest
    residual (coverage n / (n + 1) then)."""
    return conformal_quantile([abs(r) for r in loo_residuals(cheap, exact)], coverage)


def conformal_quantile(scores: Sequence[float], coverage: float = COVERAGE) -> float:
    """The ceil((n + 1) * coverage)-th smallest of n nonconformity scores (the largest when n is too small for
    that rank): a new score exchangeable with them is at most this with probability >= coverage."""
    n = len(scores)
    return sorted(scores)[min(math.ceil((n + 1) * coverage), n) - 1]


def loo_residuals(cheap: Sequence[float], exact: Sequence[float]) -> list[float]:
    """exact_j - g_{-j}(cheap_j): each point's signed residual under the isotonic map fitted on the others."""
    if len(cheap) < 2:
        raise ValueError("a conformal margin needs at least two fine-tuned entries")
    return [exact[j] - isotonic([c for i, c in enumerate(cheap) if i != j],
                                [e for i, e in enumerate(exact) if i != j])(cheap[j]) for j in range(len(cheap))]


def sample_keys(keys: Sequence[str], seed: int, fraction: float | None = None,
                minimum: int | None = None) -> list[str]:
    """A seeded random sample of ``keys`` (stable across runs and machines: keys ordered by a hash with the
    seed), of max(minimum, ceil(fraction * n)) keys (defaults: SAMPLE_FRACTION, MIN_SAMPLE)."""
    fraction = SAMPLE_FRACTION if fraction is None else fraction
    minimum = MIN_SAMPLE if minimum is None else minimum
    size = min(len(keys), max(minimum, math.ceil(fraction * len(keys))))
    return sorted(keys, key=lambda k: hashlib.sha1(f"{seed}:{k}".encode()).hexdigest())[:size]


@dataclass
class Bounds:
    """Each candidate's fine-tuned accuracy: exact where fine-tuned, else g(cheap) +- margin."""

    estimate: dict[str, float]          # g(cheap score) per candidate
    margin: float
    exact: dict[str, float] = field(default_factory=dict)

    def low(self, key: str) -> float:
        return self.exact[key] if key in self.exact else self.estimate[key] - self.margin

    def high(self, key: str) -> float:
        return self.exact[key] if key in self.exact else self.estimate[key] + self.margin

    def point(self, key: str) -> float:
        return self.exact.get(key, self.estimate[key])


def calibrate_bounds(cheap: Mapping[str, float], sample: Mapping[str, float],
                     coverage: float = COVERAGE) -> Bounds:
    """Bounds from every candidate's cheap score and the fine-tuned accuracy of a random sample."""
    keys = list(sample)
    g = isotonic([cheap[k] for k in keys], [sample[k] for k in keys])
    margin = conformal_margin([cheap[k] for k in keys], [sample[k] for k in keys], coverage)
    return Bounds({k: g(v) for k, v in cheap.items()}, margin, dict(sample))


# ------------------------------------------------------------------------------- the refinement ---

@dataclass
class Refinement:
    """What the adaptive stage did: entries fine-tuned (the sample and the refinements), cheap only, time."""

    candidates: int = 0
    sampled: int = 0
    refined: int = 0
    margin: float = 0.0
    coverage: float = COVERAGE
    seconds: float = 0.0
    rounds: int = 0

    @property
    def finetuned(self) -> int:
        return self.sampled + self.refined

    def to_dict(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "finetuned": self.finetuned, "sampled": self.sampled,
                "refined": self.refined, "cheap_only": self.candidates - self.finetuned, "margin": self.margin,
                "coverage": self.coverage, "seconds": self.seconds, "rounds": self.rounds}


class AdaptiveFrontier:
    """``best(budget)`` of the search over fully fine-tuned scores, fine-tuning only the entries that can
    change it (module docstring). Same interface as :class:`depthcut.search.layermerge.Frontier`.

    ``rows``: the search's rows (``Row`` with ``ref`` the candidate; their importance is ignored);
    ``solve(rows)``: the method's exact search, returning a frontier; ``to_importance(acc)``: a candidate's
    importance from its accuracy (identity rows keep theirs); ``refine(candidates)``: fine-tune them, returning
    key -> accuracy; ``tolerance``: importance the answer may give away to stop refining earlier."""

    def __init__(self, rows: Sequence[Any], solve: Callable[[list[Any]], Any], bounds: Bounds,
                 to_importance: Callable[[float], float], refine: Callable[[list[Candidate]], Mapping[str, float]],
                 tolerance: float = 0.0, stats: Refinement | None = None,
                 say: Callable[[str], None] = lambda s: None):
        self.rows, self._solve_fn, self.bounds = list(rows), solve, bounds
        self.to_importance, self._refine, self.tolerance, self.say = to_importance, refine, tolerance, say
        self.stats = stats or Refinement()
        self._solved: dict[tuple[str, int], Any] = {}

    def _scored(self, row: Any, side: str) -> Any:
        key = row.ref.key
        if key not in self.bounds.estimate:     # an identity row, or one the table does not score
            return row
        return replace(row, importance=self.to_importance(getattr(self.bounds, side)(key)))

    def frontier(self, side: str) -> Any:
        """The search with unrefined entries at their optimistic ("high"), pessimistic ("low") or point value."""
        key = (side, len(self.bounds.exact))   # entries are only ever added: the count names the state
        if key not in self._solved:
            self._solved = {k: v for k, v in self._solved.items() if k[1] == key[1]}
            self._solved[key] = self._solve_fn([self._scored(r, side) for r in self.rows])
        return self._solved[key]

    @property
    def min_latency_ms(self) -> float:
        return self.frontier("point").min_latency_ms

    def pareto(self) -> list[Any]:
        return self.frontier("point").pareto()

    def unrefined(self, solution: Any) -> list[Candidate]:
        return [r.ref for r in solution.rows if r.ref.key in self.bounds.estimate and r.ref.key not in self.bounds.exact]

    def best(self, budget_ms: float) -> Any:
        t0 = time.perf_counter()
        try:
            while True:
                optimistic = self.frontier("high").best(budget_ms)
                todo = self.unrefined(optimistic)
                if not todo:
                    return optimistic
                if self.tolerance > 0:
                    pessimistic = self.frontier("low").best(budget_ms)
                    if optimistic.importance - pessimistic.importance <= self.tolerance:
                        return pessimistic
                self.stats.rounds += 1
                self.say(f"adaptive importance at {budget_ms:.4g} ms: fine-tuning {len(todo)} candidates of the "
                         f"optimistic plan ({self.stats.finetuned} of {self.stats.candidates} fine-tuned so far)")
                found = self._refine(todo)      # the importance table returns every entry or raises
                self.bounds.exact.update({c.key: found[c.key] for c in todo})
                self.stats.refined += len(todo)
        finally:
            self.stats.seconds += time.perf_counter() - t0


__all__ = ["AdaptiveFrontier", "Bounds", "COVERAGE", "MIN_SAMPLE", "Refinement", "SAMPLE_FRACTION",
           "calibrate_bounds", "conformal_margin", "conformal_quantile", "isotonic", "loo_residuals", "sample_keys"]
