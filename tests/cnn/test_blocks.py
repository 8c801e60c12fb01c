"""Valid blocks and kernel options (SPEC A2-A3): reference counts, the published latency tables' block sets,
and the rules on synthetic chains (brute force with hypothesis)."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from depthcut.cnn.blocks import enumerate_candidates, kernel_options, valid_blocks
from depthcut.cnn.chain import Activation, Chain, ConvSpec, Skip
from depthcut.cnn.graph import analyze
from depthcut.zoo import get

TABLES = Path(__file__).resolve().parents[1] / "data" / "kim23_latency_tables"   # see its README.md


def table_blocks(name: str) -> set[tuple[int, int]]:
    path = TABLES / name
    with open(path) as f:
        return {(int(r["st"]), int(r["end"])) for r in csv.DictReader(f)}


_cache: dict = {}


def zoo_analysis(name: str, **kw):
    if name not in _cache:
        e = get(name)
        _cache[name] = analyze(e.create(**kw), e.input_shape, e.chain_exclude)
    return _cache[name]


# ------------------------------------------------------------------------------------------------ references

@pytest.mark.parametrize("name, blocks, cands", [
    ("resnet34", 62, 150), ("mobilenet_v2", 171, 391), ("mobilenet_v2_1.4", 171, 391)])
def test_reference_counts(name, blocks, cands):
    a = zoo_analysis(name)
    assert len(a.blocks) == blocks
    assert len(a.candidates) == cands


@pytest.mark.parametrize("name, table", [("mobilenet_v2", "mbv2_1.0_time_fish_gpu1_1228.csv"),
                                         ("mobilenet_v2_1.4", "mbv2_1.4_time_fish_gpu1_0103.csv")])
def test_mobilenet_v2_blocks_equal_published_latency_table(name, table):
    a = zoo_analysis(name)
    assert a.chain.length == 50
    assert set(a.blocks) == table_blocks(table)


def test_vgg19_bn_blocks_equal_published_latency_table():
    from depthcut.zoo.vgg import vgg19_bn
    a = analyze(vgg19_bn(classifier_hidden=16), (1, 3, 224, 224))
    assert a.chain.length == 16
    assert set(a.blocks) == table_blocks("vgg19_no_trt_time_fish_gpu1_0317.csv")
    assert len(a.blocks) == 36
    # VGG convs are all irreducible or reducible 3x3 dense: block (4, 8) = 4 convs, c5 changes width
    opts = [c for c in a.candidates if (c.start, c.end) == (4, 8)]
    assert [c.kernel for c in opts] == [3, 5, 7, 9] and all(1 + 4 * 2 >= c.kernel for c in opts)


def test_resnet34_options_and_candidate_fields():
    a = zoo_analysis("resnet34")
    by_block: dict = {}
    for c in a.candidates:
        by_block.setdefault((c.start, c.end), []).append(c)
    # a block of 2m reducible 3x3 convs has 2m options K = 3, 5, ..., 4m+1
    assert [c.kernel for c in by_block[(0, 6)]] == [3, 5, 7, 9, 11, 13]
    assert [c.kernel for c in by_block[(6, 7)]] == [3]                 # the stride-2 conv alone
    c = by_block[(6, 7)][0]
    assert (c.stride, c.in_channels, c.out_channels, c.input_shape) == (2, 64, 128, (1, 64, 56, 56))
    assert c.activation == "relu" and c.kept == (7,) and not c.depthwise
    # the kept convs of a K=5 option over 4 convs are the two with the largest L1 norm
    k5 = next(c for c in by_block[(0, 4)] if c.kernel == 5)
    norms = {p: float(a.gm.get_submodule(a.chain.conv(p).path).weight.detach().abs().sum()) for p in range(1, 5)}
    assert set(k5.kept) == set(sorted(norms, key=norms.get)[-2:])


def test_mobilenet_v2_options():
    a = zoo_analysis("mobilenet_v2")
    opts = {(c.start, c.end): [] for c in a.candidates}
    for c in a.candidates:
        opts[(c.start, c.end)].append(c)
    # (0, 1): the stride-1 depthwise conv of features[1] alone, merged block stays depthwise
    assert [(c.kernel, c.depthwise) for c in opts[(0, 1)]] == [(3, True)]
    # (5, 8): expand, dw (reducible), project, identity skip folded: dw kept or pruned
    assert [(c.kernel, c.kept) for c in opts[(5, 8)]] == [(1, (6, 8)), (3, (6, 7, 8))]
    # (2, 5): the strided dw conv is irreducible and always kept
    assert all(4 in c.kept and c.stride == 2 for c in opts[(2, 5)])
    assert opts[(5, 8)][0].activation is None                 # linear bottleneck end


# ------------------------------------------------------------------------------------------------ synthetic

def conv(p, cin, cout, k=3, s=1, groups=1):
    return ConvSpec(index=p, path=f"c{p}", node=f"c{p}", in_channels=cin, out_channels=cout, kernel=k, stride=s,
                    padding=k // 2, groups=groups, bias=False, input_shape=(1, cin, 8, 8))


def make_chain(convs, skips=(), barriers=()):
    acts = [None] + [Activation("relu", f"a{p}") for p in range(1, len(convs) + 1)]
    return Chain(convs=list(convs), acts=acts, skips=list(skips), barriers=sorted(barriers))


def test_kernel_options_types_and_collapse():
    # c1 dense 3x3 reducible, c2 dw 3x3 reducible, c3 dw 5x5 reducible, c4 1x1 irreducible
    ch = make_chain([conv(1, 8, 8), conv(2, 8, 8, groups=8), conv(3, 8, 8, k=5, groups=8), conv(4, 8, 16, k=1)])
    opts = kernel_options(ch, 0, 4, {"c1": torch.ones(1), "c2": torch.ones(1), "c3": torch.ones(1)})
    # counts: dense3 in {0,1}, dw3 in {0,1}, dw5 in {0,1}, 1x1 always -> K in {1,3,5,7,9} dense only
    assert [(c.kernel, c.depthwise) for c in opts] == [(1, False), (3, False), (5, False), (7, False), (9, False)]
    k3 = [c for c in opts if c.kernel == 3]
    assert len(k3) == 1 and 4 in k3[0].kept                    # (K=3) from dense3 or dw3 collapses into one
    dwonly = kernel_options(ch, 1, 3)
    assert [(c.kernel, c.depthwise) for c in dwonly] == [(3, True), (5, True), (7, True)]
    assert all(c.out_channels == 8 and c.in_channels == 8 for c in dwonly)


def test_kernel_options_keep_largest_norm():
    ch = make_chain([conv(p, 8, 8) for p in range(1, 5)])
    w = {"c1.weight": torch.full((2,), 1.0), "c2.weight": torch.full((2,), 5.0),
         "c3.weight": torch.full((2,), 3.0), "c4.weight": torch.full((2,), 4.0)}
    opts = {c.kernel: c.kept for c in kernel_options(ch, 0, 4, w)}
    assert opts == {3: (2,), 5: (2, 4), 7: (2, 3, 4), 9: (1, 2, 3, 4)}


def test_projection_skip_folding_rule():
    convs = [conv(1, 8, 8), conv(2, 8, 16, s=2, k=1), conv(3, 16, 16, k=1), conv(4, 16, 16)]
    fold = Skip(1, 3, "add", projection="p", projection_kernel=1, projection_stride=2, foldable=True)
    nofold = Skip(1, 3, "add", projection="p", projection_kernel=3, projection_stride=2, foldable=False)
    assert (0, 3) in valid_blocks(make_chain(convs, [fold]))
    assert (0, 3) not in valid_blocks(make_chain(convs, [nofold]))
    assert (1, 3) in valid_blocks(make_chain(convs, [nofold]))       # the skip's own span stays valid


def brute_valid(ch: Chain) -> set[tuple[int, int]]:
    out = set()
    L = ch.length
    for i in range(L):
        for j in range(i + 1, L + 1):
            if any(i < b < j for b in ch.barriers):
                continue
            ok = True
            for s in ch.skips:
                inside = s.start <= i and j <= s.end
                disjoint = j <= s.start or i >= s.end
                contains = i <= s.start and s.end <= j
                ok &= inside or disjoint or (contains and s.foldable)
            if ok:
                out.add((i, j))
    return out


@settings(max_examples=60, deadline=None)
@given(L=st.integers(1, 9), data=st.data())
def test_valid_blocks_match_definition(L, data):
    convs = [conv(p, 4, 4) for p in range(1, L + 1)]
    barriers = data.draw(st.sets(st.integers(1, max(1, L - 1)), max_size=3)) if L > 1 else set()
    skips = []
    for _ in range(data.draw(st.integers(0, 3))):
        s = data.draw(st.integers(0, L - 1))
        t = data.draw(st.integers(s + 1, L))
        skips.append(Skip(s, t, "add", foldable=data.draw(st.booleans())))
    ch = make_chain(convs, skips, barriers)
    got = valid_blocks(ch)
    assert got == sorted(got) and set(got) == brute_valid(ch)
    assert all((p - 1, p) in got or any(p - 1 < b < p for b in barriers) or
               any(not _ok_single(p, s) for s in skips) for p in range(1, L + 1))
    for i, j in got:                                           # every valid block has >= 1 option
        opts = kernel_options(ch, i, j)
        assert [c.kernel for c in opts] == [3 + 2 * m for m in range(j - i)]


def _ok_single(p, s):
    i, j = p - 1, p
    return (s.start <= i and j <= s.end) or j <= s.start or i >= s.end


def test_enumerate_without_model_uses_earliest_convs():
    ch = make_chain([conv(p, 8, 8) for p in range(1, 4)])
    cands = enumerate_candidates(ch)
    assert len(cands) == 1 + 2 + 3 + 1 + 2 + 1
    assert next(c for c in cands if (c.start, c.end, c.kernel) == (0, 3, 5)).kept == (1, 2)
