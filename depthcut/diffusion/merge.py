"""A diffusers ResNet block with its inner nonlinearity removed: merged, and the function it must equal.

The intended function of a ResNet-block row that removes the nonlinearity (``Row.span == "conv1+conv2"``) is the
original block with

* GroupNorm + SiLU + dropout between conv1 and conv2 replaced by identity,
* every pruned conv replaced by identity,
* the kept convs' padding moved to the block input (zero padding of sum(p_i)) and the kept convs unpadded,
  the time embedding added where it was (after conv1, or after conv1's identity: on the padded map),
* a new GroupNorm ``postnorm`` after conv2 (before the residual add) that the fine-tune learns,

and everything else unchanged (norm1, SiLU, the shortcut, ``output_scale_factor``). Because the embedding is
added on the padded map and conv2 is then unpadded, conv2 sees a spatially constant map there: its contribution
is conv2's kernel summed over space times the embedding, so the merged block is ONE conv plus a projected
embedding: ``MergedResnetBlock`` (the kernels composed by depthcut.cnn.merge, in float64). :func:`intended_block`
computes the intended function from the original block's own modules, without any composed kernel, so that a
wrong merge cannot agree with it.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..cnn.merge import ConvParams, compose
from ..errors import DepthcutError
from .unet import Row


def postnorm_for(channels: int) -> nn.GroupNorm:
    """LayerMerge's new GroupNorm after a merged conv: 32 groups, or one per channel when 32 does not divide C."""
    return nn.GroupNorm(32 if channels % 32 == 0 else channels, channels)


class MergedResnetBlock(nn.Module):
    """Drop-in replacement of a diffusers ``ResnetBlock2D`` (same ``forward(input_tensor, temb)``) for a row that
    removes its inner nonlinearity: norm1 -> SiLU -> one conv (``kernel``, 'same' padding) + projected time
    embedding -> postnorm, plus the original shortcut."""

    def __init__(self, block: nn.Module, row: Row):
        super().__init__()
        if row.span != "conv1+conv2" or not row.kept:
            raise DepthcutError(f"{row.key}: only rows that remove the block's inner nonlinearity are merged here")
        self.norm1 = copy.deepcopy(block.norm1)
        self.nonlinearity = copy.deepcopy(block.nonlinearity)
        self.conv_shortcut = copy.deepcopy(block.conv_shortcut)
        self.output_scale_factor = block.output_scale_factor
        self.skip_time_act = block.skip_time_act
        c1, c2, proj = block.conv1, block.conv2, block.time_emb_proj
        if row.kept not in (("conv1", "conv2"), ("conv1",), ("conv2",)):
            raise DepthcutError(f"{row.key}: unknown option {row.kept}")
        first, last = (c1 if "conv1" in row.kept else c2), (c2 if "conv2" in row.kept else c1)
        k = sum(getattr(block, c).kernel_size[0] for c in row.kept) - len(row.kept) + 1
        like = {"dtype": c1.weight.dtype, "device": c1.weight.device}   # never round through float32
        self.conv = nn.Conv2d(first.in_channels, last.out_channels, k, padding=k // 2, **like)
        self.time_emb_proj = nn.Linear(proj.in_features, last.out_channels, **like) if proj is not None else None
        self.postnorm = postnorm_for(last.out_channels).to(**like)
        self.kept = row.kept
        if c1.weight.is_meta:       # built on the meta device by from_pretrained: the weights come from the file
            return
        zero = lambda c: c.bias if c.bias is not None else torch.zeros(c.out_channels)  # noqa: E731
        with torch.no_grad():
            if row.kept == ("conv1", "conv2"):
                merged = compose(ConvParams(c1.weight, zero(c1)), ConvParams(c2.weight, zero(c2)))   # unpadded
                w, b = merged.weight, merged.bias
                through = c2.weight.double().sum((2, 3))            # what conv2 does to a constant map
            elif row.kept == ("conv1",):
                w, b = c1.weight.double(), zero(c1).double()
                through = torch.eye(c1.out_channels, dtype=torch.float64, device=c1.weight.device)
            else:
                w, b = c2.weight.double(), zero(c2).double()
                through = c2.weight.double().sum((2, 3))
            self.conv.weight.copy_(w.to(c1.weight.dtype))
            self.conv.bias.copy_(b.to(c1.weight.dtype))
            if proj is not None:
                self.time_emb_proj.weight.copy_((through @ proj.weight.double()).to(proj.weight.dtype))
                self.time_emb_proj.bias.copy_((through @ proj.bias.double()).to(proj.bias.dtype))

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None, *args, **kwargs) -> torch.Tensor:
        h = self.conv(self.nonlinearity(self.norm1(input_tensor)))
        if self.time_emb_proj is not None and temb is not None:
            t = temb if self.skip_time_act else self.nonlinearity(temb)
            h = h + self.time_emb_proj(t)[:, :, None, None]
        h = self.postnorm(h)
        shortcut = self.conv_shortcut(input_tensor) if self.conv_shortcut is not None else input_tensor
        return (shortcut + h) / self.output_scale_factor


def intended_block(block: nn.Module, row: Row, postnorm: nn.GroupNorm, x: torch.Tensor,
                   temb: torch.Tensor | None) -> torch.Tensor:
    """The intended function of ``row`` (module doc) on ``x``, from ``block``'s own modules and weights."""
    kept = set(row.kept)
    pad = sum(getattr(block, c).padding[0] for c in ("conv1", "conv2") if c in kept)
    h = block.nonlinearity(block.norm1(x))
    h = F.pad(h, (pad,) * 4)                                     # the block's padding, at its input
    if "conv1" in kept:
        h = F.conv2d(h, block.conv1.weight, block.conv1.bias)
    if block.time_emb_proj is not None and temb is not None:
        t = temb if block.skip_time_act else block.nonlinearity(temb)
        h = h + block.time_emb_proj(t)[:, :, None, None]         # where it was: after conv1 (or its identity)
    # norm2, SiLU and dropout: removed by the row
    if "conv2" in kept:
        h = F.conv2d(h, block.conv2.weight, block.conv2.bias)
    h = postnorm(h)
    shortcut = block.conv_shortcut(x) if block.conv_shortcut is not None else x
    return (shortcut + h) / block.output_scale_factor


class IntendedResnetBlock(nn.Module):
    """:func:`intended_block` as a module (the original block's modules, a given postnorm): the reference a
    whole merged U-Net is compared with."""

    def __init__(self, block: nn.Module, row: Row, postnorm: nn.GroupNorm):
        super().__init__()
        self.block, self.row, self.postnorm = block, row, postnorm

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None, *args, **kwargs) -> torch.Tensor:
        return intended_block(self.block, self.row, self.postnorm, input_tensor, temb)


def _set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    if isinstance(parent, (nn.ModuleList, nn.Sequential)) and attr.isdigit():
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)


def check_plan(unet: nn.Module, rows: list[Row]) -> None:
    """A plan decides every ResNet block once (both single-conv rows, or one row that removes the nonlinearity)
    and every resampling conv once; one line naming the first module that is not decided exactly once."""
    from .unet import resnet_blocks

    by_module: dict[str, list[Row]] = {}
    for r in rows:
        by_module.setdefault(r.module, []).append(r)
    for name, _ in resnet_blocks(unet):
        spans = sorted(r.span for r in by_module.get(name, []))
        if spans not in (["conv1", "conv2"], ["conv1+conv2"]):
            raise DepthcutError(f"plan decides ResNet block {name} as {spans or 'nothing'}: it needs either its "
                                f"conv1 and conv2 rows, or one conv1+conv2 row")
    for name, found in by_module.items():
        if found[0].kind != "resnet" and len(found) != 1:
            raise DepthcutError(f"plan decides {name} {len(found)} times")


def apply_plan(unet: nn.Module, rows: list[Row]) -> nn.Module:
    """A copy of ``unet`` with the plan's rows applied: merged ResNet blocks, identity up-sampling convs; the
    caller's model is not changed."""
    check_plan(unet, rows)
    return apply_plan_in_place(copy.deepcopy(unet), rows)


def apply_plan_in_place(unet: nn.Module, rows: list[Row]) -> nn.Module:
    """The rows that change the network (merges, identities), applied to ``unet`` itself."""
    for row in rows:
        if row.kind == "resnet" and row.span == "conv1+conv2":
            _set_module(unet, row.module, MergedResnetBlock(unet.get_submodule(row.module), row))
        elif row.kind == "upsample" and not row.kept:
            unet.get_submodule(row.module).conv = nn.Identity()
    return unet


def intended_unet(unet: nn.Module, rows: list[Row], merged: nn.Module) -> nn.Module:
    """The intended function of the plan as a U-Net: the original modules with the plan's changes, each merged
    block's postnorm shared with ``merged`` (the learned part has no original to come from)."""
    out = copy.deepcopy(unet)
    for row in rows:
        if row.kind == "resnet" and row.span == "conv1+conv2":
            block = out.get_submodule(row.module)
            _set_module(out, row.module, IntendedResnetBlock(block, row, merged.get_submodule(row.module).postnorm))
        elif row.kind == "upsample" and not row.kept:
            out.get_submodule(row.module).conv = nn.Identity()
    return out
