"""Exact merging of a run of convolutions into one (SPEC A4).

A convolution here is an affine map ``ConvParams`` (weight, bias, stride, padding, groups). Everything is
composed in float64 and cast back only when a module is emitted (``to_module``), so that a merged network
matches its unmerged, padding-shifted form to ~1e-7 relative in float32.

Conventions that make the algebra exact:

* **Padding lives on the first conv.** ``compose(c1, c2)`` returns padding ``p1 + s1*p2``: the composite is
  exactly ``c2(c1(x))`` when c1 is given *all* that padding and c2 none (the padding-shifted unmerged form
  built by ``depthcut.cnn.build``). Composing two "same"-padded convs as they stand is *not* exact at the
  borders: the intermediate zero padding of c2 is not an affine image of the input.
* **Skips are centre-aligned.** In the shifted form every value inside a block lives on the same padded
  frame, so a skip from an inner position adds its kernel centred in the larger kernel; an identity skip adds
  1 at the centre tap. This needs odd kernel-size differences to be even, hence odd kernels.
* **Depthwise stays depthwise.** Depthwise kernels are composed per channel (never expanded: a dense 960x960
  expansion of a MobileNetV2 depthwise conv would cost seconds); the result is depthwise only when every part
  was. Other group counts (1 < groups < channels) are expanded to dense block-diagonal kernels.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DTYPE = torch.float64


@dataclass
class ConvParams:
    """An affine 2-D convolution: weight (C_out, C_in/groups, K, K), bias (C_out,), square stride/padding."""

    weight: Tensor
    bias: Tensor
    stride: int = 1
    padding: int = 0
    groups: int = 1

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def kernel(self) -> int:
        return self.weight.shape[-1]

    @property
    def depthwise(self) -> bool:
        return self.groups == self.in_channels == self.out_channels and self.weight.shape[1] == 1

    def __call__(self, x: Tensor) -> Tensor:
        """Apply the convolution (in the dtype of ``x``); handy for tests."""
        return F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype), self.stride, self.padding,
                        1, self.groups)


def conv_padding(conv: nn.Conv2d) -> int:
    """The symmetric integer zero-padding of ``conv``: ``'valid'`` is 0 and ``'same'`` (odd kernel, stride 1,
    what PyTorch allows) is dilation * (k - 1) / 2 on every side, so string paddings merge like integers."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return 0
        k, d = _square(conv.kernel_size, "kernel_size", conv), _square(conv.dilation, "dilation", conv)
        if k % 2 == 0:
            raise ValueError(f"padding='same' with an even kernel ({conv}) pads asymmetrically")
        return d * (k - 1) // 2
    return _square(conv.padding, "padding", conv)


def _square(value, what: str, conv: nn.Module) -> int:
    if isinstance(value, str):
        raise ValueError(f"{what}={value!r} of {conv} is not supported (use explicit integers)")
    a, b = (value, value) if isinstance(value, int) else tuple(value)
    if a != b:
        raise ValueError(f"non-square {what} {value} of {conv} is not supported")
    return int(a)


def identity(channels: int) -> ConvParams:
    """The identity map as a 1x1 depthwise conv (so that adding it keeps a depthwise kernel depthwise)."""
    return ConvParams(torch.ones(channels, 1, 1, 1, dtype=DTYPE), torch.zeros(channels, dtype=DTYPE),
                      1, 0, channels)


def from_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None) -> ConvParams:
    """The affine map of ``bn(conv(x))`` with BN in inference form (running statistics, its own eps):
    W' = W*g/sqrt(v+eps), b' = (b - mu)*g/sqrt(v+eps) + beta."""
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"expected nn.Conv2d, got {type(conv).__name__}")
    if conv.padding_mode != "zeros":
        raise ValueError(f"padding_mode={conv.padding_mode!r} of {conv} cannot be merged (only zeros)")
    if _square(conv.dilation, "dilation", conv) != 1:
        raise ValueError(f"dilated conv {conv} cannot be merged")
    _square(conv.kernel_size, "kernel_size", conv)
    w = conv.weight.detach().to(DTYPE)
    b = conv.bias.detach().to(DTYPE) if conv.bias is not None else torch.zeros(w.shape[0], dtype=DTYPE,
                                                                                device=w.device)
    if bn is not None:
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(f"{bn} has no running statistics (track_running_stats=False); cannot fold")
        scale = 1.0 / torch.sqrt(bn.running_var.detach().to(DTYPE) + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.detach().to(DTYPE)
        shift = bn.bias.detach().to(DTYPE) if bn.bias is not None else torch.zeros_like(scale)
        w = w * scale[:, None, None, None]
        b = (b - bn.running_mean.detach().to(DTYPE)) * scale + shift
    return ConvParams(w, b, _square(conv.stride, "stride", conv), conv_padding(conv),
                      conv.groups)


def to_dense(p: ConvParams) -> ConvParams:
    """Expand a grouped (or depthwise) kernel to the equivalent dense block-diagonal kernel."""
    if p.groups == 1:
        return p
    g, cout, cin_g = p.groups, p.out_channels, p.weight.shape[1]
    cout_g = cout // g
    w = p.weight.new_zeros(cout, cin_g * g, p.kernel, p.kernel)
    for k in range(g):
        w[k * cout_g:(k + 1) * cout_g, k * cin_g:(k + 1) * cin_g] = p.weight[k * cout_g:(k + 1) * cout_g]
    return replace(p, weight=w, groups=1)


def _dense_or_depthwise(p: ConvParams) -> ConvParams:
    return p if p.groups == 1 or p.depthwise else to_dense(p)


def compose(first: ConvParams, second: ConvParams) -> ConvParams:
    """The single conv equal to ``second(first(x))`` when ``first`` carries all the padding
    (K = k1 + k2 - 1, stride s1*s2, padding p1 + s1*p2).

    W = sum_m W2[:, m] (*) W1[m, :] (full 2-D convolution of the kernels), b = b2 + sum_m (sum W2[:, m]) b1[m].
    Only valid when s1 == 1 or k2 == 1: a k2 > 1 kernel after a stride would need a dilated kernel."""
    if first.stride != 1 and second.kernel != 1:
        raise ValueError(f"cannot compose a stride-{first.stride} conv with a following {second.kernel}x"
                         f"{second.kernel} conv: the result would need a dilated kernel")
    if first.out_channels != second.in_channels:
        raise ValueError(f"channel mismatch: first gives {first.out_channels}, second takes {second.in_channels}")
    a, b = _dense_or_depthwise(first), _dense_or_depthwise(second)
    w1, w2 = a.weight.to(DTYPE), b.weight.to(DTYPE)
    k1, k2 = a.kernel, b.kernel
    K = k1 + k2 - 1
    # One tap (u, v) of W2 shifts all of W1 by (u, v): W[.., u:u+k1, v:v+k1] += W2[.., u, v] (x) W1.
    if b.depthwise:   # out channel o reads only mid channel o
        w = w1.new_zeros(w1.shape[0], w1.shape[1], K, K)
        for u in range(k2):
            for v in range(k2):
                w[:, :, u:u + k1, v:v + k1] += w2[:, 0, u, v][:, None, None, None] * w1
        groups = a.groups
        bias = b.bias.to(DTYPE) + w2.sum((1, 2, 3)) * a.bias.to(DTYPE)
    else:
        w = w1.new_zeros(w2.shape[0], a.in_channels, K, K)
        for u in range(k2):
            for v in range(k2):
                if a.depthwise:   # mid channel m reads only in channel m
                    w[:, :, u:u + k1, v:v + k1] += w2[:, :, u, v][:, :, None, None] * w1[:, 0][None]
                else:
                    w[:, :, u:u + k1, v:v + k1] += torch.einsum("om,miab->oiab", w2[:, :, u, v], w1)
        groups = 1
        bias = b.bias.to(DTYPE) + w2.sum((2, 3)) @ a.bias.to(DTYPE)
    return ConvParams(w, bias, a.stride * b.stride, a.padding + a.stride * b.padding, groups)


def add(main: ConvParams, branch: ConvParams) -> ConvParams:
    """``main(x) + branch(x)`` as one conv: ``branch``'s kernel is centred in ``main``'s (both read the same
    padded frame in the shifted form); the result keeps ``main``'s padding."""
    if main.stride != branch.stride:
        raise ValueError(f"cannot add convs with strides {main.stride} and {branch.stride}")
    if (main.in_channels, main.out_channels) != (branch.in_channels, branch.out_channels):
        raise ValueError(f"cannot add a {branch.in_channels}->{branch.out_channels} branch to a "
                         f"{main.in_channels}->{main.out_channels} conv")
    d2 = main.kernel - branch.kernel
    if d2 < 0 or d2 % 2:
        raise ValueError(f"cannot centre a {branch.kernel}x{branch.kernel} kernel in a "
                         f"{main.kernel}x{main.kernel} one")
    if main.depthwise and branch.depthwise:
        m, br, groups = main, branch, main.groups
    else:
        m, br, groups = to_dense(main), to_dense(branch), 1
    w = m.weight.to(DTYPE).clone()
    d = d2 // 2
    w[:, :, d:d + br.kernel, d:d + br.kernel] += br.weight.to(DTYPE)
    return ConvParams(w, m.bias.to(DTYPE) + br.bias.to(DTYPE), main.stride, main.padding, groups)


def add_identity(p: ConvParams) -> ConvParams:
    """Fold an identity skip over the whole conv: +1 on the centre tap of W[c, c]."""
    if p.in_channels != p.out_channels or p.stride != 1 or p.kernel % 2 == 0:
        raise ValueError(f"identity skip needs C_in == C_out, stride 1 and an odd kernel; got "
                         f"{p.in_channels}->{p.out_channels}, stride {p.stride}, kernel {p.kernel}")
    return add(p, identity(p.in_channels))


def add_projection(p: ConvParams, proj: ConvParams) -> ConvParams:
    """Fold a projection skip (typically a 1x1 conv + BN, possibly strided, reading the block input) into
    the centre taps. Raises ValueError when strides, channels or kernel sizes do not allow it."""
    return add(p, proj)


def merge_sequence(layers: Sequence[ConvParams | None],
                   skips: Sequence[tuple[int, int, ConvParams | None]] = (),
                   channels: int | None = None) -> ConvParams:
    """Merge a block: ``layers[q-1]`` is the conv reaching local position q (None = pruned to identity);
    ``skips`` are (a, b, projection or None): the value at position a (0 = block input), projected if
    given, is added at position b before anything after b. ``channels`` is needed only when the block has
    no kept conv (its identity map)."""
    at: list[ConvParams | None] = [None]      # composite from the block input to each position; None = identity
    cur: ConvParams | None = None
    for q, layer in enumerate(layers, start=1):
        if layer is not None:
            cur = layer if cur is None else compose(cur, layer)
        for a, b, proj in skips:
            if b != q:
                continue
            if not 0 <= a < b:
                raise ValueError(f"skip ({a}, {b}) does not go forward inside the block")
            src = at[a]
            branch = proj if src is None else (src if proj is None else compose(src, proj))
            if proj is None and src is None:
                branch = identity(_channels(cur, layers, channels))
            if cur is None:
                cur = identity(branch.in_channels)
            cur = add(cur, branch)
        at.append(cur)
    return cur if cur is not None else identity(_channels(None, layers, channels))


def _channels(cur: ConvParams | None, layers, channels: int | None) -> int:
    if cur is not None:
        return cur.out_channels
    if channels is None:
        raise ValueError("a block with no kept conv needs `channels` to build its identity map")
    return channels


def regroup(p: ConvParams, groups: int) -> ConvParams:
    """``p`` as a grouped conv with ``groups`` groups when its dense kernel is exactly block-diagonal that way
    (grouped convs compose into block-diagonal kernels, SPEC A4), else ``p`` unchanged."""
    if groups <= 1 or p.groups != 1 or p.in_channels % groups or p.out_channels % groups:
        return p
    w = p.weight
    cin_g, cout_g = p.in_channels // groups, p.out_channels // groups
    blocks = [w[k * cout_g:(k + 1) * cout_g, k * cin_g:(k + 1) * cin_g] for k in range(groups)]
    if sum(float(b.abs().sum()) for b in blocks) != float(w.abs().sum()):   # something off the diagonal
        return p
    return ConvParams(torch.cat(blocks, 0).contiguous(), p.bias, p.stride, p.padding, groups)


def to_module(p: ConvParams, dtype: torch.dtype = torch.float32, detect_depthwise: bool = True) -> nn.Conv2d:
    """Emit a plain ``nn.Conv2d`` (always with bias). A dense kernel whose off-diagonal blocks are exactly
    zero (all parts were depthwise but something forced a dense add) is re-emitted as depthwise."""
    if detect_depthwise and p.groups == 1 and p.in_channels == p.out_channels > 1:
        w = p.weight
        eye = torch.eye(w.shape[0], dtype=torch.bool, device=w.device)[:, :, None, None].expand_as(w)
        if not w.masked_select(~eye).any():
            p = ConvParams(torch.diagonal(w, 0, 0, 1).permute(2, 0, 1)[:, None].contiguous(), p.bias,
                           p.stride, p.padding, w.shape[0])
    # created in the target dtype: a float32 module would round float64 kernels before any cast
    conv = nn.Conv2d(p.in_channels, p.out_channels, p.kernel, p.stride, p.padding, groups=p.groups, bias=True,
                     device=p.weight.device, dtype=dtype)
    with torch.no_grad():
        conv.weight.copy_(p.weight.to(dtype))
        conv.bias.copy_(p.bias.to(dtype))
    return conv
