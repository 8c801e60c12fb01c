"""Brute-force references for small instances: every plan / subset enumerated, no cleverness.

Sums are taken left to right in chain order, exactly as the DPs accumulate them, so float results compare
bit-for-bit where the optimum is unique.
"""
from __future__ import annotations

import itertools
import math
import random
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from depthcut.search.tables import Row

Plan = tuple[tuple[Row, ...], float, float]        # (rows, latency_ms, importance)


def partitions(rows: Sequence[Row], length: int) -> Iterator[tuple[Row, ...]]:
    """Every sequence of rows that partitions 0..length (one option per block)."""
    by_start: dict[int, list[Row]] = {}
    for r in rows:
        by_start.setdefault(r.start, []).append(r)

    def extend(pos: int, prefix: tuple[Row, ...]) -> Iterator[tuple[Row, ...]]:
        if pos == length:
            yield prefix
            return
        for r in by_start.get(pos, ()):
            yield from extend(r.end, prefix + (r,))

    yield from extend(0, ())


def partitions_by_subsets(rows: Sequence[Row], length: int) -> Iterator[tuple[Row, ...]]:
    """Same plans as :func:`partitions` for one-row-per-block tables, found the dumbest way: all 2^(L-1)
    subsets of inner positions, kept when every block between consecutive boundaries is a row."""
    table = {(r.start, r.end): r for r in rows}
    for mask in range(1 << (length - 1)):
        bounds = [0] + [p for p in range(1, length) if mask >> (p - 1) & 1] + [length]
        blocks = [table.get((a, b)) for a, b in zip(bounds, bounds[1:])]
        if all(b is not None for b in blocks):
            yield tuple(blocks)


def score(plan_rows: Iterable[Row]) -> Plan:
    plan_rows = tuple(plan_rows)
    lat = imp = 0.0
    for r in plan_rows:
        lat += r.latency_ms
        imp += r.importance
    return plan_rows, lat, imp


def enumerate_plans(rows: Sequence[Row], length: int) -> list[Plan]:
    return [score(p) for p in partitions(rows, length)]


def _better(a: tuple[float, float], b: tuple[float, float] | None) -> bool:
    """(importance, latency): more importance, then less latency."""
    return b is None or a[0] > b[0] or (a[0] == b[0] and a[1] < b[1])


def best_under(plans: Sequence[Plan], fits: Callable[[Plan], bool]) -> Plan | None:
    best = None
    for p in plans:
        if fits(p) and (best is None or _better((p[2], p[1]), (best[2], best[1]))):
            best = p
    return best


def best_plan(plans: Sequence[Plan], budget_ms: float) -> Plan | None:
    """Exact optimum under a true-latency budget."""
    return best_under(plans, lambda p: p[1] <= budget_ms)


def step_cost(latency_ms: float, steps_per_ms: float, steps: int) -> int:
    """Same conservative discretisation as the DP: ceil(P * T), clipped to steps + 1."""
    return min(int(math.ceil(latency_ms * steps_per_ms)), steps + 1)


def pareto(plans: Sequence[Plan]) -> list[Plan]:
    """Exact frontier: latency increasing, importance strictly increasing."""
    out: list[Plan] = []
    for p in sorted(plans, key=lambda p: (p[1], -p[2])):
        if not out or p[2] > out[-1][2]:
            out.append(p)
    return out


def min_latency(plans: Sequence[Plan]) -> float:
    return min(p[1] for p in plans)


# -- knapsack -----------------------------------------------------------------------------------------
def knapsack(values: Sequence[float], costs: Sequence[float], budget: float, forced: Iterable[int] = (),
             forbidden: Iterable[int] = (), count: int | None = None,
             cost_fn: Callable[[float], float] | None = None) -> tuple[tuple[int, ...], float, float] | None:
    """Best subset (max value, then min cost) with sum cost_fn(cost) <= budget; None if none fits."""
    forced, forbidden = set(forced), set(forbidden)
    free = [i for i in range(len(values)) if i not in forced and i not in forbidden]
    cost_fn = cost_fn or (lambda c: c)
    best = None
    for k in range(len(free) + 1):
        for extra in itertools.combinations(free, k):
            chosen = tuple(sorted(forced | set(extra)))
            if count is not None and len(chosen) != count:
                continue
            if sum(cost_fn(costs[i]) for i in chosen) > budget:
                continue
            val, cost = 0.0, 0.0
            for i in chosen:
                val += values[i]
                cost += costs[i]
            if best is None or _better((val, cost), (best[2], best[1])):
                best = (chosen, cost, val)
    return best


# -- two-stage ----------------------------------------------------------------------------------------
def extend_importance(h: Mapping[tuple[int, int, int, int], float], i: int, j: int, a: int, b: int) -> float:
    """max over chains i = m0 < m1 < ... < mk = j of h(m0,m1,a,0) + h(m1,m2,0,0) + ... + h(m_{k-1},mk,0,b)."""
    best = -math.inf

    def walk(pos: int, state: int, acc: float) -> None:
        nonlocal best
        for m in range(pos + 1, j + 1):
            end_state = b if m == j else 0
            v = h.get((pos, m, state, end_state))
            if v is None:
                continue
            if m == j:
                best = max(best, acc + v)
            else:
                walk(m, 0, acc + v)

    walk(i, a, 0.0)
    return best


def two_stage(t_opt: Mapping[tuple[int, int], float], i_ext: Mapping[tuple[int, int, int, int], float],
              length: int, cost: Callable[[float], int], t: int) -> tuple[float, float, tuple] | None:
    """Stage-2 optimum by enumeration: segments (i, m) of t_opt with activation states at their ends
    (state 1 at 0, either state at L), sum cost(T_opt) <= t; returns (importance, latency, segments)."""
    best = None

    def walk(pos: int, state: int, steps: int, lat: float, imp: float, segs: tuple) -> None:
        nonlocal best
        if pos == length:
            if best is None or _better((imp, lat), (best[0], best[1])):
                best = (imp, lat, segs)
            return
        for m in range(pos + 1, length + 1):
            if (pos, m) not in t_opt:
                continue
            g = cost(t_opt[(pos, m)])
            if steps + g > t:
                continue
            for b in (0, 1):
                v = i_ext.get((pos, m, state, b), -math.inf)
                if v == -math.inf:
                    continue
                walk(m, b, steps + g, lat + t_opt[(pos, m)], imp + v, segs + ((pos, m, state, b),))

    walk(0, 1, 0, 0.0, 0.0, ())
    return best


# -- random instances ---------------------------------------------------------------------------------
def random_rows(rng: random.Random, length: int, keep_block: float = 0.6, max_span: int | None = None,
                max_options: int = 3, identity: float = 0.2, integer: bool = False,
                max_latency: int = 9) -> list[Row]:
    """A random table over positions 0..length: every single-conv block present (so a plan exists), longer
    blocks present with probability ``keep_block``, 1..max_options options per block, some identity options
    (latency 0). ``integer=True`` draws small integer latencies and importances (many exact ties)."""
    rows: list[Row] = []
    max_span = max_span or length
    for i in range(length):
        for j in range(i + 1, min(length, i + max_span) + 1):
            if j > i + 1 and rng.random() > keep_block:
                continue
            for k in range(rng.randint(1, max_options)):
                if integer:
                    lat, imp = float(rng.randint(0 if k else 1, max_latency)), float(rng.randint(-2, 5))
                else:
                    lat, imp = rng.uniform(0.1, max_latency), rng.uniform(-1.0, 3.0)
                if k > 0 and rng.random() < identity:
                    lat = 0.0
                rows.append(Row(i, j, lat, imp, option=k))
    return rows
