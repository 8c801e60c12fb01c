"""Exact merging (SPEC A4): merged conv == padding-shifted unmerged sequence, to 1e-4 relative in float32."""
from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from depthcut.cnn.build import BlockModule
from depthcut.cnn.merge import (ConvParams, add_identity, add_projection, compose, from_conv, identity,
                                merge_sequence, to_dense, to_module)

TOL = 1e-4


def random_bn(channels: int, gen: torch.Generator, eps: float = 1e-5) -> nn.BatchNorm2d:
    """A BatchNorm with non-trivial statistics and affine parameters, in eval mode."""
    bn = nn.BatchNorm2d(channels, eps=eps)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=gen))
        bn.running_var.copy_(torch.rand(channels, generator=gen) * 1.5 + 0.25)
        bn.weight.copy_(torch.randn(channels, generator=gen))
        bn.bias.copy_(torch.randn(channels, generator=gen))
    return bn.eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def crop_to(s: torch.Tensor, left: int, size: int, stride: int) -> torch.Tensor:
    """The window of ``s`` that a stride-``stride`` 1x1 conv maps onto ``size`` outputs, starting at ``left``."""
    need = (size - 1) * stride + 1
    assert left >= 0 and left + need <= s.shape[-1]
    return s[..., left:left + need, left:left + need]


def shifted_forward(layers, skips, x):
    """Reference unmerged form, written independently of depthcut.cnn.build: the block's whole padding is
    applied to its input once and every kept conv runs unpadded; a pruned conv (None) is the identity. A skip
    source is cropped to the window the value it is added to covers (its own footprint on the padded input
    tells where), before its projection, which so reads the same padded frame as the main path."""
    total, scale = 0, 1
    for layer in layers:
        if layer is not None:
            total += scale * layer[0].padding[0]
            scale *= layer[0].stride[0]
    y = F.pad(x, [total] * 4)
    values, foot = {0: y}, {0: (1, 1)}                 # footprint (K, S) on the padded input
    K, S = 1, 1
    for q, layer in enumerate(layers, start=1):
        if layer is not None:
            conv, bn = layer
            y = F.conv2d(y, conv.weight, conv.bias, conv.stride, 0, 1, conv.groups)
            if bn is not None:
                y = bn(y)
            K, S = K + (conv.kernel_size[0] - 1) * S, S * conv.stride[0]
        for a, b, proj in skips:
            if b == q:
                Ka, Sa = foot[a]
                stride = 1 if proj is None else proj[0].stride[0]
                src = crop_to(values[a], (K - Ka) // (2 * Sa), y.shape[-1], stride)
                y = y + (src if proj is None else proj[1](proj[0](src)))
        values[q], foot[q] = y, (K, S)
    return y


@st.composite
def conv_chains(draw):
    """2-4 convs: kernels 1/3/5, depthwise or dense, stride 2 only on the first conv and then only 1x1 convs
    after it, optional bias and BN, and optionally one identity or projection skip."""
    n = draw(st.integers(2, 4))
    strided = draw(st.booleans())
    channels = [draw(st.sampled_from([3, 4]))]
    specs = []
    for q in range(n):
        kernel = 1 if strided and q > 0 else draw(st.sampled_from([1, 3, 5]))
        depthwise = draw(st.booleans())
        cout = channels[-1] if depthwise else draw(st.sampled_from([channels[-1], 2, 5]))
        specs.append(dict(kernel=kernel, depthwise=depthwise, cin=channels[-1], cout=cout,
                          stride=2 if strided and q == 0 else 1, bias=draw(st.booleans()), bn=draw(st.booleans())))
        channels.append(cout)
    # skip (a, b): stride-1 segment only unless projected from the input of a strided first conv
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n + 1)]
    skip = draw(st.none() | st.sampled_from(pairs))
    project = draw(st.booleans())
    # prune reducible convs to identity (at least one kept): RepVGG-like blocks whose leading conv is pruned
    # and whose projection skip lands before the first kept conv
    for q, spec in enumerate(specs):
        spec["pruned"] = spec["cin"] == spec["cout"] and spec["stride"] == 1 and draw(st.booleans())
    if all(spec["pruned"] for spec in specs):
        specs[-1]["pruned"] = False
    size = draw(st.integers(5, 9))
    seed = draw(st.integers(0, 2**31 - 1))
    return specs, channels, skip, project, size, seed


def make_layers(specs, gen):
    layers = []
    for s in specs:
        groups = s["cin"] if s["depthwise"] else 1
        conv = nn.Conv2d(s["cin"], s["cout"], s["kernel"], s["stride"], s["kernel"] // 2, groups=groups,
                         bias=s["bias"])
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) / (s["kernel"] * s["cin"] ** 0.5))
            if conv.bias is not None:
                conv.bias.copy_(torch.randn(s["cout"], generator=gen))
        layers.append((conv, random_bn(s["cout"], gen, eps=1e-3) if s["bn"] else None))
    return layers


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_chains())
def test_random_chain_merges_exactly(case):
    specs, channels, skip, project, size, seed = case
    gen = torch.Generator().manual_seed(seed)
    layers = make_layers(specs, gen)
    skips, skip_params = [], []
    if skip is not None:
        a, b = skip
        stride = 2 if specs[0]["stride"] == 2 and a == 0 else 1
        if project or channels[a] != channels[b] or stride != 1:
            proj = nn.Conv2d(channels[a], channels[b], 1, stride, 0, bias=False)
            with torch.no_grad():
                proj.weight.copy_(torch.randn(proj.weight.shape, generator=gen))
            proj_bn = random_bn(channels[b], gen)
            skips.append((a, b, (proj, proj_bn)))
            skip_params.append((a, b, from_conv(proj, proj_bn)))
        else:
            skips.append((a, b, None))
            skip_params.append((a, b, None))
    layers = [None if spec["pruned"] else layer for spec, layer in zip(specs, layers)]
    kept = [spec for spec in specs if not spec["pruned"]]
    x = torch.randn(2, channels[0], size, size, generator=gen)
    with torch.no_grad():
        want = shifted_forward(layers, skips, x)
        params = merge_sequence([None if layer is None else from_conv(*layer) for layer in layers], skip_params,
                                channels=channels[0])
        # the merged conv reads the input with the block's whole padding, like the reference
        params = dataclasses.replace(params, padding=sum(
            spec["kernel"] // 2 * math.prod(k["stride"] for k in kept[:i]) for i, spec in enumerate(kept)))
        merged = to_module(params)
        got = merged(x)
    assert got.shape == want.shape
    assert rel_err(got, want) <= TOL
    # the builder's trainable form (depthcut.cnn.build.BlockModule) is the same function
    block = BlockModule([None if layer is None else (copy.deepcopy(layer[0]), copy.deepcopy(layer[1]))
                         for layer in layers],
                        [(a, b, None, None) if proj is None else (a, b, *copy.deepcopy(proj)) for a, b, proj in skips],
                        channels=channels[0])
    with torch.no_grad():
        assert rel_err(block.eval()(x), want) <= TOL
        assert rel_err(to_module(block.merged_params())(x), want) <= TOL
    assert merged.kernel_size[0] == sum(s["kernel"] for s in kept) - len(kept) + 1
    assert merged.stride[0] == specs[0]["stride"]
    if all(s["depthwise"] for s in kept) and not any(proj is not None for _, _, proj in skip_params):
        assert merged.groups == channels[0] > 1   # depthwise stays depthwise, identity skips included


def test_bn_folding_uses_the_bns_own_eps():
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=True)
    bn = random_bn(5, gen, eps=0.1)        # a large eps: folding with the default 1e-5 would be visibly off
    x = torch.randn(2, 3, 6, 6, generator=gen)
    with torch.no_grad():
        assert rel_err(to_module(from_conv(conv, bn))(x), bn(conv(x))) < 1e-6


def test_naive_same_padding_composition_is_not_exact_at_borders():
    """The pitfall of SPEC A4: two 'same' 3x3 convs are not one 'same' 5x5 conv near the borders (the
    intermediate zero padding is not an affine image of the input), while the shifted form is exact."""
    gen = torch.Generator().manual_seed(1)
    (c1, bn1), (c2, bn2) = make_layers([dict(kernel=3, depthwise=False, cin=4, cout=4, stride=1, bias=True,
                                             bn=True)] * 2, gen)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    with torch.no_grad():
        merged = to_module(merge_sequence([from_conv(c1, bn1), from_conv(c2, bn2)]))(x)
        naive = bn2(c2(bn1(c1(x))))                       # each conv keeps its own padding
        shifted = shifted_forward([(c1, bn1), (c2, bn2)], [], x)
    assert merged.shape == naive.shape == shifted.shape
    assert rel_err(merged, naive) > 1e-2                            # wrong at the border...
    assert rel_err(merged[..., 2:-2, 2:-2], naive[..., 2:-2, 2:-2]) < 1e-5   # ...exact inside
    assert rel_err(merged, shifted) < 1e-6


def test_compose_rejects_kernel_after_stride():
    a = ConvParams(torch.randn(4, 4, 3, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.float64), 2, 1)
    b = ConvParams(torch.randn(4, 4, 3, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.float64), 1, 1)
    with pytest.raises(ValueError, match="dilated"):
        compose(a, b)
    assert compose(b, a).stride == 2 and compose(b, a).kernel == 5   # stride last is fine
    one = ConvParams(torch.randn(6, 4, 1, 1, dtype=torch.float64), torch.zeros(6, dtype=torch.float64), 1, 0)
    assert compose(a, one).stride == 2 and compose(a, one).kernel == 3


def test_add_identity_needs_square_unstrided_odd():
    p = ConvParams(torch.randn(5, 4, 3, 3, dtype=torch.float64), torch.zeros(5, dtype=torch.float64), 1, 1)
    with pytest.raises(ValueError, match="identity"):
        add_identity(p)
    q = ConvParams(torch.randn(4, 4, 3, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.float64), 1, 1)
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    assert torch.allclose(add_identity(q)(x), q(x) + x)


def test_add_projection_folds_a_strided_1x1_into_the_centre_tap():
    gen = torch.Generator().manual_seed(2)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1)
    proj, proj_bn = nn.Conv2d(4, 6, 1, stride=2, bias=False), random_bn(6, gen)
    x = torch.randn(2, 4, 9, 9, generator=gen)
    with torch.no_grad():
        got = to_module(add_projection(from_conv(conv), from_conv(proj, proj_bn)))(x)
        want = conv(x) + proj_bn(proj(x))
    assert rel_err(got, want) < 1e-6


def test_grouped_conv_expands_to_block_diagonal():
    conv = nn.Conv2d(6, 4, 3, padding=1, groups=2)
    x = torch.randn(1, 6, 5, 5)
    dense = to_dense(from_conv(conv))
    assert dense.groups == 1 and dense.weight.shape == (4, 6, 3, 3)
    assert dense.weight[:2, 3:].abs().sum() == 0 and dense.weight[2:, :3].abs().sum() == 0
    with torch.no_grad():
        assert rel_err(dense(x), conv(x)) < 1e-6


def test_to_module_re_emits_diagonal_dense_kernels_as_depthwise():
    dw = from_conv(nn.Conv2d(4, 4, 3, padding=1, groups=4))
    dense = to_dense(dw)
    m = to_module(dense)
    assert m.groups == 4
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        assert rel_err(m(x), dense(x)) < 1e-6


def test_pruned_block_with_skip_is_twice_the_identity():
    p = merge_sequence([None, None], [(0, 2, None)], channels=3)
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    assert torch.allclose(p(x), 2 * x)
    assert torch.allclose(identity(3)(x), x)


def test_projection_before_the_first_kept_conv_covers_the_border():
    """RepVGG-like: the leading 3x3 is pruned, so the 1x1 projection branch (with a BN bias) is added before the
    first kept conv. The merged conv applies the projection on the zero-padded input, so its bias reaches the
    border; the trainable form must compute exactly that (issue 7: border error 0.43 before)."""
    gen = torch.Generator().manual_seed(0)
    c = 4
    conv = nn.Conv2d(c, c, 3, 1, 1, bias=False)
    proj = nn.Conv2d(c, c, 1, 1, 0, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) / 6)
        proj.weight.copy_(torch.randn(proj.weight.shape, generator=gen) / 2)
    layers = [None, (conv, random_bn(c, gen))]
    skips = [(0, 1, (proj, random_bn(c, gen)))]
    x = torch.randn(2, c, 7, 7, generator=gen)
    block = BlockModule([None, (copy.deepcopy(conv), copy.deepcopy(layers[1][1]))],
                        [(0, 1, copy.deepcopy(proj), copy.deepcopy(skips[0][2][1]))], channels=c).eval()
    with torch.no_grad():
        want = shifted_forward(layers, skips, x)
        merged = to_module(block.merged_params())
        assert rel_err(block(x), want) <= TOL
        assert rel_err(merged(x), want) <= TOL
        border = torch.ones_like(want, dtype=torch.bool)
        border[..., 1:-1, 1:-1] = False
        assert (merged(x) - want)[border].abs().max() <= 1e-4 * want.abs().max()
