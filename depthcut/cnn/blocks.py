"""Valid blocks and kernel options of a chain (SPEC A2-A3): the rows of the latency and importance tables.

A block (i, j) merges c_{i+1}..c_j into one convolution. It is *valid* when it strictly contains no barrier
and, for every residual (s, t), it lies inside [s, t], is disjoint from it, or contains all of it — the last
only when the skip can be folded into the merged kernel (identity, or a 1x1 projection with the stride of the
convs it bypasses). A *kernel option* says how many convs of each type (kernel, depthwise) are kept: at least
the irreducible ones, at least one in total; the concrete convs kept are the largest-|W| ones.
"""
from __future__ import annotations

import itertools
import math
from typing import Mapping

import torch
from torch import nn

from .chain import Candidate, Chain, ConvSpec, Skip


def _respects(i: int, j: int, s: Skip) -> bool:
    inside = s.start <= i and j <= s.end
    disjoint = j <= s.start or i >= s.end
    contains = i <= s.start and s.end <= j
    return inside or disjoint or (contains and s.foldable)


def valid_blocks(chain: Chain) -> list[tuple[int, int]]:
    """All (i, j), 0 <= i < j <= L, that are valid blocks, in (i, j) order."""
    barriers = set(chain.barriers)
    out = []
    for i in range(chain.length):
        for j in range(i + 1, chain.length + 1):
            if j - 1 > i and (j - 1) in barriers:
                break                      # j-1 is now strictly inside, and stays so for larger j
            if all(_respects(i, j, s) for s in chain.skips):
                out.append((i, j))
    return out


def _l1(conv: ConvSpec, weights: Mapping[str, torch.Tensor | float] | None) -> float:
    if not weights:
        return 0.0
    w = weights.get(conv.path)
    if w is None:
        w = weights.get(conv.path + ".weight")
    if w is None:
        return 0.0
    return float(w) if isinstance(w, (int, float)) else float(w.detach().abs().sum())


def kernel_options(chain: Chain, i: int, j: int,
                   weights: Mapping[str, torch.Tensor | float] | None = None) -> list[Candidate]:
    """The kernel options of block (i, j) as candidates, one per distinct (K, depthwise) (SPEC A3).

    ``weights`` maps conv module paths (or state-dict keys ``path.weight``) to weights, or directly to their
    L1 norms (floats); it decides which reducible convs an option keeps (largest L1 norm). Without weights
    the earliest convs are kept.
    """
    convs = [chain.conv(p) for p in range(i + 1, j + 1)]
    types: dict[tuple[int, bool], list[ConvSpec]] = {}
    for c in convs:
        types.setdefault(c.kind, []).append(c)
    l1 = {c.index: _l1(c, weights) for c in convs}
    ranges = []
    for t, members in types.items():
        fixed = [c for c in members if not c.reducible]
        free = sorted((c for c in members if c.reducible), key=lambda c: (-l1[c.index], c.index))
        ranges.append([(t, fixed + free[:m]) for m in range(len(free) + 1)])

    # a folded projection conv is dense: the merged conv can then not stay grouped (a BN-only branch is diagonal)
    dense_skip = any(s.folded_by(i, j) and s.projection is not None for s in chain.skips)
    best: dict[tuple[int, int], tuple[tuple[float, int], list[ConvSpec]]] = {}
    for combo in itertools.product(*ranges):
        kept = [c for _, cs in combo for c in cs]
        if not kept:
            continue
        K = sum(c.kernel for c in kept) - len(kept) + 1
        groups = merged_groups(kept, dense_skip)
        score = (sum(l1[c.index] for c in kept), len(kept))
        if (K, groups) not in best or score > best[(K, groups)][0]:
            best[(K, groups)] = (score, kept)

    first, last = convs[0], convs[-1]
    stride = 1
    for c in convs:
        stride *= c.stride
    act = chain.acts[j]
    out = []
    for (K, groups), (_, kept) in sorted(best.items()):
        dw = groups > 1 and groups == first.in_channels == last.out_channels and all(c.depthwise for c in kept)
        out.append(Candidate(start=i, end=j, kept=tuple(sorted(c.index for c in kept)), kernel=K, stride=stride,
                             depthwise=dw, in_channels=first.in_channels, out_channels=last.out_channels,
                             input_shape=tuple(first.input_shape), activation=act.kind if act else None,
                             groups=groups))
    return out


def merged_groups(kept: list[ConvSpec], dense_skip: bool = False) -> int:
    """Groups of the conv that composes ``kept``: block-diagonal kernels compose into a block-diagonal kernel
    with gcd(g1, g2, ...) groups (a dense conv, or a folded projection, makes it dense). Depthwise convs of a
    chain all have the same width, so an all-depthwise block stays depthwise."""
    g = 0
    for c in kept:
        g = math.gcd(g, c.groups)
    return 1 if dense_skip or g == 0 else g


def conv_l1_norms(model: nn.Module, chain: Chain) -> dict[str, float]:
    """L1 norm |W| of every chain conv's weight, keyed by module path (computed once per conv)."""
    with torch.no_grad():
        return {c.path: float(model.get_submodule(c.path).weight.abs().sum()) for c in chain.convs}


def enumerate_candidates(chain: Chain, model_or_gm: nn.Module | None = None) -> list[Candidate]:
    """Every (valid block, kernel option) of the chain, in block order."""
    weights = conv_l1_norms(model_or_gm, chain) if model_or_gm is not None else None
    return [cand for i, j in valid_blocks(chain) for cand in kernel_options(chain, i, j, weights)]
