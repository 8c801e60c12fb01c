"""Channel pruning, the width baseline of LayerMerge's comparison (SPEC A9), with Torch-Pruning.

``prune_channels(model, example, ratio, scope)`` removes the ``ratio`` fraction of channels by L1 magnitude
(Torch-Pruning's dependency graph keeps residual-coupled layers consistent); the classifier's outputs are never
pruned. ``scope="uniform"`` takes the same fraction from every layer; ``"global"`` ranks channels across the
network (the weakest anywhere go first, no layer losing more than MAX_RATIO).

:class:`ChannelFrontier` turns it into what the landing stage needs: a budget in MACs gives the least pruning
whose MACs fit it, so the same calibrate-and-probe loop lands it on the measured target. It draws on both
families: a uniform ratio moves MACs in coarse steps (embedded ResNet-20: 16 levels, nothing between 17.8M and
11.6M MACs, and the landing delivered x1.57 and x1.73 for a x1.25 target), the global ranking has 70 levels
but other gaps (at x2.0 it overshot to x2.69), and measured latency on a real runtime is a step function of
the channel counts, so the landing needs every distinct plan near its target.

A plan is fully described by its *channel counts*: the channels each prunable group keeps (a group: the layers
Torch-Pruning's dependency graph couples, named by its root module), the strongest by L1 magnitude - what both
families keep within a group. ``prune_to_counts`` builds any such plan, and ``mixed_counts`` walks from one plan
to another group by group: on ONNX Runtime a whole stage's residual group crossing a multiple of the blocked
kernels' width moves latency by 25-45 % (embedded ResNet-20: uniform ratio 0.3471 runs x1.41, 0.3894 x2.06,
nothing in between in either family), and the plans in between, some groups at one plan's counts and the rest
at the other's, run x1.77, x1.85, x1.95.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import DepthcutError, InfeasibleBudgetError

MAX_RATIO = 0.9
# channel counts stay multiples of 4: at ratio 0.2 the embedded ResNet-20 with unrounded counts (13 of 16) ran
# x0.78, slower than the original, on ONNX Runtime; multiples of 8 leave a 16-channel layer only 8 or 16
ROUND_TO = 4


def _torch_pruning():
    try:
        import torch_pruning as tp
    except ImportError:
        raise DepthcutError("channel pruning needs Torch-Pruning: pip install 'depthcut[baselines]' "
                            "(or pip install torch-pruning)") from None
    return tp


def _classifier(model: nn.Module) -> list[nn.Module]:
    """The last Linear (or last conv when there is none): its outputs are the classes."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return [linears[-1]]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1:]


SCOPES = ("global", "uniform")
DEFAULT_SCOPE = "both"      # the frontier: both families of plans (ChannelFrontier)


def prune_channels(model: nn.Module, example: torch.Tensor, ratio: float, scope: str = "global") -> nn.Module:
    """A copy of ``model`` with ``ratio`` of its channels removed by L1 magnitude: ranked across the whole
    network (``scope="global"``) or the same fraction in every prunable layer (``"uniform"``)."""
    if scope not in SCOPES:
        raise DepthcutError(f"unknown channel-pruning scope {scope!r}; use one of {', '.join(SCOPES)}")
    tp = _torch_pruning()
    pruned = copy.deepcopy(model).cpu().eval()
    if ratio <= 0:
        return pruned
    pruner = tp.pruner.MagnitudePruner(pruned, example.cpu(), importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=float(ratio), ignored_layers=_classifier(pruned),
                                       round_to=ROUND_TO, global_pruning=scope == "global",
                                       max_pruning_ratio=MAX_RATIO)
    pruner.step()
    return pruned.eval()


def group_roots(model: nn.Module, example: torch.Tensor) -> list[str]:
    """The prunable groups of ``model`` (Torch-Pruning's dependency graph, the classifier's outputs excluded),
    each named by the module whose output channels root it, in the model's module order."""
    tp = _torch_pruning()
    model = copy.deepcopy(model).cpu().eval()
    names = {id(m): n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    graph = tp.DependencyGraph().build_dependency(model, example.cpu())
    roots = {names[id(g[0].dep.target.module)] for g in graph.get_all_groups(ignored_layers=_classifier(model))}
    return sorted(roots, key=order.__getitem__)


def _out_channels(module: nn.Module) -> int:
    for attribute in ("out_channels", "out_features", "num_features"):
        if hasattr(module, attribute):
            return int(getattr(module, attribute))
    raise DepthcutError(f"channel counts: cannot read the output channels of a {type(module).__name__}")


def channel_counts(pruned: nn.Module, roots: list[str]) -> dict[str, int]:
    """The channels each group keeps in ``pruned`` (a pruned copy of the model ``roots`` came from)."""
    modules = dict(pruned.named_modules())
    return {name: _out_channels(modules[name]) for name in roots}


def prune_to_counts(model: nn.Module, example: torch.Tensor, counts: dict[str, int]) -> nn.Module:
    """A copy of ``model`` whose group rooted at each module named in ``counts`` keeps that many channels, the
    strongest by L1 magnitude (the channels either family keeps within a group); other groups are untouched.
    ``prune_to_counts(model, x, channel_counts(prune_channels(model, x, r, scope), roots))`` is that plan."""
    tp = _torch_pruning()
    pruned = copy.deepcopy(model).cpu().eval()
    modules = dict(pruned.named_modules())
    ratios = {}
    for name, count in counts.items():
        if name not in modules:
            raise DepthcutError(f"channel counts: the model has no module {name!r}")
        full = _out_channels(modules[name])
        if not 0 < count <= full:
            raise DepthcutError(f"channel counts: {name} has {full} output channels, cannot keep {count}")
        if count < full:
            # Torch-Pruning keeps int(full * (1 - ratio)) channels: aim half a channel above the count
            ratios[modules[name]] = 1.0 - (count + 0.5) / full
    if not ratios:
        return pruned
    pruner = tp.pruner.MagnitudePruner(pruned, example.cpu(), importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=0.0, pruning_ratio_dict=ratios,
                                       ignored_layers=_classifier(pruned), round_to=None, global_pruning=False,
                                       max_pruning_ratio=1.0)
    pruner.step()
    return pruned.eval()


def mixed_counts(slower: dict[str, int], faster: dict[str, int], most: int) -> list[dict[str, int]]:
    """Plans between two plans, group by group (``slower`` and ``faster``: channel counts over the same
    groups, in the model's order): the first k differing groups at ``faster``'s counts and the rest at
    ``slower``'s, and the last k likewise, for k spaced evenly - at most ``most`` plans, none equal to either
    end. A whole group is the finest step a plan can take, so these fill the latency between the two."""
    differ = [name for name in slower if slower[name] != faster[name]]
    steps = len(differ) - 1
    if steps < 1 or most < 1:
        return []
    per_end = (most + 1) // 2
    ks = sorted({round(1 + (steps - 1) * i / max(per_end - 1, 1)) for i in range(per_end)})
    out: list[dict[str, int]] = []
    for k in ks:
        for taken in (differ[:k], differ[-k:]):
            plan = dict(slower) | {name: faster[name] for name in taken}
            if plan not in out:
                out.append(plan)
    return out[:most]


def count_macs(model: nn.Module, example: torch.Tensor) -> float:
    tp = _torch_pruning()
    macs, _ = tp.utils.count_ops_and_params(model.cpu().eval(), example.cpu())
    return float(macs)


@dataclass
class ChannelPlan:
    ratio: float
    macs: float
    scope: str                          # the family it came from: "global" or "uniform"
    model: nn.Module = field(repr=False)


class _ScopeFrontier:
    """One family of plans (one scope), indexed by the pruning ratio."""

    def __init__(self, model: nn.Module, example: torch.Tensor, tolerance: float, scope: str):
        self.model, self.example, self.tolerance, self.scope = model, example, tolerance, scope
        self.full = count_macs(model, self.example)
        self._cache: dict[float, ChannelPlan] = {}
        # the most pruning that still prunes: with rounding, too high a ratio leaves a layer nothing and
        # Torch-Pruning then skips it, so MACs are not monotone near MAX_RATIO
        grid = [round(0.1 * k, 1) for k in range(1, int(MAX_RATIO * 10) + 1)]
        self.floor_plan = min((self.at(r) for r in grid), key=lambda p: (p.macs, p.ratio))

    def at(self, ratio: float) -> ChannelPlan:
        ratio = round(float(ratio), 4)
        if ratio not in self._cache:
            pruned = prune_channels(self.model, self.example, ratio, self.scope)
            self._cache[ratio] = ChannelPlan(ratio, count_macs(pruned, self.example), self.scope, pruned)
        return self._cache[ratio]

    def best(self, budget_macs: float) -> ChannelPlan:
        """The least pruning whose MACs fit (bisection on the ratio; MACs fall with it, up to rounding)."""
        if budget_macs >= self.full:
            return self.at(0.0)
        lo, hi = 0.0, self.floor_plan.ratio                  # macs(lo) > budget >= macs(hi)
        while hi - lo > self.tolerance:
            mid = (lo + hi) / 2
            if self.at(mid).macs <= budget_macs:
                hi = mid
            else:
                lo = mid
        return self.at(hi)


class ChannelFrontier:
    """Budgets in MACs. ``best(budget)``: the plan with the most MACs that fit ``budget`` (the least pruning),
    from the global and the uniform families together (``scope="both"``, the default) or from one of them.
    Both: measured latency is a step function of the channel counts on a real runtime (some counts run much
    faster than their MACs say), so the landing needs as many distinct plans near its target as it can get."""

    def __init__(self, model: nn.Module, example: torch.Tensor, tolerance: float = 1e-3, scope: str = DEFAULT_SCOPE):
        if scope not in SCOPES + ("both",):
            raise DepthcutError(f"unknown channel-pruning scope {scope!r}; use one of {', '.join(SCOPES)} or both")
        self.families = {s: _ScopeFrontier(model, example[:1], tolerance, s)
                         for s in (SCOPES if scope == "both" else (scope,))}
        first = next(iter(self.families.values()))
        self.full, self.tolerance = first.full, tolerance
        self.floor_plan = min((f.floor_plan for f in self.families.values()), key=lambda p: (p.macs, p.ratio))
        self.min_latency_ms = self.floor_plan.macs            # the name the landing stage reads

    def at(self, ratio: float, scope: str | None = None) -> ChannelPlan:
        return self.families[scope or next(iter(self.families))].at(ratio)

    def best(self, budget_macs: float) -> ChannelPlan:
        if budget_macs < self.floor_plan.macs:
            raise InfeasibleBudgetError(f"no channel pruning up to {MAX_RATIO:.0%} reaches {budget_macs:.4g} MACs: "
                                        f"the minimum is {self.floor_plan.macs:.4g}", minimum=self.floor_plan.macs)
        fits = [f.best(budget_macs) for f in self.families.values() if budget_macs >= f.floor_plan.macs]
        return max((p for p in fits if p.macs <= budget_macs), key=lambda p: (p.macs, -p.ratio),
                   default=self.floor_plan)
