"""The decisions a diffusers ``UNet2DModel`` offers, as (block, option) rows.

Positions are the U-Net's convolutions in execution order. The only removable nonlinearity is the one inside a
ResNet block (GroupNorm + SiLU + dropout between conv1 and conv2); everything else between convs (the first
GroupNorm + SiLU of a block, attention, residual adds, the long skips, up/down-sampling) is a barrier. So a
block of the DP is either one conv, or conv1 + conv2 of one ResNet block with that nonlinearity removed:

========================  =====================================================  ==========================
block                     options (merged kernel)                                 rows
========================  =====================================================  ==========================
ResNet conv1 alone        keep (3)                                                1
ResNet conv2 alone        keep (3)                                                1
ResNet conv1 + conv2      both merged (5), or one kept (3): conv1 when it changes  2
                          the width, else the one with the larger L1 norm
up-sampling conv          keep (3), or identity (0 ms)                            2
down-sampling conv,       keep (3): stride 2 / a change of width, irreducible     1
conv_in
========================  =====================================================  ==========================

``conv_out`` is not a position (LayerMerge's chain stops before it). A conv may be pruned to identity only when
it keeps the width and stride 1 (SPEC A3); the up-sampling conv's identity is the optional layer of SPEC A3.
On the DDPM CIFAR-10 configuration: 22 ResNet blocks x 4 + conv_in + 3 down-sampling + 3 up-sampling x 2 = 98.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import DepthcutError


@dataclass(frozen=True)
class Row:
    """One (block, option) row: which module, which of its convs are kept, the merged kernel."""

    module: str                    # module path of the ResnetBlock2D / Upsample2D / Downsample2D / conv_in
    kind: str                      # "resnet", "upsample", "downsample", "conv_in"
    span: str                      # "conv1", "conv2", "conv1+conv2" for ResNet blocks; "conv" otherwise
    kept: tuple[str, ...]          # the convs kept ("conv1", "conv2", "conv"), () = identity
    kernel: int                    # merged kernel size (0: identity)
    in_channels: int
    out_channels: int
    stride: int = 1
    input_shape: tuple[int, ...] = field(default=(), compare=False)

    @property
    def key(self) -> str:
        return f"{self.module}:{self.span}:{'+'.join(self.kept) or 'identity'}"

    @property
    def removes_activation(self) -> bool:
        return self.span == "conv1+conv2"


def resnet_blocks(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    from diffusers.models.resnet import ResnetBlock2D

    return [(name, m) for name, m in unet.named_modules() if isinstance(m, ResnetBlock2D)]


def check_supported(unet: nn.Module) -> None:
    """One line naming what this enumeration does not model (instead of rows that would merge wrongly)."""
    for name, block in resnet_blocks(unet):
        if block.time_embedding_norm != "default":
            raise DepthcutError(f"{name}: time_embedding_norm={block.time_embedding_norm!r} (scale-shift) is not "
                                f"supported: the embedding scales the activations, it cannot be pushed through conv2")
        if block.upsample is not None or block.downsample is not None:
            raise DepthcutError(f"{name}: ResNet blocks that resample inside (resnet up/down) are not supported")
        for conv in ("conv1", "conv2"):
            c = getattr(block, conv)
            if c.kernel_size != (3, 3) or c.stride != (1, 1) or c.padding != (1, 1) or c.dilation != (1, 1) \
                    or c.groups != 1:
                raise DepthcutError(f"{name}.{conv}: only 3x3 stride-1 'same' convs are supported, got {c}")


def _input_shapes(unet: nn.Module, sample_size: tuple[int, int], batch: int) -> dict[str, tuple[int, ...]]:
    """The input shape of every conv, from one forward pass at ``sample_size``."""
    shapes: dict[str, tuple[int, ...]] = {}
    def record(name):
        def hook(module, args):
            shapes.setdefault(name, tuple(args[0].shape))   # returns None: the arguments stay as they are
        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in unet.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        x = torch.zeros(batch, unet.config.in_channels, *sample_size, dtype=next(unet.parameters()).dtype)
        with torch.no_grad():
            unet(x, torch.tensor([10] * batch))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _l1(conv: nn.Conv2d) -> float:
    return float(conv.weight.detach().abs().sum())


def enumerate_rows(unet: nn.Module, sample_size: tuple[int, int] | None = None, batch: int = 1) -> list[Row]:
    """Every (block, option) row of ``unet`` (module doc), in execution order of the blocks."""
    check_supported(unet)
    if sample_size is None:
        size = unet.config.sample_size
        sample_size = (size, size) if isinstance(size, int) else tuple(size)
    shapes = _input_shapes(unet, tuple(sample_size), batch)
    rows: list[Row] = []
    conv_in = unet.conv_in
    rows.append(Row("conv_in", "conv_in", "conv", ("conv",), conv_in.kernel_size[0], conv_in.in_channels,
                    conv_in.out_channels, conv_in.stride[0], shapes["conv_in"]))
    blocks = {name: m for name, m in resnet_blocks(unet)}
    for name, m in unet.named_modules():
        kind = type(m).__name__
        if name in blocks:
            c1, c2 = m.conv1, m.conv2
            s1, s2 = shapes[f"{name}.conv1"], shapes[f"{name}.conv2"]
            rows.append(Row(name, "resnet", "conv1", ("conv1",), 3, c1.in_channels, c1.out_channels, 1, s1))
            rows.append(Row(name, "resnet", "conv2", ("conv2",), 3, c2.in_channels, c2.out_channels, 1, s2))
            rows.append(Row(name, "resnet", "conv1+conv2", ("conv1", "conv2"), 5, c1.in_channels, c2.out_channels,
                            1, s1))
            # one conv kept (SPEC A3): an irreducible conv (a change of width) must stay; among reducible
            # ones, the larger L1 norm
            if c1.in_channels != c1.out_channels or _l1(c1) >= _l1(c2):
                one = ("conv1",)
            else:
                one = ("conv2",)
            rows.append(Row(name, "resnet", "conv1+conv2", one, 3, c1.in_channels, c2.out_channels, 1, s1))
        elif kind in ("Upsample2D", "Downsample2D") and getattr(m, "conv", None) is not None:
            conv = m.conv
            if not isinstance(conv, nn.Conv2d):
                raise DepthcutError(f"{name}: a {kind} whose conv is {type(conv).__name__} is not supported")
            row = Row(name, "upsample" if kind == "Upsample2D" else "downsample", "conv", ("conv",),
                      conv.kernel_size[0], conv.in_channels, conv.out_channels, conv.stride[0], shapes[f"{name}.conv"])
            rows.append(row)
            if kind == "Upsample2D" and conv.in_channels == conv.out_channels and conv.stride == (1, 1):
                rows.append(Row(name, "upsample", "conv", (), 0, conv.in_channels, conv.out_channels, 1,
                                shapes[f"{name}.conv"]))
    order = {conv: i for i, conv in enumerate(shapes)}          # the hooks fired in execution order

    def first_conv(row: Row) -> int:
        return order[{"conv_in": "conv_in", "resnet": f"{row.module}.conv1"}.get(row.kind, f"{row.module}.conv")]
    return sorted(rows, key=first_conv)   # stable: a block's rows keep their order
