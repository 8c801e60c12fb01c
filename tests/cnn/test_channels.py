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


# -- plans as channel counts ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("scope", ["global", "uniform"])
def test_a_plan_is_its_channel_counts(scope):
    """Pruning to a plan's channel counts rebuilds the plan itself: the same channels kept in every group, so
    the same function (both families keep the strongest channels by L1 within a group)."""
    from depthcut.cnn.channels import channel_counts, group_roots, prune_to_counts

    torch.manual_seed(0)
    model = zoo.get("resnet20_fmnist").create().eval()
    x, y = torch.randn(1, 1, 28, 28), torch.randn(3, 1, 28, 28)
    roots = group_roots(model, x)
    assert roots[0] == "conv1" and "fc" not in roots                        # module order; classes never pruned
    plan = prune_channels(model, x, 0.37, scope)
    counts = channel_counts(plan, roots)
    assert counts != channel_counts(model, roots)
    rebuilt = prune_to_counts(model, x, counts)
    assert channel_counts(rebuilt, roots) == counts
    with torch.no_grad():
        assert torch.equal(rebuilt(y), plan(y))


def test_mixed_counts_walk_group_by_group_from_one_plan_to_the_other():
    from depthcut.cnn.channels import mixed_counts

    slower = {"a": 16, "b": 32, "c": 64, "d": 64, "e": 8}
    faster = {"a": 8, "b": 24, "c": 48, "d": 32, "e": 8}                    # e does not differ
    plans = mixed_counts(slower, faster, most=100)
    differ = ["a", "b", "c", "d"]
    expected = [dict(slower) | {g: faster[g] for g in taken}
                for k in range(1, len(differ)) for taken in (differ[:k], differ[-k:])]
    assert sorted(map(str, plans)) == sorted({str(p) for p in expected})    # first k and last k, every k
    assert slower not in plans and faster not in plans
    assert len(mixed_counts(slower, faster, most=3)) == 3
    assert mixed_counts(slower, dict(slower, a=8), most=10) == []            # one group apart: nothing between


def test_impossible_channel_counts_are_one_line():
    from depthcut.cnn.channels import prune_to_counts

    model = zoo.get("resnet20_fmnist").create().eval()
    x = torch.randn(1, 1, 28, 28)
    with pytest.raises(DepthcutError, match="has 16 output channels, cannot keep 20"):
        prune_to_counts(model, x, {"conv1": 20})
    with pytest.raises(DepthcutError, match="no module 'layer9.conv1'"):
        prune_to_counts(model, x, {"layer9.conv1": 4})
