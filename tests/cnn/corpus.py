"""A corpus of CNN structures that depth compression must handle exactly, as a registry (timm-style).

Each entry builds a small model (random weights, random non-trivial BatchNorm statistics) that reproduces one
structure users have: the ResNet / MobileNet families, and the ones that broke earlier rewrites - a
squeeze-excite gate, a residual scaling or LayerScale, pooling before an add, dilated / grouped / excluded last
convs, RepVGG-style parallel branches, timm's fused BatchNorm+activation module, drop-path, channels_last,
fp16, hooks. ``tests/cnn/test_intended.py`` checks every entry: random plans deploy exactly the intended
function (depthcut.cnn.intended), never merely merged == unmerged.

``CORPUS[name]() -> Case``. Keep entries small: the whole corpus runs in seconds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Case:
    model: nn.Module
    input_shape: tuple[int, ...]
    exclude: tuple[str, ...] = ()
    refused: str | None = None        # the analysis must refuse the model with a message containing this
    min_candidates: int = 1           # at least this many non-trivial candidates must be found
    dtype: torch.dtype = torch.float32
    notes: list[str] = field(default_factory=list)


CORPUS: dict[str, Callable[[], Case]] = {}


def register(fn: Callable[[], Case]) -> Callable[[], Case]:
    CORPUS[fn.__name__] = fn
    return fn


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and non-trivial BN statistics (so BN folding matters), eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=gen) * 0.3)
            elif isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / fan_in ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return model.eval()


def cbr(cin, cout, k=3, s=1, groups=1, act=True, bias=False, padding=None, dilation=1):
    pad = (k // 2) * dilation if padding is None else padding
    layers = [nn.Conv2d(cin, cout, k, s, pad, groups=groups, bias=bias, dilation=dilation), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if act else nn.Sequential(*layers)


class Head(nn.Module):
    def __init__(self, c, n=5):
        super().__init__()
        self.fc = nn.Linear(c, n)

    def forward(self, x):
        return self.fc(x.mean((2, 3)))


# ------------------------------------------------------------------------------------------------ residuals
class Basic(nn.Module):
    """ResNet basic block; ``between`` is an op applied to the residual branch right before the add."""

    def __init__(self, cin, cout, stride=1, between: nn.Module | None = None, last: nn.Module | None = None):
        super().__init__()
        self.c1 = cbr(cin, cout, s=stride)
        self.c2 = last if last is not None else cbr(cout, cout, act=False)
        self.between = between if between is not None else nn.Identity()
        self.down = (cbr(cin, cout, 1, stride, act=False) if stride != 1 or cin != cout else None)

    def forward(self, x):
        skip = x if self.down is None else self.down(x)
        return F.relu(self.between(self.c2(self.c1(x))) + skip)


class Stack(nn.Module):
    def __init__(self, *blocks, stem_in=3, stem_out=8, head=None):
        super().__init__()
        self.stem = cbr(stem_in, stem_out)
        self.blocks = nn.Sequential(*blocks)
        self.head = Head(head or stem_out)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def _stack(*blocks, head=None, shape=(1, 3, 12, 12), **kw) -> Case:
    return Case(randomize(Stack(*blocks, head=head)), shape, **kw)


@register
def plain_chain() -> Case:
    return _stack(cbr(8, 8), cbr(8, 8, act=False), cbr(8, 12), cbr(12, 12), head=12)


@register
def resnet_basic() -> Case:
    return _stack(Basic(8, 8), Basic(8, 8))


@register
def resnet_projection_strided() -> Case:
    return _stack(Basic(8, 8), Basic(8, 16, stride=2), Basic(16, 16), head=16)


@register
def resnet_projection_same_resolution() -> Case:
    return _stack(Basic(8, 12), Basic(12, 12), head=12)


class Bottleneck(nn.Module):
    def __init__(self, c, mid):
        super().__init__()
        self.a, self.b, self.c = cbr(c, mid, 1), cbr(mid, mid), cbr(mid, c, 1, act=False)

    def forward(self, x):
        return F.relu(x + self.c(self.b(self.a(x))))


@register
def resnet_bottleneck() -> Case:
    return _stack(Bottleneck(8, 4), Bottleneck(8, 4))


class SE(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


@register
def se_resnet() -> Case:
    """Squeeze-excite gate on the residual branch, before the add (SE-ResNet)."""
    return _stack(Basic(8, 8, between=SE(8)), Basic(8, 8, between=SE(8)), Basic(8, 8, between=SE(8)))


class Scale(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return x * self.value


@register
def residual_scaling() -> Case:
    """EDSR: the residual branch is scaled by 0.1 before the add."""
    return _stack(Basic(8, 8, between=Scale(0.1)), Basic(8, 8, between=Scale(0.1)))


class LayerScale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(c, 1, 1) + 0.5)

    def forward(self, x):
        return self.gamma * x


@register
def layerscale() -> Case:
    return _stack(Basic(8, 8, between=LayerScale(8)), Basic(8, 8, between=LayerScale(8)))


@register
def pool_before_add() -> Case:
    return _stack(Basic(8, 8, between=nn.AvgPool2d(3, 1, 1)), Basic(8, 8))


@register
def dilated_last_conv() -> Case:
    return _stack(Basic(8, 8, last=cbr(8, 8, dilation=2, act=False)), Basic(8, 8))


@register
def grouped_last_conv() -> Case:
    return _stack(Basic(8, 8, last=cbr(8, 8, groups=2, act=False)), Basic(8, 8))


@register
def excluded_last_conv() -> Case:
    case = _stack(Basic(8, 8), Basic(8, 8), Basic(8, 8))
    case.exclude = ("blocks.1.c2.0",)
    return case


class PostActAdd(nn.Module):
    """The activation runs before the add (a layout where the add sits after the activation)."""

    def __init__(self, c):
        super().__init__()
        self.c1, self.c2 = cbr(c, c), cbr(c, c)

    def forward(self, x):
        return x + self.c2(self.c1(x))


@register
def add_after_activation() -> Case:
    return _stack(PostActAdd(8), PostActAdd(8))


class TwoConvBranches(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a, self.b = cbr(c, c, act=False), nn.Sequential(cbr(c, c), cbr(c, c, act=False))

    def forward(self, x):
        return F.relu(self.a(x) + self.b(x))


@register
def add_of_two_conv_branches() -> Case:
    return _stack(TwoConvBranches(8), Basic(8, 8))


class LongSkip(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.b1, self.b2 = Basic(c, c), Basic(c, c)

    def forward(self, x):
        return self.b2(self.b1(x)) + x


@register
def nested_long_skip() -> Case:
    return _stack(LongSkip(8), cbr(8, 8))


class InplaceAdd(nn.Module):
    def __init__(self, c, kind):
        super().__init__()
        self.c1, self.c2, self.kind = cbr(c, c), cbr(c, c, act=False), kind

    def forward(self, x):
        y = self.c2(self.c1(x))
        if self.kind == "iadd":
            y += x
        elif self.kind == "torch.add":
            y = torch.add(y, x)
        else:
            y = y.add(x)
        return y.relu()


@register
def add_spellings() -> Case:
    return _stack(InplaceAdd(8, "iadd"), InplaceAdd(8, "torch.add"), InplaceAdd(8, "method"))


# ---------------------------------------------------------------------------------------- mobile families
class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand, act=nn.ReLU6, se=False, k=3):
        super().__init__()
        mid = cin * expand
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), act()]
        layers += [nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False), nn.BatchNorm2d(mid), act()]
        if se:
            layers.append(SE(mid))
        layers += [nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.skip else self.body(x)


def _mobile(*blocks, c=8, head=None, shape=(1, 3, 16, 16)) -> Case:
    return Case(randomize(Stack(*blocks, stem_out=c, head=head)), shape)


@register
def mbv2_inverted_residuals() -> Case:
    return _mobile(InvertedResidual(8, 8, 1, 1), InvertedResidual(8, 12, 2, 4), InvertedResidual(12, 12, 1, 4),
                   head=12)


@register
def mbv3_hardswish_se() -> Case:
    return _mobile(InvertedResidual(8, 8, 1, 2, nn.Hardswish, se=True),
                   InvertedResidual(8, 8, 1, 2, nn.Hardswish, se=True))


@register
def mnasnet_5x5_depthwise() -> Case:
    return _mobile(InvertedResidual(8, 8, 1, 3, nn.ReLU, k=5), InvertedResidual(8, 12, 2, 3, nn.ReLU, k=5),
                   head=12)


@register
def efficientnet_silu() -> Case:
    return _mobile(InvertedResidual(8, 8, 1, 4, nn.SiLU), InvertedResidual(8, 8, 1, 4, nn.SiLU))


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's fused norm + activation (``timm.layers.BatchNormAct2d``): F.batch_norm then the activation."""

    def __init__(self, c, act=nn.ReLU):
        super().__init__(c)
        self.drop = nn.Identity()
        self.act = act()

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return self.act(self.drop(x))


class TimmDS(nn.Module):
    """timm's DepthwiseSeparableConv / InvertedResidual shape: conv, BatchNormAct2d, ..., optional skip."""

    def __init__(self, c, expand=2, skip=True):
        super().__init__()
        mid = c * expand
        self.conv_pw, self.bn1 = nn.Conv2d(c, mid, 1, bias=False), BatchNormAct2d(mid)
        self.conv_dw, self.bn2 = nn.Conv2d(mid, mid, 3, 1, 1, groups=mid, bias=False), BatchNormAct2d(mid)
        self.conv_pwl, self.bn3 = nn.Conv2d(mid, c, 1, bias=False), BatchNormAct2d(c, nn.Identity)
        self.has_skip = skip

    def forward(self, x):
        y = self.bn3(self.conv_pwl(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))))
        return y + x if self.has_skip else y


@register
def timm_fused_bn_act() -> Case:
    return _mobile(TimmDS(8), TimmDS(8), TimmDS(8, skip=False))


def drop_path(x, drop_prob: float = 0.0, training: bool = False):
    """timm.layers.drop_path: identity at eval."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        return drop_path(x, self.p, self.training)


@register
def drop_path_residual() -> Case:
    return _stack(Basic(8, 8, between=DropPath(0.2)), Basic(8, 8, between=DropPath(0.2)))


class RepVGGBlock(nn.Module):
    """RepVGG / MobileOne training-time block: 3x3+BN, 1x1+BN and identity-BN branches summed, then ReLU."""

    def __init__(self, c, identity=True):
        super().__init__()
        self.dense = cbr(c, c, 3, act=False)
        self.one = cbr(c, c, 1, act=False)
        self.id_bn = nn.BatchNorm2d(c) if identity else None

    def forward(self, x):
        y = self.dense(x) + self.one(x)
        if self.id_bn is not None:
            y = y + self.id_bn(x)
        return F.relu(y)


@register
def repvgg_branches() -> Case:
    return Case(randomize(Stack(RepVGGBlock(8, identity=False), RepVGGBlock(8, identity=False), cbr(8, 8))),
                (1, 3, 12, 12), min_candidates=1)


@register
def repvgg_branches_with_identity_bn() -> Case:
    return Case(randomize(Stack(RepVGGBlock(8), RepVGGBlock(8), cbr(8, 8))), (1, 3, 12, 12), min_candidates=1)


class MobileOneLike(nn.Module):
    """timm's MobileOneBlock (train-time form), written out: ``branches`` parallel kxk conv+BN, a 1x1 scale
    branch when k > 1, a BN identity when shapes allow, summed starting from the constant 0, then ReLU; and
    its own ``reparameterize()`` (independent of depthcut) fusing them into ``reparam_conv``."""

    def __init__(self, cin, cout, k=3, stride=1, groups=1, branches=3):
        super().__init__()
        self.k, self.stride, self.groups = k, stride, groups
        self.reparam_conv = None
        self.conv_kxk = nn.ModuleList([cbr(cin, cout, k, stride, groups=groups, act=False) for _ in range(branches)])
        self.conv_scale = cbr(cin, cout, 1, stride, groups=groups, act=False) if k > 1 else None
        self.identity = nn.BatchNorm2d(cout) if cin == cout and stride == 1 else None
        self.act = nn.ReLU()

    def forward(self, x):
        if self.reparam_conv is not None:
            return self.act(self.reparam_conv(x))
        out = 0
        if self.conv_scale is not None:
            out = self.conv_scale(x)
        for branch in self.conv_kxk:
            out = out + branch(x)
        if self.identity is not None:
            out = out + self.identity(x)
        return self.act(out)

    @staticmethod
    def _fused(weight, bn):
        t = bn.weight / (bn.running_var + bn.eps).sqrt()
        return weight * t.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * t

    def reparameterize(self):
        conv0 = self.conv_kxk[0][0]
        w = torch.zeros_like(conv0.weight)
        b = torch.zeros(conv0.out_channels)
        parts = [(branch[0].weight, branch[1]) for branch in self.conv_kxk]
        if self.conv_scale is not None:
            parts.append((F.pad(self.conv_scale[0].weight, [self.k // 2] * 4), self.conv_scale[1]))
        if self.identity is not None:
            eye = torch.zeros_like(conv0.weight)
            per_group = conv0.in_channels // self.groups
            for o in range(conv0.out_channels):
                eye[o, o % per_group, self.k // 2, self.k // 2] = 1.0
            parts.append((eye, self.identity))
        for weight, bn in parts:
            dw, db = self._fused(weight, bn)
            w, b = w + dw, b + db
        self.reparam_conv = nn.Conv2d(conv0.in_channels, conv0.out_channels, self.k, self.stride, self.k // 2,
                                      groups=self.groups, bias=True)
        self.reparam_conv.weight.data.copy_(w)
        self.reparam_conv.bias.data.copy_(b)
        del self.conv_kxk, self.conv_scale, self.identity


@register
def mobileone_branches() -> Case:
    """MobileOne: several parallel kxk branches per block (depthwise 3x3 then pointwise 1x1), fused by the
    block's own reparameterize() before the analysis; the merges then cross the fused blocks."""
    blocks = [MobileOneLike(8, 8, 3, groups=8), MobileOneLike(8, 8, 1), MobileOneLike(8, 8, 3, groups=8),
              MobileOneLike(8, 12, 1)]
    return Case(randomize(Stack(*blocks, head=12)), (1, 3, 12, 12), min_candidates=4)


class ProjectionFirst(nn.Module):
    """A 1x1+BN projection branch next to a 3x3 reducible conv: pruning the 3x3 leaves the projection before
    the first kept conv of a block (the border case of issue 7)."""

    def __init__(self, c):
        super().__init__()
        self.c1 = cbr(c, c, act=False)
        self.proj = cbr(c, c, 1, act=False)
        self.c2 = cbr(c, c)

    def forward(self, x):
        return self.c2(self.c1(x) + self.proj(x))


@register
def projection_before_first_kept_conv() -> Case:
    return Case(randomize(Stack(ProjectionFirst(8), cbr(8, 8))), (1, 3, 10, 10))


# ------------------------------------------------------------------------------------------ plain families
@register
def vgg_with_maxpool() -> Case:
    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Sequential(cbr(3, 8), cbr(8, 8), nn.MaxPool2d(2), cbr(8, 12), cbr(12, 12), cbr(12, 12))
            self.head = Head(12)

        def forward(self, x):
            return self.head(self.f(x))
    return Case(randomize(VGG()), (1, 3, 16, 16))


@register
def conv_with_bias_no_bn() -> Case:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.ModuleList([nn.Conv2d(3, 8, 3, padding=1)] + [nn.Conv2d(8, 8, 3, padding=1) for _ in range(3)])
            self.head = Head(8)

        def forward(self, x):
            for conv in self.c:
                x = F.relu(conv(x))
            return self.head(x)
    return Case(randomize(Net()), (1, 3, 10, 10))


@register
def mixed_activations() -> Case:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d, self.e = (cbr(3, 8, act=False), cbr(8, 8, act=False),
                                                      cbr(8, 8, act=False), cbr(8, 8, act=False),
                                                      cbr(8, 8, act=False))
            self.head = Head(8)

        def forward(self, x):
            x = F.gelu(self.a(x))
            x = F.leaky_relu(self.b(x), 0.1)
            x = torch.tanh(self.c(x))
            x = F.hardtanh(self.d(x), 0.0, 6.0)
            x = self.e(x).sigmoid()
            return self.head(x)
    return Case(randomize(Net()), (1, 3, 10, 10))


@register
def kernels_1_3_5_7() -> Case:
    return _stack(cbr(8, 8, 1), cbr(8, 8, 5), cbr(8, 8, 7), cbr(8, 8, 3), shape=(1, 3, 14, 14))


@register
def no_activation_between() -> Case:
    return _stack(cbr(8, 8, act=False), cbr(8, 8, act=False), cbr(8, 8), cbr(8, 8, act=False))


@register
def same_padding_strings() -> Case:
    return _stack(cbr(8, 8, padding="same"), Basic(8, 8), cbr(8, 8, padding="same"))


@register
def dropout_and_identity_inside() -> Case:
    return _stack(cbr(8, 8), nn.Dropout(0.3), nn.Identity(), cbr(8, 8), nn.Dropout2d(0.1), cbr(8, 8))


@register
def resnet_stem_maxpool() -> Case:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8)
            self.pool = nn.MaxPool2d(3, 2, 1)
            self.layer = nn.Sequential(Basic(8, 8), Basic(8, 16, 2), Basic(16, 16))
            self.head = Head(16)

        def forward(self, x):
            return self.head(self.layer(self.pool(F.relu(self.bn1(self.conv1(x))))))
    return Case(randomize(Net()), (1, 3, 32, 32))


class PreActBlock(nn.Module):
    """ResNetV2: BN -> ReLU -> conv, twice, then the add."""

    def __init__(self, c):
        super().__init__()
        self.bn1, self.c1 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2, self.c2 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1, bias=False)

    def forward(self, x):
        return x + self.c2(F.relu(self.bn2(self.c1(F.relu(self.bn1(x))))))


@register
def pre_activation_resnetv2() -> Case:
    return Case(randomize(Stack(PreActBlock(8), PreActBlock(8), PreActBlock(8))), (1, 3, 10, 10))


@register
def concat_barrier() -> Case:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = cbr(3, 8), cbr(8, 8), cbr(8, 8)
            self.d, self.e = cbr(16, 8), cbr(8, 8)
            self.head = Head(8)

        def forward(self, x):
            x = self.a(x)
            y = self.c(self.b(x))
            return self.head(self.e(self.d(torch.cat([x, y], 1))))
    return Case(randomize(Net()), (1, 3, 10, 10))


@register
def upsample_barrier() -> Case:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d = cbr(3, 8), cbr(8, 8, s=2), cbr(8, 8), cbr(8, 8)
            self.head = Head(8)

        def forward(self, x):
            x = self.c(self.b(self.a(x)))
            return self.head(self.d(F.interpolate(x, scale_factor=2.0, mode="nearest")))
    return Case(randomize(Net()), (1, 3, 12, 12))


@register
def spatial_attention_gate() -> Case:
    class Gate(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(2, 1, 7, padding=3)

        def forward(self, x):
            s = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
            return x * torch.sigmoid(self.conv(s))
    return _stack(Basic(8, 8, between=Gate(8)), cbr(8, 8), cbr(8, 8))


@register
def non_square_and_reflect_convs() -> Case:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = cbr(3, 8), cbr(8, 8)
            self.ns = nn.Conv2d(8, 8, (3, 1), padding=(1, 0))
            self.rf = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")
            self.c, self.d = cbr(8, 8), cbr(8, 8)
            self.head = Head(8)

        def forward(self, x):
            return self.head(self.d(self.c(self.rf(self.ns(self.b(self.a(x)))))))
    return Case(randomize(Net()), (1, 3, 10, 10))


@register
def projection_without_bn() -> Case:
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = cbr(8, 16), cbr(16, 16, act=False)
            self.proj = nn.Conv2d(8, 16, 1)

        def forward(self, x):
            return F.relu(self.c2(self.c1(x)) + self.proj(x))
    return _stack(Block(), Basic(16, 16), head=16)


@register
def functional_and_method_activations() -> Case:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d = (cbr(3, 8, act=False), cbr(8, 8, act=False), cbr(8, 8, act=False),
                                              cbr(8, 8, act=False))
            self.head = Head(8)

        def forward(self, x):
            x = torch.relu(self.a(x))
            x = self.b(x).relu()
            x = F.relu6(self.c(x))
            x = F.silu(self.d(x))
            return self.head(x)
    return Case(randomize(Net()), (1, 3, 10, 10))


# --------------------------------------------------------------------------------------- memory / precision
@register
def channels_last() -> Case:
    case = _stack(Basic(8, 8), Basic(8, 16, 2), head=16)
    case.model = case.model.to(memory_format=torch.channels_last)
    return case


@register
def half_precision() -> Case:
    case = _stack(Basic(8, 8), cbr(8, 8), cbr(8, 8))
    case.model = case.model.half()
    case.dtype = torch.float16
    return case


@register
def hooks_on_chain_modules() -> Case:
    case = _stack(Basic(8, 8), Basic(8, 8))
    case.model.blocks[0].c1[0].register_forward_hook(lambda m, i, o: o * 2)
    case.refused = "forward hook"
    return case


@register
def pre_hooks_on_a_block() -> Case:
    case = _stack(Basic(8, 8), Basic(8, 8))
    case.model.blocks[1].register_forward_pre_hook(lambda m, args: (args[0] + 1,))
    case.refused = "hook"
    return case


@register
def wide_resnet_two_stages() -> Case:
    return _stack(Basic(8, 16), Basic(16, 16), Basic(16, 24, 2), Basic(24, 24), head=24, shape=(1, 3, 16, 16))


@register
def mobilenet_without_skips() -> Case:
    return _mobile(InvertedResidual(8, 12, 1, 2), InvertedResidual(12, 16, 2, 2), InvertedResidual(16, 8, 1, 2))


@register
def bottleneck_with_strided_projection() -> Case:
    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            mid = cout // 2
            self.a, self.b, self.c = cbr(cin, mid, 1), cbr(mid, mid, 3, stride), cbr(mid, cout, 1, act=False)
            self.down = cbr(cin, cout, 1, stride, act=False)

        def forward(self, x):
            return F.relu(self.c(self.b(self.a(x))) + self.down(x))
    return _stack(Block(8, 16, 2), Bottleneck(16, 8), head=16, shape=(1, 3, 16, 16))


# ------------------------------------------------------------------------------------------ grouped convs
class ResNeXtBlock(nn.Module):
    """ResNeXt bottleneck: 1x1 dense -> 3x3 grouped (cardinality) -> 1x1 dense, identity or projection skip."""

    def __init__(self, cin, cout, width, groups, stride=1, se=False):
        super().__init__()
        self.a = cbr(cin, width, 1)
        self.b = cbr(width, width, 3, stride, groups=groups)
        self.se = SE(width) if se else nn.Identity()
        self.c = cbr(width, cout, 1, act=False)
        self.down = cbr(cin, cout, 1, stride, act=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        skip = x if self.down is None else self.down(x)
        return F.relu(self.c(self.se(self.b(self.a(x)))) + skip)


@register
def resnext_grouped_bottleneck() -> Case:
    return _stack(ResNeXtBlock(8, 16, 16, 4), ResNeXtBlock(16, 16, 16, 4), ResNeXtBlock(16, 16, 16, 4, 2),
                  head=16, shape=(1, 3, 12, 12), min_candidates=4)


@register
def regnet_y_grouped_with_se() -> Case:
    return _stack(ResNeXtBlock(8, 16, 16, 2, se=True), ResNeXtBlock(16, 16, 16, 2, se=True), head=16,
                  min_candidates=2)


@register
def chain_of_grouped_convs() -> Case:
    """Consecutive grouped convs with compatible groups: the merged conv stays grouped (gcd of the groups)."""
    return _stack(cbr(8, 8, groups=2), cbr(8, 8, groups=4, act=False), cbr(8, 16, groups=2), cbr(16, 16, groups=8),
                  Basic(16, 16, last=cbr(16, 16, groups=4, act=False)), head=16, min_candidates=6)


# ------------------------------------------------------------------------------ untraceable / dynamic ops
class DataDependentGate(nn.Module):
    """Python control flow on tensor values: torch.fx cannot trace it, so it is traced around as one op."""

    def forward(self, x):
        return x * 2 if float(x.mean()) > 0 else x


@register
def untraceable_submodule() -> Case:
    return _stack(Basic(8, 8), DataDependentGate(), Basic(8, 8), cbr(8, 8))


class Conv2dSame(nn.Conv2d):
    """timm.layers.Conv2dSame: TF 'SAME' padding computed from the input size at run time."""

    def __init__(self, cin, cout, k, stride=1, groups=1, bias=False):
        super().__init__(cin, cout, k, stride, 0, groups=groups, bias=bias)

    def forward(self, x):
        ih, iw = x.shape[-2:]
        k, s = self.kernel_size[0], self.stride[0]
        ph = max((-(-ih // s) - 1) * s + k - ih, 0)
        pw = max((-(-iw // s) - 1) * s + k - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


@register
def tf_same_padding_convs() -> Case:
    def csame(cin, cout, k, s=1, groups=1, act=True):
        layers = [Conv2dSame(cin, cout, k, s, groups), nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, nn.ReLU6()) if act else nn.Sequential(*layers)
    return _stack(csame(8, 8, 3), csame(8, 8, 3, groups=8), csame(8, 16, 3, s=2), csame(16, 16, 5, groups=16),
                  csame(16, 16, 1, act=False), head=16, shape=(1, 3, 13, 13), min_candidates=3)


class TimmRepVggBlock(nn.Module):
    """timm's RepVggBlock (ByobNet) at training time: conv_1x1(x) + conv_kxk(x) (the 1x1 written first),
    drop_path, + identity BN, then the activation; ConvNormAct = conv + BatchNormAct2d(act=Identity)."""

    def __init__(self, c):
        super().__init__()
        self.identity = nn.BatchNorm2d(c)
        self.conv_kxk = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), BatchNormAct2d(c, nn.Identity))
        self.conv_1x1 = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), BatchNormAct2d(c, nn.Identity))
        self.drop_path = DropPath(0.1)
        self.act = nn.ReLU()

    def forward(self, x):
        identity = self.identity(x)
        x = self.conv_1x1(x) + self.conv_kxk(x)
        x = self.drop_path(x)
        x += identity
        return self.act(x)


@register
def timm_repvgg_block() -> Case:
    return Case(randomize(Stack(TimmRepVggBlock(8), TimmRepVggBlock(8), TimmRepVggBlock(8))), (1, 3, 10, 10),
                min_candidates=3)


class StdConv2d(nn.Conv2d):
    """timm.layers.StdConv2d (BiT): the weights are standardised per output channel in forward. Same state as
    a plain conv, another op: a rule that swaps it for nn.Conv2d must see the difference and skip it."""

    def __init__(self, cin, cout, k, stride=1, padding=0, eps=1e-6):
        super().__init__(cin, cout, k, stride, padding, bias=False)
        self.eps = eps

    def weight_used(self):
        return F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                            momentum=0.0, eps=self.eps).reshape_as(self.weight)

    def forward(self, x):
        return F.conv2d(x, self.weight_used(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class ScaledStdConv2d(StdConv2d):
    """timm.layers.ScaledStdConv2d (NF-ResNet): standardised weights times a learned per-channel ``gain``. A
    stride-1, padding-0 one has the shape of timm's Conv2dSame, and its extra ``gain`` made the swap raise
    (issue 28: timm:nf_resnet26 crashed the analysis)."""

    def __init__(self, cin, cout, k, stride=1, padding=0):
        super().__init__(cin, cout, k, stride, padding)
        self.bias = nn.Parameter(torch.zeros(cout))
        self.gain = nn.Parameter(torch.ones(cout, 1, 1, 1))
        self.scale = self.weight[0].numel() ** -0.5

    def weight_used(self):
        return F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                            weight=(self.gain * self.scale).view(-1), training=True, momentum=0.0,
                            eps=self.eps).reshape_as(self.weight)


class NFBottleneck(nn.Module):
    """NF-ResNet's pre-activation bottleneck: no BatchNorm, scaled weight-standardised convs, x + alpha * f(x)."""

    def __init__(self, c, mid, alpha=0.2):
        super().__init__()
        self.conv1, self.conv2 = ScaledStdConv2d(c, mid, 1), ScaledStdConv2d(mid, mid, 3, padding=1)
        self.conv3, self.alpha = ScaledStdConv2d(mid, c, 1), alpha

    def forward(self, x):
        out = self.conv1(F.relu(x))
        out = self.conv3(F.relu(self.conv2(F.relu(out))))
        return x + self.alpha * out


@register
def nf_resnet_scaled_std_convs() -> Case:
    # the plain convs around the NF blocks still merge; the weight-standardised ones stay as they are
    return _stack(NFBottleneck(8, 4), cbr(8, 8), cbr(8, 8), NFBottleneck(8, 4), cbr(8, 8), min_candidates=1)


@register
def bit_std_convs() -> Case:
    def std(cin, cout, k):
        return nn.Sequential(StdConv2d(cin, cout, k, padding=k // 2), nn.GroupNorm(2, cout), nn.ReLU())
    return _stack(std(8, 8, 1), cbr(8, 8), cbr(8, 8), std(8, 8, 3), std(8, 8, 1), cbr(8, 8), min_candidates=1)
