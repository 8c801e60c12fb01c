"""LayerMerge DP (SPEC A7) against brute force, conservative discretisation, infeasible budgets."""
import math
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from depthcut.errors import InfeasibleBudgetError
from depthcut.search import brute
from depthcut.search.layermerge import solve
from depthcut.search.tables import Row, load_kim23_csv

TABLES = Path(__file__).resolve().parents[1] / "data" / "kim23_latency_tables"   # see its README.md


def _step_sums(plans, frontier):
    P, steps = frontier.steps_per_ms, frontier.steps
    return [sum(brute.step_cost(r.latency_ms, P, steps) for r in p[0]) for p in plans]


def _brute_at(plans, sums, t):
    best = None
    for p, s in zip(plans, sums):
        if s <= t and (best is None or p[2] > best[2] or (p[2] == best[2] and p[1] < best[1])):
            best = p
    return best


@pytest.mark.parametrize("integer", [False, True])
def test_dp_equals_brute_force_at_every_step(integer):
    rng = random.Random(1234 + integer)
    for _ in range(25):
        length = rng.randint(1, 6)
        rows = brute.random_rows(rng, length, max_options=3, integer=integer)
        frontier = solve(rows, length, steps=rng.choice([7, 30, 60]))
        plans = brute.enumerate_plans(rows, length)
        sums = _step_sums(plans, frontier)
        for t in range(frontier.steps + 1):
            want, got = _brute_at(plans, sums, t), frontier.at_step(t)
            if want is None:
                assert got is None
                continue
            assert got is not None
            assert got.importance == want[2] and got.latency_ms == want[1]
            # The returned plan is a real partition whose sums are what it claims.
            assert got.boundaries[0] == 0 and got.boundaries[-1] == length
            assert all(a.end == b.start for a, b in zip(got.rows, got.rows[1:]))
            assert sum(brute.step_cost(r.latency_ms, frontier.steps_per_ms, frontier.steps)
                       for r in got.rows) <= t


def test_exact_grid_recovers_every_frontier_point_and_the_pareto_set():
    """Integer latencies with P an integer: discretisation is exact, so best(b) is the true optimum."""
    rng = random.Random(7)
    for _ in range(25):
        length = rng.randint(2, 6)
        rows = brute.random_rows(rng, length, integer=True)
        plans = brute.enumerate_plans(rows, length)
        slowest = max(p[1] for p in plans)
        frontier = solve(rows, length, steps=int(slowest) * 2, max_latency_ms=slowest)
        assert frontier.steps_per_ms == 2.0
        for budget in sorted({p[1] for p in plans}) + [slowest + 1.0]:
            want, got = brute.best_plan(plans, budget), frontier.best(budget)
            assert (got.importance, got.latency_ms) == (want[2], want[1])
        assert [(s.latency_ms, s.importance) for s in frontier.pareto()] == \
               [(p[1], p[2]) for p in brute.pareto(plans)]


def test_fine_steps_recover_float_optimum():
    rng = random.Random(11)
    for _ in range(20):
        length = rng.randint(2, 6)
        rows = brute.random_rows(rng, length)
        plans = brute.enumerate_plans(rows, length)
        frontier = solve(rows, length, steps=50_000)
        slack = length / frontier.steps_per_ms   # at most one ceil per block
        exact = brute.pareto(plans)
        for p, nxt in zip(exact, exact[1:] + [None]):
            if nxt is not None and nxt[1] <= p[1] + slack:
                continue   # two frontier points closer than the grid: not separable at this resolution
            got = frontier.best(min(p[1] + slack, frontier.max_ms))
            assert math.isclose(got.importance, p[2], rel_tol=0, abs_tol=1e-12)
            assert math.isclose(got.latency_ms, p[1], rel_tol=0, abs_tol=1e-12)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**9), length=st.integers(1, 6), steps=st.integers(1, 80),
       frac=st.floats(0.0, 1.2), scale=st.sampled_from([None, 0.5, 1.0]))
@example(seed=73, length=1, steps=1, frac=5e-324, scale=None)   # a subnormal budget (make test-latest drew it)
def test_conservative_never_exceeds_budget_and_is_near_optimal(seed, length, steps, frac, scale):
    rng = random.Random(seed)
    rows = brute.random_rows(rng, length)
    plans = brute.enumerate_plans(rows, length)
    lo, hi = brute.min_latency(plans), max(p[1] for p in plans)
    budget = lo + frac * (hi - lo)
    frontier = solve(rows, length, steps=steps, max_latency_ms=None if scale is None else scale * hi + lo)
    if budget > frontier.max_ms and brute.best_plan(plans, math.inf)[1] > budget:
        with pytest.raises(ValueError):
            frontier.best(budget)
        return
    got = frontier.best(budget)
    assert got.latency_ms <= budget
    assert got.latency_ms == pytest.approx(sum(r.latency_ms for r in got.rows), abs=1e-12)
    exact = brute.best_plan(plans, budget)
    assert got.importance <= exact[2] + 1e-12
    # Anything at least (#blocks)/P below the budget fits after rounding up, so the DP cannot do worse.
    P = frontier.steps_per_ms
    lower = (frontier.budget_steps(budget) - length) / P
    if lower >= lo:
        assert got.importance >= brute.best_plan(plans, lower)[2] - 1e-12


def test_ties_prefer_smaller_latency_and_identity_costs_nothing():
    rows = [Row(0, 1, 3.0, 1.0), Row(0, 1, 0.0, 1.0, option=1),    # identity ties with the conv
            Row(1, 2, 2.0, 1.0), Row(0, 2, 1.0, 2.0)]              # merged block ties with the pair
    frontier = solve(rows, 2, steps=10)
    best = frontier.best(5.0)
    assert best.importance == 2.0 and best.latency_ms == 1.0
    assert [(r.start, r.end) for r in best.rows] == [(0, 2)]
    assert frontier.best(1.0).latency_ms == 1.0
    zero = solve([Row(0, 1, 0.0, 0.5), Row(1, 2, 0.0, 0.25)], 2)
    assert zero.best(0.0).importance == 0.75


def test_budget_too_small_to_discretise_is_infeasible_not_an_index_error():
    # steps / 5e-324 overflows to inf; a 0 ms row would cost 0 * inf = NaN steps on that grid.
    rows = [Row(0, 1, 1.0, 0.9), Row(0, 1, 0.0, 0.2, option=1)]
    frontier = solve(rows, 1, steps=1)
    assert frontier.best(5e-324).latency_ms == 0.0           # the exact 0 ms plan answers it
    with pytest.raises(InfeasibleBudgetError, match="too small to discretise"):
        solve(rows, 1, budget_ms=5e-324, steps=1)


def test_infeasible_budget_states_minimum_and_budget():
    rng = random.Random(3)
    rows = brute.random_rows(rng, 5)
    lo = brute.min_latency(brute.enumerate_plans(rows, 5))
    frontier = solve(rows, 5)
    assert frontier.min_latency_ms == lo
    with pytest.raises(InfeasibleBudgetError) as e:
        frontier.best(lo * 0.5)
    assert e.value.minimum == lo
    assert f"{lo:.6g}" in str(e.value) and f"{lo * 0.5:.6g}" in str(e.value)
    with pytest.raises(InfeasibleBudgetError, match="minimum achievable latency"):
        solve(rows, 5, budget_ms=lo * 0.9)


def test_rows_without_any_plan_are_rejected():
    with pytest.raises(InfeasibleBudgetError, match="no plan"):
        solve([Row(0, 1, 1.0, 1.0), Row(2, 3, 1.0, 1.0)], 3)
    with pytest.raises(ValueError, match="not a block"):
        solve([Row(0, 4, 1.0, 1.0)], 3)


def test_real_mbv2_table_frontier_is_consistent():
    rows, length = load_kim23_csv(TABLES / "mbv2_1.0_time_fish_gpu1_1228.csv")
    rng = np.random.default_rng(0)
    # A plausible importance: merging hurts a bit more for longer blocks, noise on top.
    rows = [Row(r.start, r.end, r.latency_ms, math.exp(-0.01 * (r.end - r.start - 1) * rng.uniform(0.5, 2)),
                ref=r.ref) for r in rows]
    frontier = solve(rows, length, steps=2000)
    front = frontier.pareto()
    lats = [s.latency_ms for s in front]
    imps = [s.importance for s in front]
    assert lats == sorted(lats) and all(b > a for a, b in zip(imps, imps[1:]))
    assert front[0].latency_ms == pytest.approx(frontier.min_latency_ms)
    for budget in (15.0, 20.0, 25.0, 30.0):
        s = frontier.best(budget)
        assert s.latency_ms <= budget
        assert s.boundaries[0] == 0 and s.boundaries[-1] == length


def _dp_speed_table(seed: int):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "dp_speed", Path(__file__).resolve().parents[2] / "bench" / "dp_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.random_table(seed=seed), 50


@pytest.mark.parametrize("table", ["mbv2_kim23", "random400"])
def test_best_equals_a_fresh_budget_centred_solve(table):
    """Issue 9 §2: one solve over the whole range rounds rows up by up to one of *its* steps; best() re-solves
    centred on the budget, so it is never worse than a fresh solve there, and never over the budget."""
    if table == "mbv2_kim23":
        rows, length = load_kim23_csv(TABLES / "mbv2_1.0_time_fish_gpu1_1228.csv")
    else:
        rows, length = _dp_speed_table(seed=1)
    rng = random.Random(0)
    rows = [Row(r.start, r.end, r.latency_ms, 1.0 - 0.1 * (r.end - r.start - 1) - 0.05 * rng.random(),
                option=r.option) for r in rows]
    frontier = solve(rows, length, steps=2000)
    lo, hi = frontier.min_latency_ms, frontier.max_latency_ms
    budgets = [lo * (1 + 1e-4)] + [lo + (hi - lo) * (k + 0.5) / 59 for k in range(59)]
    coarse_lost = 0
    for b in budgets:
        got, fresh = frontier.best(b), solve(rows, length, budget_ms=b, steps=2000).best(b)
        assert got.latency_ms <= b
        assert round(got.importance, 9) >= round(fresh.importance, 9)
        coarse_lost += frontier.best(b, refine=False).importance < fresh.importance - 1e-9
    assert coarse_lost > 0     # the instance does exercise the refinement


def test_the_search_imports_no_torch():
    """The search is pure numpy (its package docstring says so): importing it, landing included, pulls no torch."""
    import subprocess
    import sys
    code = ("import sys, depthcut.search, depthcut.search.target; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
