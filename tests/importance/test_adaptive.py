"""Adaptive importance (issue 30): the branch and bound over the DP gives the full table's plan, from fewer
fine-tuned entries, wherever the bounds hold."""
from __future__ import annotations

import math
import random

import pytest

from adaptive_chains import instance, score
from depthcut.importance.adaptive import (AdaptiveFrontier, Bounds, Refinement, calibrate_bounds, conformal_margin,
                                          isotonic, sample_keys)
from depthcut.search.layermerge import solve
from depthcut.search.tables import Row


def test_isotonic_is_the_pooled_non_decreasing_fit():
    g = isotonic([1, 2, 3, 4], [1.0, 3.0, 2.0, 4.0])      # 3, 2 violate: pooled to 2.5
    assert [g(x) for x in (1, 2, 3, 4)] == pytest.approx([1.0, 2.5, 2.5, 4.0])
    assert g(0) == 1.0 and g(9) == 4.0 and g(3.5) == pytest.approx(3.25)
    rng = random.Random(0)
    xs = [rng.uniform(0, 10) for _ in range(40)]
    ys = [x + rng.gauss(0, 2) for x in xs]
    f = isotonic(xs, ys)
    grid = [i / 10 for i in range(-5, 106)]
    assert all(f(a) <= f(b) + 1e-12 for a, b in zip(grid, grid[1:]))
    assert isotonic([3, 1, 2], [30, 10, 20])(2.5) == pytest.approx(25)   # monotone data: interpolated exactly


@pytest.mark.parametrize("seed", range(20))
def test_the_conformal_margin_covers_new_entries_as_promised(seed):
    """Exchangeable cheap/exact pairs: a margin from 19 points covers a 20th with probability >= 0.9; over
    400 draws the miss rate stays under 10 % plus the binomial slack (4 standard deviations)."""
    rng = random.Random(seed)
    misses, draws = 0, 400
    for _ in range(draws):
        pts = [(c, 80 + 2 * c + rng.gauss(0, 1.5)) for c in (rng.uniform(0, 5) for _ in range(20))]
        margin = conformal_margin([c for c, _ in pts[:-1]], [e for _, e in pts[:-1]], 0.9)
        g = isotonic([c for c, _ in pts[:-1]], [e for _, e in pts[:-1]])
        c, e = pts[-1]
        misses += abs(e - g(c)) > margin
    assert misses / draws <= 0.1 + 4 * math.sqrt(0.1 * 0.9 / draws)


def test_sample_keys_are_seeded_and_stable():
    keys = [f"b{i}" for i in range(100)]
    s = sample_keys(keys, seed=3)
    assert s == sample_keys(list(reversed(keys)), seed=3) and len(s) == 8 and len(set(s)) == 8
    assert s != sample_keys(keys, seed=4)
    assert len(sample_keys(keys, seed=3, fraction=0.2)) == 20 and len(sample_keys(keys[:5], seed=3)) == 5


def true_value(solution, true) -> float:
    return sum(score(true[r.ref.key]) if r.ref.key in true else r.importance for r in solution.rows)


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("tolerance", [0.0, 0.005])
def test_adaptive_plans_equal_the_full_tables_where_the_bounds_hold(seed, tolerance):
    rows, true, cheap, noise, length = instance(seed)
    full_rows = [Row(r.start, r.end, r.latency_ms, score(true[r.ref.key]) if r.ref.key in true else 1.0, ref=r.ref)
                 for r in rows]
    body = sum(r.latency_ms for r in rows if r.end == r.start + 1)
    full = solve(full_rows, length, steps=400, max_latency_ms=body)
    fine_tuned = []

    def refine(cands):
        fine_tuned.extend(c.key for c in cands)
        return {c.key: true[c.key] for c in cands}

    stats = Refinement(candidates=len(true))
    adaptive = AdaptiveFrontier(rows, lambda rs: solve(rs, length, steps=400, max_latency_ms=body),
                                Bounds(dict(cheap), noise), score, refine, tolerance=tolerance, stats=stats)
    for fraction in (0.8, 0.6, 0.45):
        want = full.best(fraction * body)
        got = adaptive.best(fraction * body)
        assert got.latency_ms <= fraction * body
        assert true_value(got, true) >= true_value(want, true) - tolerance - 1e-9
        if tolerance == 0:       # every entry of the answer fine-tuned: its value is the true one
            assert got.importance == pytest.approx(true_value(got, true), abs=1e-12)
    assert len(fine_tuned) == len(set(fine_tuned)) == stats.refined          # never one entry twice
    assert stats.refined < len(true)


def test_bounds_from_a_sample_and_every_refinement_is_a_full_table_entry():
    rows, true, cheap, _, length = instance(7, length=12)
    sample = {k: true[k] for k in sample_keys(list(true), seed=0)}
    bounds = calibrate_bounds(cheap, sample)
    assert bounds.exact == sample and bounds.margin > 0
    assert all(bounds.low(k) <= bounds.point(k) <= bounds.high(k) for k in true)
    body = sum(r.latency_ms for r in rows if r.end == r.start + 1)
    asked = []
    adaptive = AdaptiveFrontier(rows, lambda rs: solve(rs, length, steps=400, max_latency_ms=body), bounds, score,
                                lambda cs: asked.extend(cs) or {c.key: true[c.key] for c in cs})
    solution = adaptive.best(0.5 * body)
    assert not adaptive.unrefined(solution)
    assert not set(c.key for c in asked) & set(sample)                 # the sample is never fine-tuned again
    assert all(bounds.exact[c.key] == true[c.key] for c in asked)
    assert adaptive.min_latency_ms == solve(rows, length, steps=400, max_latency_ms=body).min_latency_ms
