"""Depth-compression methods, found through a registry; every one runs through the same ``compress`` stages
(issue 9 §4): the same analysis, latency rows, importance table, landing on the measured target, verification,
recovery and report. A method decides only two things:

* which candidates it may use (a filter over the analysis's (block, kernel option) rows), and
* how it searches them for a latency budget (``search(rows, length, steps, full_ms)`` returning an object
  with ``best(budget)``, ``min_latency_ms`` and ``pareto()``, like :class:`depthcut.search.layermerge.Frontier`).

Registered (SPEC A9; compare them at equal *measured* latency):

  layermerge     remove activations and convs jointly, merge each run: the LayerMerge DP over every row.
  layermerge-damage
                 the same rows and DP, maximising the summed accuracy change (Σ log I) instead of Σ I.
  two-stage      activations only (Kim et al., ICML 2023): every conv is kept; a block's activations are
                 removed by merging it whole. The DP over the all-kept rows. (The ICML 2023 stage 1 may also
                 leave a linear run unmerged when merging is slower; a merged run is the only form depthcut
                 deploys, so that pattern is not offered here.)
  layer-pruning  layers only: remove whole layers (conv + BN + activation), merge nothing: the DP over the
                 rows that keep exactly one conv (a 0/1 knapsack over layers). A layer that changes the
                 channels or the stride cannot go alone; depthcut has no "residual branch removed" rewrite
                 yet, so whole inverted residuals are not removed.
  depthshrinker  DepthShrinker-style: merge whole natural blocks (residual / inverted-residual blocks), the
                 least important first, until the budget is met.
  channel        width instead of depth: Torch-Pruning's L1 channel pruning, the ratio found so that the
                 measured latency lands on the target (depthcut.cnn.channels). It rewrites the model instead
                 of choosing a depth plan (``kind = "model"``): no latency table, importance table or plan.
  layermerge+channel
                 depth and width together (depthcut.joint): a few channel plans, the LayerMerge DP at each
                 width over rows timed at that width, one importance table; the width whose best depth plan
                 is predicted most accurate at the target is landed, verified, recovered.

    @register_method
    class MyMethod(Method): name = "my-method"; ...
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from .cnn.chain import Candidate, Chain
from .errors import InfeasibleBudgetError
from .registry import get_method, method_names, register_method  # noqa: F401 - the registry, re-exported

def _all_kept(c: Candidate) -> bool:
    return tuple(c.kept) == tuple(range(c.start + 1, c.end + 1))


def _single(c: Candidate) -> bool:
    return c.end == c.start + 1


class Method:
    name = "?"
    summary = ""
    kind = "plan"        # "plan": a depth plan over the candidates; "model": rewrites the model itself
    # the search returns the optimum of its scores (the adaptive importance's branch and bound relies on it)
    exact_search = True
    searchable = True    # matching at equal latency may choose its other plans near its landing (plan_search)

    def uses(self, candidate: Candidate, chain: Chain) -> bool:
        return True

    def candidates(self, candidates: Sequence[Candidate], chain: Chain) -> list[Candidate]:
        """The rows this method may use; always contains every original conv as its own block."""
        return [c for c in candidates if self.uses(c, chain) or (_single(c) and _all_kept(c))]

    def search(self, rows, length: int, steps: int, full_ms: float, chain: Chain | None = None):
        from .search.layermerge import solve

        return solve(rows, length, steps=steps, max_latency_ms=full_ms)

    def plan_search(self, compression):
        """This method's plans at any budget around its landing, for matching methods at equal measured
        latency (depthcut.matching); None: its landed network is its only candidate."""
        from .matching import DepthPlans

        return DepthPlans(compression) if self.searchable else None

    def recover_landed(self, compression, report: dict) -> float:
        """Test accuracy of this method's network landed in another run (``report``), rebuilt and recovered with
        ``compression``'s recipe: how a comparison's later seeds recover a method with no plan search."""
        raise NotImplementedError(f"{self.name} cannot rebuild a landed network from its report")

    def compress(self, compression, out=None):
        """Run ``compression``'s stages (depthcut.compression.Compression) and write the result to ``out``.
        With ``config.shard`` only that shard of the importance table is computed (machines sharing a
        cache), then it stops."""
        from .compression import score_shard

        if compression.config.shard:
            return score_shard(compression, out)
        result = compression.result()
        if out is not None:
            result.save_pretrained(out)
        return result


@register_method
class LayerMerge(Method):
    name = "layermerge"
    summary = "remove activations and convs jointly, merge each run (LayerMerge, ICML 2024)"


@register_method
class LayerMergeDamage(Method):
    """LayerMerge's rows and DP, maximising the summed accuracy change instead of Σ I. With I = exp(Δacc / 100)
    every block adds about 1 to Σ I, so one more block outweighs 100 points of summed damage: on MobileNetV2 the
    DP removed a depthwise conv to keep one more block (docs/benchmarks.md). Σ log I = Σ Δacc / 100 counts the
    damage alone (bench/objective_check.py)."""

    name = "layermerge-damage"
    summary = "the LayerMerge DP maximising the summed accuracy change (sum of log I) instead of the sum of I"
    exact_search = False         # its scores are log I: the adaptive importance's bounds are on I

    def search(self, rows, length: int, steps: int, full_ms: float, chain: Chain | None = None):
        from dataclasses import replace

        from .search.layermerge import solve

        return solve([replace(r, importance=math.log(r.importance)) for r in rows], length, steps=steps,
                     max_latency_ms=full_ms)


@register_method
class TwoStage(Method):
    name = "two-stage"
    summary = "remove activations only, merging each activation-free run (Kim et al., ICML 2023)"

    def uses(self, candidate, chain):
        return _all_kept(candidate)


@register_method
class LayerPruning(Method):
    name = "layer-pruning"
    summary = "remove whole layers (conv + BN + activation), merge nothing"

    def uses(self, candidate, chain):
        # one conv kept: the block's other layers (conv + BN + activation) are removed, nothing is merged
        return len(candidate.kept) == 1


def natural_blocks(chain: Chain) -> list[tuple[int, int]]:
    """The network's own building blocks as chain segments: cut at every residual add's start and end, at
    every position without an activation (an inverted residual's linear bottleneck) and at barriers. Only
    segments of two or more convs (something to merge) are returned."""
    cuts = {0, chain.length} | set(chain.barriers)
    for s in chain.skips:
        cuts |= {s.start, s.end}
    cuts |= {p for p in range(1, chain.length) if chain.acts[p] is None}
    ordered = sorted(cuts)
    return [(a, b) for a, b in zip(ordered, ordered[1:]) if b - a >= 2]


@dataclass
class GreedyFrontier:
    """DepthShrinker's search as a frontier: plans merge the natural blocks in increasing importance; the
    k-th plan merges the first k useful ones."""

    plans: list[Any]                  # Solutions, latency decreasing

    @property
    def min_latency_ms(self) -> float:
        return min(p.latency_ms for p in self.plans)

    def best(self, budget_ms: float):
        fits = [p for p in self.plans if p.latency_ms <= budget_ms]
        if not fits:
            raise InfeasibleBudgetError(
                f"no DepthShrinker plan meets the latency budget {budget_ms:.6g} ms: the minimum achievable "
                f"latency is {self.min_latency_ms:.6g} ms", minimum=self.min_latency_ms)
        return fits[0]                # the first that fits merged the fewest blocks: the most important

    def pareto(self):
        return sorted(self.plans, key=lambda p: p.latency_ms)


@register_method
class DepthShrinker(Method):
    name = "depthshrinker"
    summary = "merge whole residual / inverted-residual blocks, least important first (DepthShrinker-style)"
    exact_search = False

    def uses(self, candidate, chain):
        return _all_kept(candidate) and (candidate.start, candidate.end) in set(natural_blocks(chain))

    def search(self, rows, length, steps, full_ms, chain=None):
        from .search.knapsack import depthshrinker_plans

        if chain is None:
            raise ValueError("depthshrinker needs the chain to find its blocks")
        present = {r.block for r in rows}
        blocks = [b for b in natural_blocks(chain) if b in present]
        importance = {r.block: r.importance for r in rows if r.block in set(blocks)}
        return GreedyFrontier(depthshrinker_plans(rows, length, blocks, importance))


@register_method
class Channel(Method):
    name = "channel"
    summary = "prune channels (Torch-Pruning, L1; global and uniform plans) until the measured latency meets the target"
    kind = "model"

    def plan_search(self, compression):
        from .matching import WidthPlans

        return WidthPlans(compression)

    def compress(self, compression, out=None):
        """No depth plan: the same inputs, landing on the measured target, recovery, final timing and report,
        over channel-pruning plans (depthcut.cnn.channels)."""
        from .compression import compress_width

        return compress_width(compression, out)


@register_method
class LayerMergeChannel(Method):
    name = "layermerge+channel"
    summary = ("depth and width together: the LayerMerge DP at each of a few channel widths, the width predicted "
               "most accurate at the target landed (depthcut.joint)")
    kind = "model"
    searchable = False               # its landed network is its only candidate

    def recover_landed(self, compression, report: dict) -> float:
        from .joint import recover_landed

        return recover_landed(compression, report)

    def compress(self, compression, out=None):
        from .joint import compress_joint

        return compress_joint(compression, out)
