"""Knapsack, unit selection and the CNN baselines against brute force."""
import itertools
import math
import random

import pytest

from depthcut.errors import InfeasibleBudgetError
from depthcut.search import brute
from depthcut.search.knapsack import depthshrinker, knapsack, layer_pruning, select_units
from depthcut.search.tables import Row


def _instance(rng, integer):
    n = rng.randint(0, 8)
    if integer:
        values = [float(rng.randint(-2, 6)) for _ in range(n)]
        costs = [float(rng.randint(0, 5)) for _ in range(n)]
    else:
        values = [rng.uniform(-1, 5) for _ in range(n)]
        costs = [rng.uniform(0, 5) for _ in range(n)]
    forced = set(rng.sample(range(n), rng.randint(0, min(2, n))))
    forbidden = set(rng.sample(sorted(set(range(n)) - forced), rng.randint(0, min(2, n - len(forced)))))
    free = n - len(forced) - len(forbidden)
    count = rng.choice([None, len(forced) + rng.randint(0, free)])
    return values, costs, forced, forbidden, count


def _call(values, costs, budget, steps, forced, forbidden, count):
    try:
        return knapsack(values, costs, budget, steps=steps, forced=forced, forbidden=forbidden, count=count)
    except InfeasibleBudgetError as e:
        return e


def test_knapsack_equals_brute_force_on_an_exact_grid():
    rng = random.Random(2)
    for _ in range(300):
        values, costs, forced, forbidden, count = _instance(rng, integer=True)
        budget = float(rng.randint(0, 20))
        steps = int(budget) * 3 if budget else 5      # P = 3: every ceil is exact
        got = _call(values, costs, budget, steps, forced, forbidden, count)
        want = brute.knapsack(values, costs, budget, forced, forbidden, count)
        if want is None:
            assert isinstance(got, InfeasibleBudgetError)
            continue
        assert not isinstance(got, Exception), (values, costs, budget, forced, forbidden, count)
        chosen, cost, value = got
        assert (value, cost) == (want[2], want[1])
        assert set(forced) <= set(chosen) and not set(forbidden) & set(chosen)
        assert count is None or len(chosen) == count
        assert cost == pytest.approx(sum(costs[i] for i in chosen))


def test_knapsack_is_conservative_and_matches_the_discretised_optimum():
    rng = random.Random(3)
    for _ in range(300):
        values, costs, forced, forbidden, count = _instance(rng, integer=False)
        budget = rng.uniform(0.5, 15)
        steps = rng.choice([3, 10, 50])
        got = _call(values, costs, budget, steps, forced, forbidden, count)
        exact = brute.knapsack(values, costs, budget, forced, forbidden, count)
        if exact is None:
            assert isinstance(got, InfeasibleBudgetError)
            assert got.minimum > budget
            continue
        chosen, cost, value = got
        assert cost <= budget and value <= exact[2] + 1e-12
        P = steps / budget
        disc = brute.knapsack(values, costs, steps, forced, forbidden, count, cost_fn=lambda c: math.ceil(c * P))
        if disc is not None:
            assert value >= disc[2] - 1e-12


def test_knapsack_infeasible_forced_states_minimum():
    with pytest.raises(InfeasibleBudgetError, match=r"minimum achievable latency is 7 ms") as e:
        knapsack([1.0, 1.0, 1.0], [3.0, 4.0, 1.0], 5.0, forced=[0, 1])
    assert e.value.minimum == 7.0
    with pytest.raises(InfeasibleBudgetError, match="budget 2 ms"):
        knapsack([1.0, 1.0, 1.0], [3.0, 4.0, 1.0], 2.0, count=2)


def _brute_select(importance, latency, budget, remove, protect):
    n, best = len(importance), None
    for k in range(n + 1):
        for removed in itertools.combinations(range(n), k):
            if set(removed) & set(protect) or (remove is not None and k != remove):
                continue
            kept = [u for u in range(n) if u not in removed]
            if budget is not None and sum(latency[u] for u in kept) > budget:
                continue
            key = (sum(importance[u] for u in removed), -sum(latency[u] for u in removed))
            if best is None or key < best[0]:
                best = (key, list(removed))
    return best


def test_select_units_equals_brute_force():
    rng = random.Random(4)
    for _ in range(200):
        n = rng.randint(1, 8)
        importance = [float(rng.randint(-1, 6)) for _ in range(n)]
        latency = [float(rng.randint(1, 4)) for _ in range(n)]
        protect = set(rng.sample(range(n), rng.randint(0, min(2, n))))
        mode = rng.choice(["budget", "remove", "both"])
        budget = float(rng.randint(0, int(sum(latency)))) if mode != "remove" else None
        remove = rng.randint(0, n - len(protect)) if mode != "budget" else None
        want = _brute_select(importance, latency, budget, remove, protect)
        try:
            got = select_units(importance, latency, budget_ms=budget, remove=remove, protect=protect,
                               steps=int(budget or 1) * 2)
        except InfeasibleBudgetError:
            assert want is None
            continue
        assert want is not None
        assert not set(got) & protect and (remove is None or len(got) == remove)
        if budget is not None:
            assert sum(latency[u] for u in range(n) if u not in got) <= budget
        assert (sum(importance[u] for u in got), -sum(latency[u] for u in got)) == want[0]


def test_select_units_by_count_removes_least_important():
    assert select_units([5.0, 1.0, 3.0, 0.5, 9.0], [1.0] * 5, remove=2) == [1, 3]
    assert select_units([5.0, 1.0, 3.0, 0.5, 9.0], [1.0] * 5, remove=2, protect=[3]) == [1, 2]
    with pytest.raises(ValueError, match="budget"):
        select_units([1.0], [1.0])


def test_layer_pruning_equals_brute_force():
    rng = random.Random(6)
    for _ in range(40):
        length = rng.randint(1, 7)
        rows = []
        for p in range(1, length + 1):
            rows.append(Row(p - 1, p, float(rng.randint(1, 5)), 1.0))
            if rng.random() < 0.6:   # reducible conv: identity option costs nothing, loses some importance
                rows.append(Row(p - 1, p, 0.0, float(rng.randint(-2, 1)) / 2, option=1))
        if length > 1:
            rows.append(Row(0, length, 0.5, 100.0))  # a merged block the baseline must ignore
        plans = brute.enumerate_plans([r for r in rows if r.end == r.start + 1], length)
        hi = max(p[1] for p in plans)
        frontier = layer_pruning(rows, length, steps=int(hi) * 2, max_latency_ms=hi)
        for budget in range(math.ceil(brute.min_latency(plans)), int(hi) + 1):
            got, want = frontier.best(budget), brute.best_plan(plans, budget)
            assert (got.importance, got.latency_ms) == (want[2], want[1])
            assert all(r.end == r.start + 1 for r in got.rows)


def test_depthshrinker_merges_least_important_useful_blocks():
    # Positions 0..6, two 3-conv blocks (0,3) and (3,6); singles cost 1 ms each.
    rows = [Row(p - 1, p, 1.0, 1.0) for p in range(1, 7)]
    rows += [Row(0, 3, 1.5, 2.0), Row(0, 3, 0.2, 0.0, option=1), Row(3, 6, 2.0, 2.5)]
    plan = depthshrinker(rows, 6, [(0, 3), (3, 6)], [0.9, 0.1], budget_ms=5.0)
    assert [r.block for r in plan.rows] == [(0, 1), (1, 2), (2, 3), (3, 6)]   # less important block first
    assert plan.latency_ms == 5.0
    plan = depthshrinker(rows, 6, [(0, 3), (3, 6)], {(0, 3): 0.9, (3, 6): 0.1}, budget_ms=3.5)
    assert [r.block for r in plan.rows] == [(0, 3), (3, 6)] and plan.latency_ms == 3.5   # option 0 row used
    assert depthshrinker(rows, 6, [(0, 3), (3, 6)], [0.9, 0.1], budget_ms=6.0).latency_ms == 6.0
    with pytest.raises(InfeasibleBudgetError, match="3.5 ms"):
        depthshrinker(rows, 6, [(0, 3), (3, 6)], [0.9, 0.1], budget_ms=3.0)
    slow = [Row(p - 1, p, 1.0, 1.0) for p in range(1, 7)] + [Row(0, 3, 4.0, 2.0), Row(3, 6, 2.0, 2.5)]
    # (0,3) merged is slower than apart: skipped even though it is the least important.
    plan = depthshrinker(slow, 6, [(0, 3), (3, 6)], [0.1, 0.9], budget_ms=5.0)
    assert [r.block for r in plan.rows][-1] == (3, 6)
