"""Search: which plan to build under a latency budget (pure numpy, no torch).

* :mod:`~depthcut.search.layermerge` - the LayerMerge DP (SPEC A7); one solve answers every budget.
* :mod:`~depthcut.search.twostage` - the activation-only two-stage DP (SPEC A8).
* :mod:`~depthcut.search.knapsack` - 0/1 knapsack, transformer unit selection (SPEC B3), CNN baselines (A9).
* :mod:`~depthcut.search.brute` - brute-force references for tests.
* :mod:`~depthcut.search.tables` - :class:`Row` and the latency-table reader.
"""
from depthcut.search.knapsack import depthshrinker, knapsack, layer_pruning, select_units
from depthcut.search.layermerge import Frontier, Solution, solve
from depthcut.search.tables import Row, load_kim23_csv
from depthcut.search.twostage import min_body_latency, solve_two_stage, stage1

__all__ = ["Row", "load_kim23_csv", "solve", "Frontier", "Solution", "stage1", "min_body_latency",
           "solve_two_stage", "knapsack", "select_units", "layer_pruning", "depthshrinker"]
