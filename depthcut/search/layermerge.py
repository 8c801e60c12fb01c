"""The LayerMerge dynamic program (SPEC A7): best plan under a latency budget, every budget in one solve.

A plan is a path 0 -> L through positions whose edges are table rows (block ``start..end``, one kernel option);
it costs the sum of row latencies and earns the sum of row importances. Latency is discretised into integer
steps, P = steps / max_ms, and each row costs g = ceil(P * T) steps. The ceiling makes the discretisation
*conservative*: a plan that fits ``floor(P * budget)`` steps has a true summed latency <= budget (the anchors
use floor and can overshoot, SPEC A5).

    M[0, t] = 0 (t >= 0),  M[v, t] = -inf (t < 0)
    M[v, t] = max over edges (u -> v) of M[u, t - g] + I      ties -> smaller true accumulated latency

M[v, t] is the best importance of a path 0 -> v that costs at most t steps, so the last row M[L, 0..steps]
is the whole budget/importance frontier. The engine here is generic over a DAG whose node indices are a
topological order (edges go from a smaller to a larger index), so the two-stage DP reuses it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from depthcut.errors import InfeasibleBudgetError
from depthcut.search.tables import Row, check_rows


@dataclass
class Solution:
    """A plan: the chosen rows in chain order, their true summed latency and summed importance."""

    rows: list[Any]
    latency_ms: float
    importance: float

    @property
    def boundaries(self) -> list[int]:
        """Positions where blocks meet, 0 and L included."""
        return [self.rows[0].start] + [r.end for r in self.rows] if self.rows else []

    def key(self) -> tuple[float, float]:
        """Order used everywhere: more importance first, then less latency. Importance is compared rounded
        (9 decimals) so that two summation orders of the same plan's values do not pick the slower one."""
        return (round(self.importance, 9), -self.latency_ms)


@dataclass
class Graph:
    """A DAG with latency/importance on its edges; node indices must be a topological order."""

    n_nodes: int
    start: int
    end: int
    src: np.ndarray            # (E,) int
    dst: np.ndarray            # (E,) int
    latency: np.ndarray        # (E,) float ms
    importance: np.ndarray     # (E,) float
    payload: list[Any] = field(default_factory=list)   # what a Solution lists for each edge (e.g. the Row)
    node_name: Callable[[int], str] = lambda v: f"position {v}"   # for error messages

    @classmethod
    def from_rows(cls, rows: Sequence[Row], length: int) -> "Graph":
        check_rows(rows, length)
        return cls(n_nodes=length + 1, start=0, end=length,
                   src=np.array([r.start for r in rows], dtype=np.int64),
                   dst=np.array([r.end for r in rows], dtype=np.int64),
                   latency=np.array([r.latency_ms for r in rows], dtype=np.float64),
                   importance=np.array([r.importance for r in rows], dtype=np.float64),
                   payload=list(rows))


def exact_path(graph: Graph, objective: str) -> Solution | None:
    """Exact (undiscretised) best path start -> end, or None if the end cannot be reached.

    ``objective``: "min_latency" (ties -> more importance), "max_importance" (ties -> less latency) or
    "max_latency" (the slowest plan; used as the default discretisation range).
    """
    sign = {"min_latency": lambda lat, imp: (lat, -imp),
            "max_importance": lambda lat, imp: (-imp, lat),
            "max_latency": lambda lat, imp: (-lat, -imp)}[objective]
    best: dict[int, tuple[float, float, int]] = {graph.start: (0.0, 0.0, -1)}  # node -> (lat, imp, edge)
    src, dst = graph.src.tolist(), graph.dst.tolist()
    latency, importance = graph.latency.tolist(), graph.importance.tolist()
    for e in np.argsort(graph.dst, kind="stable").tolist():
        u, v = src[e], dst[e]
        if u not in best:
            continue
        lat, imp = best[u][0] + latency[e], best[u][1] + importance[e]
        if v not in best or sign(lat, imp) < sign(best[v][0], best[v][1]):
            best[v] = (lat, imp, e)
    if graph.end not in best:
        return None
    return _walk(graph, lambda v: best[v][2] if v != graph.start else -1, graph.end)


def _walk(graph: Graph, edge_into, v: int) -> Solution:
    """Follow back-pointers from v to the start; sum latency/importance left to right (as the DP did)."""
    src, latency, importance = graph.src.tolist(), graph.latency.tolist(), graph.importance.tolist()
    edges = []
    while v != graph.start:
        e = edge_into(v)
        edges.append(e)
        v = src[e]
    edges.reverse()
    lat = imp = 0.0
    for e in edges:
        lat += latency[e]
        imp += importance[e]
    return Solution(rows=[graph.payload[e] for e in edges], latency_ms=lat, importance=imp)


class Frontier:
    """The solved table M[L, 0..steps]: answers any budget <= ``max_ms`` and gives the Pareto frontier."""

    def __init__(self, graph: Graph, steps: int = 2000, max_ms: float | None = None):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.graph = graph
        self.min_solution = exact_path(graph, "min_latency")
        if self.min_solution is None:
            raise InfeasibleBudgetError(
                f"the table admits no plan: no sequence of blocks reaches {graph.node_name(graph.end)} "
                f"from {graph.node_name(graph.start)}", minimum=math.inf)
        self.top_solution = exact_path(graph, "max_importance")    # best plan ignoring the budget
        self.max_latency_ms = exact_path(graph, "max_latency").latency_ms
        if max_ms is None:
            max_ms = self.max_latency_ms
        if not max_ms > 0.0:
            max_ms = 1.0   # every plan costs 0 ms; any scale works
        self._grid(steps, max_ms)
        self._refined: dict[float, Frontier] = {}

    def _grid(self, steps: int, max_ms: float) -> None:
        steps_per_ms = int(steps) / float(max_ms)
        if not math.isfinite(steps_per_ms):
            # A range so small (a subnormal budget) that steps / range overflows: 0 ms rows would cost
            # 0 * inf = NaN steps. No grid can resolve it; the exact paths still answer such a budget.
            raise InfeasibleBudgetError(
                f"the latency range {max_ms:.6g} ms is too small to discretise into {steps} steps",
                minimum=self.min_solution.latency_ms)
        self.steps, self.max_ms, self.steps_per_ms = int(steps), float(max_ms), steps_per_ms
        self._solve()

    def _centred_on(self, budget_ms: float) -> "Frontier":
        """The same DP on a grid whose range ends at ``budget_ms``: the finest resolution where it matters.
        Shares the exact paths; cached per budget (the tighten-and-re-solve loop asks the same budget twice)."""
        if budget_ms not in self._refined:
            fresh = object.__new__(Frontier)
            fresh.graph, fresh.min_solution, fresh.top_solution = self.graph, self.min_solution, self.top_solution
            fresh.max_latency_ms, fresh._refined = self.max_latency_ms, {}
            fresh._grid(self.steps, budget_ms)
            if len(self._refined) >= 16:
                self._refined.pop(next(iter(self._refined)))
            self._refined[budget_ms] = fresh
        return self._refined[budget_ms]

    # -- the DP -----------------------------------------------------------------------------------
    def _solve(self) -> None:
        g, S = self.graph, self.steps + 1
        # Conservative: ceil. Rows slower than the whole range are clipped to S (never fit any column).
        self.cost = np.minimum(np.ceil(g.latency * self.steps_per_ms), S).astype(np.int64)
        pad = S   # columns [0, pad) hold "t < 0" (= -inf), so M[u, t - cost] is one gather
        M = np.full((g.n_nodes, pad + S), -np.inf)
        LAT = np.full((g.n_nodes, pad + S), np.inf)
        M[g.start, pad:] = 0.0
        LAT[g.start, pad:] = 0.0
        back = np.full((g.n_nodes, S), -1, dtype=np.int64)
        t = np.arange(S)
        # win_x[u, s] is the view x[u, s : s + S]; reading M[u, t - cost] for all t is win_M[u, pad - cost],
        # so a whole group of edges is one gather of contiguous rows.
        win_M = np.lib.stride_tricks.sliding_window_view(M, S, axis=1)
        win_L = np.lib.stride_tricks.sliding_window_view(LAT, S, axis=1)
        order = np.argsort(g.dst, kind="stable")
        dst_sorted = g.dst[order]
        cuts = np.flatnonzero(np.diff(dst_sorted)) + 1
        for edges in np.split(order, cuts):
            if edges.size == 0:
                continue
            v = int(g.dst[edges[0]])
            if np.any(g.src[edges] >= v):
                raise ValueError("graph nodes are not in topological order (an edge does not go forward)")
            shift = pad - self.cost[edges]
            src = g.src[edges]
            cand_imp = win_M[src, shift] + g.importance[edges][:, None]
            cand_lat = win_L[src, shift] + g.latency[edges][:, None]
            best = cand_imp.max(axis=0)
            # Ties in importance -> the smaller true latency.
            cand_lat = np.where(cand_imp == best, cand_lat, np.inf)
            k = cand_lat.argmin(axis=0)
            M[v, pad:] = best
            LAT[v, pad:] = cand_lat[k, t]
            back[v] = np.where(best > -np.inf, edges[k], -1)
        self.importance_at = M[g.end, pad:].copy()     # best importance with at most t steps
        self.latency_at = LAT[g.end, pad:].copy()      # its true latency
        self._back = back
        self._back_list = None

    # -- answers ----------------------------------------------------------------------------------
    def at_step(self, t: int) -> Solution | None:
        """The DP's own answer for a budget of ``t`` discretised steps (None if nothing fits)."""
        t = int(t)
        if not 0 <= t <= self.steps or self.importance_at[t] == -np.inf:
            return None
        g = self.graph
        if self._back_list is None:     # python lists: reconstruction is many scalar reads
            self._back_list, self._cost_list = self._back.tolist(), self.cost.tolist()
        back, cost = self._back_list, self._cost_list
        col = t

        def edge_into(v: int) -> int:
            nonlocal col
            e = back[v][col]
            col -= cost[e]
            return e

        return _walk(g, edge_into, g.end)

    def budget_steps(self, budget_ms: float) -> int:
        """floor(P * budget): the largest step count whose plans surely fit the budget. A hair of slack
        absorbs float error (P * max_ms can come out as steps - 1e-13); ``best`` re-checks true latency."""
        return min(self.steps, int(math.floor(budget_ms * self.steps_per_ms * (1 + 1e-12))))

    @property
    def min_latency_ms(self) -> float:
        return self.min_solution.latency_ms

    def best(self, budget_ms: float, refine: bool = True) -> Solution:
        """Most important plan whose true summed latency is <= ``budget_ms`` (ties -> less latency).

        One solve over the whole range rounds every row up by up to one step, so its answer can give away
        importance at a budget between grid points (more so with many blocks). With ``refine`` (the default)
        the DP is solved again on a grid centred on the budget (range 0..budget, same number of steps) and the
        better answer is returned: never worse than a fresh budget-centred solve, never over the budget. Both
        are exact on their conservative grids; besides them it considers the exact minimum-latency plan and
        the exact unconstrained optimum, so it never does worse than either when they fit.
        """
        budget_ms = float(budget_ms)
        if math.isnan(budget_ms) or budget_ms < self.min_latency_ms:
            raise InfeasibleBudgetError(
                f"no plan meets the latency budget {budget_ms:.6g} ms: the minimum achievable latency is "
                f"{self.min_latency_ms:.6g} ms", minimum=self.min_latency_ms)
        if self.top_solution.latency_ms <= budget_ms:
            return self.top_solution
        if budget_ms > self.max_ms * (1 + 1e-12):
            raise ValueError(f"budget {budget_ms:.6g} ms exceeds the range this frontier was solved for "
                             f"({self.max_ms:.6g} ms); solve again with a larger max_latency_ms")
        found = [self.min_solution, self._grid_answer(budget_ms)]
        if refine and 0.0 < budget_ms < self.max_ms * (1 - 1e-9) and math.isfinite(self.steps / budget_ms):
            found.append(self._centred_on(budget_ms)._grid_answer(budget_ms))
        return max((s for s in found if s is not None), key=Solution.key)

    def _grid_answer(self, budget_ms: float) -> Solution | None:
        """The DP's answer at floor(P * budget) steps, None if nothing fits on this grid."""
        t = self.budget_steps(budget_ms)
        while t >= 0:
            # Floor/ceil guarantee the fit mathematically; the loop only guards float rounding at the edge.
            if self.importance_at[t] > -np.inf and self.latency_at[t] <= budget_ms:
                return self.at_step(t)
            t -= 1
        return None

    def pareto(self) -> list[Solution]:
        """Plans found by the solve with latency increasing and importance strictly increasing."""
        exact = (self.min_solution, self.top_solution)
        ok = np.flatnonzero(self.importance_at > -np.inf)
        lat = np.concatenate([self.latency_at[ok], [s.latency_ms for s in exact]])
        imp = np.concatenate([self.importance_at[ok], [s.importance for s in exact]])
        ids = np.concatenate([ok, [-1, -2]])            # -1 - k: the k-th exact solution
        order = np.lexsort((-imp, lat))                 # latency increasing, then importance decreasing
        imp_sorted = imp[order]
        before = np.concatenate([[-np.inf], np.maximum.accumulate(imp_sorted)[:-1]])
        keep = order[imp_sorted > before]               # strictly better than everything faster
        return [self.at_step(int(ids[k])) if ids[k] >= 0 else exact[-1 - int(ids[k])] for k in keep]


def solve(rows: Sequence[Row], length: int, budget_ms: float | None = None, steps: int = 2000,
          max_latency_ms: float | None = None) -> Frontier:
    """Solve the LayerMerge DP once over ``rows`` (blocks of positions 0..length).

    The discretisation range is ``max_latency_ms`` if given, else ``budget_ms`` (finest resolution at the
    budget you care about), else the slowest plan's latency (then every budget is answerable).
    With ``budget_ms`` an infeasible budget raises :class:`InfeasibleBudgetError` right away.
    Use ``Frontier.best(budget)`` and ``Frontier.pareto()`` on the result.
    """
    graph = Graph.from_rows(rows, length)
    max_ms = max_latency_ms if max_latency_ms is not None else budget_ms
    frontier = Frontier(graph, steps=steps, max_ms=max_ms)
    if budget_ms is not None:
        frontier.best(budget_ms)   # fail early, with the minimum in the message
    return frontier
