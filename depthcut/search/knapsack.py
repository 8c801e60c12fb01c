"""0/1 knapsack over discretised latency, and the selection baselines built on it.

* :func:`knapsack` - 0/1 knapsack (optionally with an exact item count), exact on a conservative grid:
  costs are discretised as g = ceil(P * cost), P = steps / budget, so the chosen set's true cost never
  exceeds the budget. The price of the rounding: a set whose true cost lies within (its size) x
  budget/steps of the budget may not fit the grid and so be missed; every set with that much to spare is
  considered. Ties in value go to the smaller true cost.
* :func:`select_units` - the transformer side (SPEC B3): which units (blocks / sublayers) to *remove* so the
  kept latency fits a budget and/or exactly n units go, losing the least importance.
* :func:`layer_pruning` - CNN baseline (SPEC A9): remove whole reducible convs, keep every activation.
* :func:`depthshrinker` - CNN baseline (SPEC A9): merge the least important inverted-residual blocks whole.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

from depthcut.errors import InfeasibleBudgetError
from depthcut.search.layermerge import Frontier, Solution, solve
from depthcut.search.tables import Row


def knapsack(values: Sequence[float], costs_ms: Sequence[float], budget_ms: float | None, steps: int = 2000,
             forced: Iterable[int] = (), forbidden: Iterable[int] = (),
             count: int | None = None) -> tuple[tuple[int, ...], float, float]:
    """Choose items maximising the summed value with summed cost <= ``budget_ms`` (None = no budget).

    ``forced`` items are always chosen, ``forbidden`` never; ``count`` asks for exactly that many chosen
    items (forced ones included). Returns (chosen indices ascending, their true total cost, total value).
    Exact on the conservative grid (module docstring: a set may be missed only when its true cost is within
    (its size) x budget/steps of the budget); raises :class:`InfeasibleBudgetError` with the cheapest possible cost
    when nothing fits.
    """
    values_a, costs_a, forced, free, need = _checked(values, costs_ms, forced, forbidden, count)

    # Cheapest feasible choice, exactly: the forced items plus (for a count) the cheapest free ones.
    cheapest = tuple(sorted(forced + sorted(free, key=lambda i: costs_a[i])[:need or 0]))
    minimum = math.fsum(costs_a[list(cheapest)]) if cheapest else 0.0
    if budget_ms is not None and minimum > budget_ms:
        raise InfeasibleBudgetError(f"no selection meets the latency budget {budget_ms:.6g} ms: the minimum "
                                    f"achievable latency is {minimum:.6g} ms", minimum=minimum)

    if budget_ms is None:
        g, capacity = np.zeros(len(values_a), dtype=np.int64), 0     # no budget: only the count matters
    else:
        P = steps / budget_ms if budget_ms > 0 else 1.0
        g = np.ceil(costs_a * P).astype(np.int64)
        # floor(P * budget) is `steps` by definition; computing it in floats can give steps - 1.
        capacity = (steps if budget_ms > 0 else 0) - int(g[forced].sum())
    picked = _grid_dp(values_a, costs_a, g, free, need, capacity) if capacity >= 0 else None
    if picked is None:                  # fits truly, not after rounding up: the only safe pick
        return cheapest, _sum(costs_a, cheapest), _sum(values_a, cheapest)
    chosen = tuple(sorted(forced + picked))
    best = (chosen, _sum(costs_a, chosen), _sum(values_a, chosen))
    if budget_ms is not None and best[1] > budget_ms:
        best = (tuple(), math.inf, -math.inf)   # float rounding in ceil at the very edge: never overshoot
    if len(cheapest) or best[1] == math.inf:    # the exact cheapest pick may beat a coarse grid
        alt_v, alt_c = _sum(values_a, cheapest), _sum(costs_a, cheapest)
        if alt_v > best[2] or (alt_v == best[2] and alt_c < best[1]):
            best = (cheapest, alt_c, alt_v)
    return best


def _checked(values: Sequence[float], costs_ms: Sequence[float], forced: Iterable[int], forbidden: Iterable[int],
             count: int | None) -> tuple[np.ndarray, np.ndarray, list[int], list[int], int | None]:
    """The items as arrays, the forced ones, the free ones and how many free ones to pick (None: any)."""
    n = len(values)
    if len(costs_ms) != n:
        raise ValueError(f"{n} values but {len(costs_ms)} costs")
    values_a = np.asarray(values, dtype=np.float64)
    costs_a = np.asarray(costs_ms, dtype=np.float64)
    if np.any(~np.isfinite(values_a)) or np.any(~np.isfinite(costs_a)) or np.any(costs_a < 0):
        raise ValueError("values must be finite and costs finite and >= 0")
    forced, forbidden = sorted(set(forced)), set(forbidden)
    if set(forced) & forbidden:
        raise ValueError(f"items {sorted(set(forced) & forbidden)} are both forced and forbidden")
    if any(not 0 <= i < n for i in list(forced) + list(forbidden)):
        raise ValueError(f"forced/forbidden indices must lie in 0..{n - 1}")
    free = [i for i in range(n) if i not in forbidden and i not in set(forced)]
    need = None if count is None else count - len(forced)
    if need is not None and not 0 <= need <= len(free):
        raise ValueError(f"cannot choose exactly {count} of {n} items with {len(forced)} forced and "
                         f"{len(forbidden)} forbidden")
    return values_a, costs_a, forced, free, need


def _grid_dp(values: np.ndarray, costs: np.ndarray, g: np.ndarray, free: list[int], need: int | None,
             capacity: int) -> list[int] | None:
    """The free items of the best value within ``capacity`` grid steps (item i costs ``g[i]`` steps), exactly
    ``need`` of them when given; ties go to the lower true cost. None when no choice fits."""
    rows_c = 1 if need is None else need + 1             # dp over (items chosen, steps used)
    S = capacity + 1
    val = np.full((rows_c, S), -np.inf)
    lat = np.full((rows_c, S), np.inf)
    val[0], lat[0] = 0.0, 0.0
    take = np.zeros((len(free), rows_c, S), dtype=bool)
    for k, i in enumerate(free):
        gi = int(g[i])
        if gi > capacity:
            continue
        # Taking item i moves from count c-1 (or c, without a count) and t - gi to (c, t).
        src_v = val[:-1, : S - gi] if need is not None else val[:, : S - gi]
        src_l = lat[:-1, : S - gi] if need is not None else lat[:, : S - gi]
        cand_v, cand_l = src_v + values[i], src_l + costs[i]
        dst = (slice(1, None) if need is not None else slice(None), slice(gi, None))
        better = (cand_v > val[dst]) | ((cand_v == val[dst]) & (cand_l < lat[dst]))
        take[k][dst] = better
        val[dst] = np.where(better, cand_v, val[dst])
        lat[dst] = np.where(better, cand_l, lat[dst])
    c = rows_c - 1
    if val[c, capacity] == -np.inf:
        return None
    picked, t = [], capacity
    for k in range(len(free) - 1, -1, -1):
        if take[k, c, t]:
            picked.append(free[k])
            t -= int(g[free[k]])
            c -= 1 if need is not None else 0
    return picked


def _sum(a: np.ndarray, idx: Sequence[int]) -> float:
    return float(a[list(idx)].sum()) if len(idx) else 0.0


def select_units(importance: Sequence[float], latency_ms: Sequence[float], budget_ms: float | None = None,
                 remove: int | None = None, protect: Iterable[int] = (), steps: int = 2000) -> list[int]:
    """Units to REMOVE (ascending): the kept units' summed latency fits ``budget_ms`` and/or exactly
    ``remove`` units go, and the summed importance of the removed units is the smallest possible (ties: the
    larger latency saved). ``protect`` units are never removed (e.g. the first 4 and last 2 blocks).

    ``importance[u]`` is the damage of removing unit u (higher = keep); a unit with negative importance is
    removed whenever the constraints allow, since that *reduces* the damage.
    """
    if budget_ms is None and remove is None:
        raise ValueError("select_units needs a latency budget, a number of units to remove, or both")
    n = len(importance)
    count = None if remove is None else n - remove
    if remove is not None and not 0 <= remove <= n - len(set(protect)):
        raise ValueError(f"cannot remove {remove} of {n} units with {len(set(protect))} protected")
    kept, _, _ = knapsack(importance, latency_ms, budget_ms, steps=steps, forced=protect, count=count)
    return sorted(set(range(n)) - set(kept))


# -- CNN baselines --------------------------------------------------------------------------------------
def layer_pruning(rows: Sequence[Row], length: int, budget_ms: float | None = None, steps: int = 2000,
                  max_latency_ms: float | None = None) -> Frontier:
    """Layer-pruning baseline: keep every activation, remove whole convs.

    Only single-conv rows (end = start + 1) are used: per position the kept conv and, for reducible convs,
    its identity option (latency 0). Choosing one option per position under the budget is the 0/1 knapsack
    over reducible convs; it is solved exactly by the LayerMerge DP restricted to these rows. Returns the
    Frontier; ``.best(budget)`` gives the plan (identity rows = pruned convs).
    """
    singles = [r for r in rows if r.end == r.start + 1]
    missing = sorted(set(range(1, length + 1)) - {r.end for r in singles})
    if missing:
        raise ValueError(f"layer pruning needs a single-conv row at every position; missing {missing}")
    return solve(singles, length, budget_ms=budget_ms, steps=steps, max_latency_ms=max_latency_ms)


def depthshrinker_plans(rows: Sequence[Row], length: int, blocks: Sequence[tuple[int, int]],
                        block_importance: Sequence[float] | Mapping[tuple[int, int], float],
                        skip_slower: bool = True) -> list[Solution]:
    """DepthShrinker's sequence of plans: plan k merges the k least important useful blocks whole.

    ``blocks`` are disjoint (start, end) segments (one per inverted-residual block); ``block_importance``
    scores each (higher = keep its activations). Unmerged positions run their single-conv row, a merged
    block runs its (start, end) row; where several rows share a block, ``option == 0`` (all convs kept) is
    used. With ``skip_slower`` a block whose merged conv is not faster than its convs run apart is never
    merged (it could not help any budget). Latency decreases along the list.
    """
    def pick(block: tuple[int, int]) -> Row:
        cands = [r for r in rows if r.block == block]
        if not cands:
            raise ValueError(f"no row for block {block}")
        return min(cands, key=lambda r: (r.option != 0, r.option))

    if isinstance(block_importance, Mapping):
        scores = [float(block_importance[b]) for b in blocks]
    else:
        scores = [float(s) for s in block_importance]
    if len(scores) != len(blocks):
        raise ValueError(f"{len(blocks)} blocks but {len(scores)} importance scores")
    covered = [p for s, e in blocks for p in range(s + 1, e + 1)]
    if len(covered) != len(set(covered)) or any(not 0 <= s < e <= length for s, e in blocks):
        raise ValueError(f"blocks {list(blocks)} must be disjoint segments of positions 0..{length}")

    single = {p: pick((p - 1, p)) for p in range(1, length + 1)}
    merged = {b: pick(b) for b in blocks}

    def plan(chosen: set[tuple[int, int]]) -> Solution:
        out, p = [], 0
        starts = {s: (s, e) for s, e in chosen}
        while p < length:
            if p in starts:
                out.append(merged[starts[p]])
                p = starts[p][1]
            else:
                out.append(single[p + 1])
                p += 1
        lat = imp = 0.0
        for r in out:
            lat += r.latency_ms
            imp += r.importance
        return Solution(rows=out, latency_ms=lat, importance=imp)

    chosen: set[tuple[int, int]] = set()
    plans = [plan(chosen)]
    for k in sorted(range(len(blocks)), key=lambda k: (scores[k], k)):
        b = blocks[k]
        apart = math.fsum(single[p].latency_ms for p in range(b[0] + 1, b[1] + 1))
        if skip_slower and merged[b].latency_ms >= apart:
            continue
        chosen.add(b)
        plans.append(plan(chosen))
    return plans


def depthshrinker(rows: Sequence[Row], length: int, blocks: Sequence[tuple[int, int]],
                  block_importance: Sequence[float] | Mapping[tuple[int, int], float], budget_ms: float,
                  skip_slower: bool = True) -> Solution:
    """DepthShrinker-style baseline: merge whole inverted-residual blocks, least important first, until the
    summed latency is <= ``budget_ms`` (:func:`depthshrinker_plans`). Raises :class:`InfeasibleBudgetError` if
    merging every useful block is still too slow."""
    plans = depthshrinker_plans(rows, length, blocks, block_importance, skip_slower)
    for p in plans:
        if p.latency_ms <= budget_ms:
            return p
    raise InfeasibleBudgetError(f"no DepthShrinker plan meets the latency budget {budget_ms:.6g} ms: the minimum "
                                f"achievable latency (all useful blocks merged) is {plans[-1].latency_ms:.6g} ms",
                                minimum=plans[-1].latency_ms)
