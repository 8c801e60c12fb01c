"""The two-stage DP of Kim et al. (ICML 2023), activation removal only (SPEC A8).

Stage 1 (latency only). Inside an activation-free segment (i, j) the network computes the same linear map
however its convs are merged, but merging everything is not always fastest (kernels grow). So

    T_opt(i, j) = min( T(i, j),  min_{i<m<j} T_opt(i, m) + T(m, j) )

over the valid blocks, remembering where the fastest version splits.

Stage 2 (importance under a budget). Segments (i, m) are valid blocks costing g_opt(i, m) = ceil(P * T_opt);
each end carries an activation state a (1 = activation kept). With the normalised importance
h = dacc - alpha * mean(dacc of single-layer blocks) and its extension

    I_ext(i, j, a, b) = max( h(i, j, a, b),  max_m I_ext(i, m, a, 0) + h(m, j, 0, b) )

the DP is  D[t, m, a] = max_{i<m, a'} D[t - g_opt(i, m), i, a'] + I_ext(i, m, a', a),  D[t, 0, 1] = 0,
answer max_a D[B, L, a]: either end state may win (MobileNetV2's body ends on a linear bottleneck, where
state 0 is the natural end). It runs on the LayerMerge engine with nodes (position, state); every segment
that reaches L goes to the one end node, its end state kept in the payload.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from depthcut.errors import InfeasibleBudgetError
from depthcut.search.layermerge import Frontier, Graph, Solution
from depthcut.search.tables import Row, check_rows

Key = tuple[int, int, int, int]          # (i, j, a_i, a_j)


def _latency_table(rows: Sequence[Row], length: int) -> dict[tuple[int, int], float]:
    check_rows(rows, length)
    table: dict[tuple[int, int], float] = {}
    for r in rows:
        if r.block in table:
            raise ValueError(f"two rows for block {r.block}: stage 1 takes one latency per block "
                             f"(pass only the full-kernel option of each block)")
        table[r.block] = float(r.latency_ms)
    return table


def stage1(rows: Sequence[Row], length: int) -> tuple[dict[tuple[int, int], float], dict[tuple[int, int], list[int]]]:
    """T_opt over the valid blocks (the rows) and, per block, the inner split positions of its fastest
    merge pattern ([] = merge everything into one conv). Ties keep the fewer, earlier splits."""
    table = _latency_table(rows, length)
    t_opt: dict[tuple[int, int], float] = {}
    split: dict[tuple[int, int], list[int]] = {}
    for (i, j) in sorted(table, key=lambda b: (b[1] - b[0], b[0])):   # shorter blocks first
        best, cut = table[(i, j)], []
        for m in range(i + 1, j):
            if (i, m) in t_opt and (m, j) in table:
                cand = t_opt[(i, m)] + table[(m, j)]
                if cand < best:
                    best, cut = cand, split[(i, m)] + [m]
        t_opt[(i, j)], split[(i, j)] = best, cut
    return t_opt, split


def expand(i: int, j: int, split: Mapping[tuple[int, int], list[int]]) -> list[tuple[int, int]]:
    """The conv-level blocks of segment (i, j) in its fastest merge pattern."""
    bounds = [i] + list(split[(i, j)]) + [j]
    return list(zip(bounds, bounds[1:]))


def min_body_latency(rows: Sequence[Row], length: int) -> tuple[float, list[int]]:
    """Fastest merge pattern of the whole body (all removable activations removed where it pays):
    shortest path 0 -> L over T_opt. Returns (ms, block boundaries including 0 and L)."""
    t_opt, split = stage1(rows, length)
    dist = {0: (0.0, -1)}
    for (i, j) in sorted(t_opt, key=lambda b: (b[1], b[0])):
        if i in dist:
            cand = dist[i][0] + t_opt[(i, j)]
            if j not in dist or cand < dist[j][0]:
                dist[j] = (cand, i)
    if length not in dist:
        raise InfeasibleBudgetError(f"the table admits no plan: no sequence of blocks reaches position {length}",
                                    minimum=math.inf)
    segments, j = [], length
    while j != 0:
        i = dist[j][1]
        segments.append((i, j))
        j = i
    bounds = [0]
    for (i, j) in reversed(segments):
        bounds += [b for _, b in expand(i, j, split)]
    return dist[length][0], bounds


# -- importance ---------------------------------------------------------------------------------------
def normalise_importance(delta_acc: Mapping[Key, float], alpha: float) -> dict[Key, float]:
    """h = dacc - alpha * mean(dacc over single-layer blocks, i.e. keys with j = i + 1)."""
    singles = [v for (i, j, _, _), v in delta_acc.items() if j == i + 1]
    mean = float(np.mean(singles)) if singles else 0.0
    return {k: float(v) - alpha * mean for k, v in delta_acc.items()}


def extend_importance(h: Mapping[Key, float], length: int) -> dict[Key, float]:
    """I_ext(i, j, a, b) = max(h(i, j, a, b), max_m I_ext(i, m, a, 0) + h(m, j, 0, b)) wherever finite."""
    into: dict[tuple[int, int], list[tuple[int, float]]] = {}     # (j, b) -> [(m, h(m, j, 0, b))]
    for (m, j, a, b), v in h.items():
        if a == 0:
            into.setdefault((j, b), []).append((m, v))
    ext: dict[Key, float] = {}
    for i in range(length):
        for a in (0, 1):
            for j in range(i + 1, length + 1):      # I_ext(i, m, a, 0) for m < j is final by now
                for b in (0, 1):
                    best = h.get((i, j, a, b), -math.inf)
                    for m, v in into.get((j, b), ()):
                        if m > i:
                            best = max(best, ext.get((i, m, a, 0), -math.inf) + v)
                    if best > -math.inf:
                        ext[(i, j, a, b)] = best
    return ext


@dataclass(frozen=True)
class Segment:
    """One stage-2 choice: activation-free segment (start, end) with activation states at its ends, run as
    the stage-1 fastest pattern ``blocks``."""

    start: int
    end: int
    a_start: int
    a_end: int
    latency_ms: float                 # T_opt(start, end)
    importance: float                 # I_ext(start, end, a_start, a_end)
    blocks: tuple[tuple[int, int], ...] = field(default=())


def conv_blocks(solution: Solution) -> list[tuple[int, int]]:
    """The conv-level blocks of a two-stage solution (what gets merged into one conv each)."""
    return [b for seg in solution.rows for b in seg.blocks]


def kept_activations(solution: Solution) -> list[int]:
    """Positions whose activation the plan keeps (state 1), position 0 included."""
    return [0] + [seg.end for seg in solution.rows if seg.a_end == 1]


def solve_two_stage(rows_latency: Sequence[Row], length: int,
                    importance: Mapping[Key, float] | Callable[[int, int, int, int], float | None],
                    budget_ms: float | None = None, steps: int = 2000, alpha: float | None = None,
                    max_latency_ms: float | None = None) -> Frontier:
    """Stage 1 on ``rows_latency`` then the stage-2 DP; returns a Frontier whose solutions list Segments.

    ``importance``: dict or callable over (i, j, a_i, a_j); for a callable it is queried on every valid
    block and state pair, None/NaN meaning "not measured". With ``alpha`` the values are taken as dacc and
    normalised (:func:`normalise_importance`); without it they are used as h directly. The discretisation
    range follows :func:`depthcut.search.layermerge.solve` (max_latency_ms, else budget_ms, else slowest plan).
    """
    t_opt, split = stage1(rows_latency, length)
    if callable(importance):
        raw = {}
        for (i, j) in t_opt:
            for a in (0, 1):
                for b in (0, 1):
                    v = importance(i, j, a, b)
                    if v is not None and not math.isnan(v):
                        raw[(i, j, a, b)] = float(v)
    else:
        raw = {k: float(v) for k, v in importance.items()}
    h = normalise_importance(raw, alpha) if alpha is not None else raw
    ext = extend_importance(h, length)

    src, dst, lat, imp, payload = [], [], [], [], []
    end = 2 * length + 1
    for (i, m), t in sorted(t_opt.items()):
        for a0 in (0, 1):
            for a1 in (0, 1):
                v = ext.get((i, m, a0, a1))
                if v is None:
                    continue
                src.append(2 * i + a0)
                dst.append(end if m == length else 2 * m + a1)     # both end states reach the answer
                lat.append(t)
                imp.append(v)
                payload.append(Segment(i, m, a0, a1, t, v, tuple(expand(i, m, split))))
    graph = Graph(n_nodes=2 * length + 2, start=1, end=end, src=np.array(src, dtype=np.int64),
                  dst=np.array(dst, dtype=np.int64), latency=np.array(lat, dtype=np.float64),
                  importance=np.array(imp, dtype=np.float64), payload=payload,
                  node_name=lambda v: f"position {v // 2} (activation {'kept' if v % 2 else 'removed'})")
    frontier = Frontier(graph, steps=steps, max_ms=max_latency_ms if max_latency_ms is not None else budget_ms)
    if budget_ms is not None:
        frontier.best(budget_ms)
    return frontier
