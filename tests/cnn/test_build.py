"""Replaying plans on traced reference models (SPEC A1, A4, A10): the unmerged padding-shifted form equals the
merged network to 1e-4 relative, the identity plan is the original network, plans replay from JSON."""
from __future__ import annotations

import json
import random

import pytest
import torch
from torch import nn

from depthcut.cnn.build import (BlockModule, build_merged, build_unmerged, count_layers, identity_plan,
                                is_trivial, plan_from_blocks, replay, single_block_plan)
from depthcut.cnn.chain import Plan
from depthcut.cnn.graph import analyze
from depthcut.errors import DepthcutError
from depthcut import zoo as zoo_registry
from depthcut.zoo import create, randomize_batchnorm

TOL = 1e-4


class MiniVGG(nn.Module):
    """VGG-BN layout (conv-BN-ReLU stacks separated by max pools), narrow so that it runs in milliseconds."""

    def __init__(self, cfg=(8, 8, "M", 16, 16, 16, "M", 24, 24), num_classes: int = 10):
        super().__init__()
        layers, cin = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


MODELS = {   # name -> (factory, input shape, chain exclusions)
    "resnet20": (lambda: create("resnet20"), (2, 3, 32, 32), ()),
    "resnet18": (lambda: create("resnet18"), (2, 3, 32, 32), ()),
    "mobilenet_v2_0.5": (lambda: create("mobilenet_v2", width_mult=0.5), (2, 3, 32, 32), ("features.18.0",)),
    "vgg_bn_mini": (MiniVGG, (2, 3, 16, 16), ()),
}


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters (fresh BNs are identities and hide folding bugs)."""
    return randomize_batchnorm(model, seed, spread=0.2)


@pytest.fixture(scope="module")
def analysed():
    cache = {}

    def get(name):
        if name not in cache:
            factory, shape, exclude = MODELS[name]
            torch.manual_seed(0)
            model = randomize_bn(factory())
            cache[name] = (model, analyze(model, (1, *shape[1:]), exclude=exclude), shape)
        return cache[name]
    return get


def random_plan(analysis, seed: int) -> Plan:
    """A random partition into valid blocks with a random kernel option each."""
    rng, by_start = random.Random(seed), {}
    for c in analysis.candidates:
        by_start.setdefault(c.start, []).append(c)
    blocks, pos = [], 0
    while pos < analysis.chain.length:
        blocks.append(rng.choice(by_start[pos]))
        pos = blocks[-1].end
    return plan_from_blocks(analysis.chain, blocks)


def merge_everything_plan(analysis) -> Plan:
    """Greedily the longest valid block from every position, keeping all its convs."""
    by_start = {}
    for c in analysis.candidates:
        by_start.setdefault(c.start, []).append(c)
    blocks, pos = [], 0
    while pos < analysis.chain.length:
        blocks.append(max(by_start[pos], key=lambda c: (c.end, len(c.kept))))
        pos = blocks[-1].end
    return plan_from_blocks(analysis.chain, blocks)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def expected_counts(analysis, plan: Plan, original: dict) -> tuple[int, int]:
    """Convs and activations the merged network must run: per non-trivial block, the interior activations
    go, its convs become one (none if all are pruned) and contained projection skips fold in."""
    chain, convs, acts = analysis.chain, original["convs"], original["activations"]
    for b in plan.blocks:
        if is_trivial(b):
            continue
        acts -= sum(chain.acts[p] is not None for p in range(b.start + 1, b.end))
        inside = [s for s in chain.skips if b.start <= s.start and s.end <= b.end]
        convs -= (b.end - b.start) - (1 if (b.kept or inside) else 0)
        convs -= sum(s.projection is not None for s in inside)
    return convs, acts


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2_0.5", "vgg_bn_mini"])
def test_identity_plan_is_the_original_network(analysed, name):
    model, analysis, shape = analysed(name)
    plan = identity_plan(analysis.chain)
    x = torch.randn(shape)
    unmerged = build_unmerged(analysis.gm, analysis.chain, plan).eval()
    merged = build_merged(unmerged, analysis.chain, plan)
    with torch.no_grad():
        want = model(x)
        assert torch.equal(unmerged(x), want)
        assert rel_err(merged(x), want) <= TOL
    assert not any(isinstance(m, nn.BatchNorm2d) for m in merged.modules())   # every BN folded
    assert count_layers(merged, shape)["convs"] == count_layers(model, shape)["convs"]


# resnet18-all composes 512-channel 3x3 pairs in float64 (~3 s): the heaviest case, kept on purpose
PLANS = [("resnet20", "random"), ("resnet20", "all"), ("resnet18", "all"), ("mobilenet_v2_0.5", "random"),
         ("mobilenet_v2_0.5", "all"), ("vgg_bn_mini", "random"), ("vgg_bn_mini", "all")]


@pytest.mark.parametrize("name,kind", PLANS)
def test_merged_equals_unmerged(analysed, name, kind):
    model, analysis, shape = analysed(name)
    plan = random_plan(analysis, seed=1) if kind == "random" else merge_everything_plan(analysis)
    assert any(not is_trivial(b) for b in plan.blocks)
    unmerged = build_unmerged(analysis.gm, analysis.chain, plan).eval()
    merged = build_merged(unmerged, analysis.chain, plan)
    x = torch.randn(shape)
    with torch.no_grad():
        err = rel_err(merged(x), unmerged(x))
        assert not torch.allclose(unmerged(x), model(x))   # the plan changed the function...
    assert err <= TOL                                        # ...and merging did not
    blocks = [m for m in unmerged.modules() if isinstance(m, BlockModule)]
    assert len(blocks) == sum(not is_trivial(b) and bool(b.kept) for b in plan.blocks)
    stats = count_layers(merged, shape)
    assert (stats["convs"], stats["activations"]) == expected_counts(analysis, plan, count_layers(model, shape))
    assert not any(isinstance(m, (nn.BatchNorm2d, BlockModule)) for m in merged.modules())


def test_unmerged_form_trains_and_takes_any_batch(analysed):
    model, analysis, shape = analysed("resnet20")
    plan = merge_everything_plan(analysis)
    unmerged = build_unmerged(analysis.gm, analysis.chain, plan).train()
    out = unmerged(torch.randn(3, *shape[1:]))              # batch 3: analysed at batch 1
    out.square().mean().backward()
    block = next(m for m in unmerged.modules() if isinstance(m, BlockModule))
    assert all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in block.convs)
    assert block.pad > 1 and all(c.padding == (0, 0) for c in block.convs)  # padding moved to the block input
    # the original model is untouched: its convs keep their padding and it still computes the same thing
    assert all(m.padding == (1, 1) for n, m in model.named_modules()
               if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    assert model.training is False


def test_single_block_plan_changes_one_block(analysed):
    model, analysis, shape = analysed("resnet20")
    chain = analysis.chain
    candidate = next(c for c in analysis.candidates if c.end - c.start >= 3
                     and any(c.start <= s.start and s.end <= c.end for s in chain.skips))
    plan = single_block_plan(chain, candidate)
    assert [b for b in plan.blocks if not is_trivial(b)] == [candidate]
    unmerged = build_unmerged(analysis.gm, chain, plan).eval()
    blocks = [m for m in unmerged.modules() if isinstance(m, BlockModule)]
    assert len(blocks) == 1 and (blocks[0].start, blocks[0].end) == (candidate.start, candidate.end)
    merged = build_merged(unmerged, chain, plan)
    x = torch.randn(shape)
    with torch.no_grad():
        assert rel_err(merged(x), unmerged(x)) <= TOL


def test_replay_rebuilds_the_merged_network(analysed):
    model, analysis, shape = analysed("resnet20")
    plan = random_plan(analysis, seed=3)
    merged = build_merged(build_unmerged(analysis.gm, analysis.chain, plan).eval(), analysis.chain, plan)
    text = plan.to_json()
    rebuilt = replay(model, text, (1, *shape[1:]))
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), merged(x), rtol=0, atol=1e-6)
    assert rebuilt.state_dict().keys() == merged.state_dict().keys()   # merged weights load into a replay
    unmerged = replay(model, text, (1, *shape[1:]), merged=False)
    assert any(isinstance(m, BlockModule) for m in unmerged.modules())


def test_replay_of_a_plan_with_exclusions(analysed):
    """A chain analysed with exclusions (like MobileNetV2's features.18.0): replay infers the exclusion from
    the plan's conv paths."""
    model, _, shape = analysed("vgg_bn_mini")
    analysis = analyze(model, (1, *shape[1:]), exclude=("features.17",))
    assert "features.17" not in [c.path for c in analysis.chain.convs]
    plan = merge_everything_plan(analysis)
    merged = build_merged(build_unmerged(analysis.gm, analysis.chain, plan).eval(), analysis.chain, plan)
    rebuilt = replay(model, plan.to_json(), (1, *shape[1:]))
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), merged(x), rtol=0, atol=1e-6)


def test_plan_for_another_model_is_refused(analysed):
    model, analysis, shape = analysed("resnet20")
    other, other_analysis, _ = analysed("vgg_bn_mini")
    with pytest.raises(DepthcutError, match="plan"):
        replay(model, identity_plan(other_analysis.chain).to_json(), (1, *shape[1:]))
    d = json.loads(identity_plan(analysis.chain).to_json())
    d["conv_paths"][4] = "layer9.0.conv1"
    with pytest.raises(DepthcutError, match="layer9.0.conv1"):
        replay(model, json.dumps(d), (1, *shape[1:]))
    with pytest.raises(DepthcutError, match="layer9.0.conv1"):
        build_unmerged(analysis.gm, analysis.chain, Plan.from_json(json.dumps(d)))


def test_a_gap_in_the_plan_is_refused(analysed):
    model, analysis, shape = analysed("vgg_bn_mini")
    blocks = identity_plan(analysis.chain).blocks
    with pytest.raises(DepthcutError, match="partition"):
        plan_from_blocks(analysis.chain, blocks[:1] + blocks[2:])


def test_count_layers():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4),
                          nn.ReLU6(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    stats = count_layers(model, (1, 3, 8, 8))
    assert stats["convs"] == 2 and stats["activations"] == 2
    assert stats["macs"] == 4 * 64 * 27 + 4 * 64 * 9 + 5 * 256
    assert stats["params"] == sum(p.numel() for p in model.parameters())


def _zoo_case(name: str):
    """Every registered architecture at a small input (the chain structure does not depend on the size)."""
    entry = zoo_registry.get(name)
    shape = entry.input_shape if entry.input_shape[-1] <= 32 else entry.input_shape[:2] + (64, 64)
    kwargs = {"classifier_hidden": 16} if name.startswith("vgg") else {}
    if name == "efficientnet_lite0":
        pytest.importorskip("efficientnet_lite_pytorch")
    return entry, shape, kwargs


@pytest.mark.parametrize("name", sorted(zoo_registry.MODELS))
def test_every_registered_model_merges_exactly(name):
    """A random valid plan on every zoo architecture: merged == unmerged (SPEC A4), identity plan == original."""
    entry, shape, kwargs = _zoo_case(name)
    torch.manual_seed(0)
    model = randomize_bn(entry.create(**kwargs))
    analysis = analyze(model, (1, *shape[1:]), exclude=entry.chain_exclude)
    # keep the float64 composition cheap on the wide ImageNet nets: short random blocks only
    short = [c for c in analysis.candidates if c.end - c.start <= 3]
    by_start = {}
    for c in short:
        by_start.setdefault(c.start, []).append(c)
    rng, blocks, pos = random.Random(name), [], 0
    while pos < analysis.chain.length:
        blocks.append(rng.choice(by_start[pos]))
        pos = blocks[-1].end
    plan = plan_from_blocks(analysis.chain, blocks)
    assert any(not is_trivial(b) for b in plan.blocks)
    x = torch.randn(2, *shape[1:])
    unmerged = build_unmerged(model, analysis.chain, plan).eval()
    merged = build_merged(unmerged, analysis.chain, plan)
    with torch.no_grad():
        assert rel_err(merged(x), unmerged(x)) <= 1e-4
        assert torch.equal(build_unmerged(model, analysis.chain, identity_plan(analysis.chain)).eval()(x), model(x))


def test_a_merged_conv_has_the_blocks_structure_whatever_the_weights():
    """Issue 33: timm zero-initialises each residual block's last BatchNorm; the untrained block's merged
    kernel was then exactly diagonal and built as a depthwise conv, but after recovery as a dense one - the
    landing timed a cheaper network than the one deployed. The structure now follows the block alone."""
    from depthcut.cnn.build import build_merged, build_unmerged, plan_from_blocks
    from depthcut.cnn.graph import analyze

    class Basic(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
            self.c2, self.b2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))) + x)

    model = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), Basic(8), Basic(8)).eval()
    with torch.no_grad():
        for block in (model[2], model[3]):
            block.b2.weight.zero_()                 # timm's zero_init_last
    analysis = analyze(model, (1, 3, 8, 8))
    chain = analysis.chain
    pruned_first = [c for c in analysis.candidates if c.end - c.start == 2 and len(c.kept) == 1 and c.kernel == 3]
    assert pruned_first, "a block keeping one of its two convs, the skip folded"
    cand = pruned_first[0]
    blocks = [cand] + [c for c in analysis.candidates if c.end == c.start + 1 and c.kept == (c.end,)
                       and not (cand.start < c.end <= cand.end)]
    plan = plan_from_blocks(chain, blocks)
    merged = build_merged(build_unmerged(analysis.gm, chain, plan).eval(), chain, plan)
    convs = [m for m in merged.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
             and m.in_channels == 8]
    assert all(m.groups == 1 for m in convs)         # dense, as the candidate's row was timed (not depthwise)
    assert not cand.depthwise
