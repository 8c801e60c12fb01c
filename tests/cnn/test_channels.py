"""The channel-pruning baseline's frontier (depthcut.cnn.channels): budgets in MACs, never exceeded."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("torch_pruning")

from depthcut import zoo  # noqa: E402
from depthcut.cnn.channels import ChannelFrontier, prune_channels  # noqa: E402
from depthcut.errors import DepthcutError  # noqa: E402

RATIOS = [k / 40 for k in range(0, 33)]


@pytest.fixture(scope="module")
def frontiers():
    torch.manual_seed(0)
    model = zoo.get("resnet20_fmnist").create().eval()
    x = torch.randn(1, 1, 28, 28)
    return {scope: ChannelFrontier(model, x, scope=scope) for scope in ("global", "uniform", "both")}


def test_global_ranking_gives_finer_steps_than_a_uniform_ratio(frontiers):
    """A uniform ratio moves a 16-channel layer 4 channels at a time in every layer at once; the global
    ranking takes the weakest group anywhere, so far more MAC levels exist for the landing to choose from."""
    levels = {scope: len({f.at(r).macs for r in RATIOS}) for scope, f in frontiers.items() if scope != "both"}
    assert levels["global"] >= 2 * levels["uniform"], levels


def test_both_families_answer_with_the_least_pruning_of_either(frontiers):
    """The default frontier holds both families: at every budget it returns the plan with the most MACs that
    fits, from whichever family has it."""
    both, one = frontiers["both"], {s: frontiers[s] for s in ("global", "uniform")}
    for fraction in (0.9, 0.7, 0.55, 0.4, 0.25):
        budget = fraction * both.full
        plan = both.best(budget)
        assert plan.macs <= budget
        assert plan.macs == max(f.best(budget).macs for f in one.values() if f.best(budget).macs <= budget)


@pytest.mark.parametrize("scope", ["global", "uniform", "both"])
def test_best_never_exceeds_the_budget_and_prunes_least(frontiers, scope):
    f = frontiers[scope]
    for fraction in (0.95, 0.8, 0.6, 0.45, 0.3):
        budget = fraction * f.full
        plan = f.best(budget)
        assert plan.macs <= budget
        # no smaller ratio on the grid fits the budget with more MACs (least pruning that fits, to bisection)
        family = f.families[plan.scope]
        assert all(family.at(r).macs > budget or family.at(r).macs <= plan.macs
                   for r in RATIOS if r < plan.ratio - f.tolerance)
        with torch.no_grad():
            assert plan.model(torch.randn(2, 1, 28, 28)).shape == (2, 10)   # classes never pruned


def test_unknown_scope_is_one_line():
    with pytest.raises(DepthcutError, match="unknown channel-pruning scope 'layer'"):
        prune_channels(torch.nn.Conv2d(1, 4, 3), torch.randn(1, 1, 8, 8), 0.5, scope="layer")
