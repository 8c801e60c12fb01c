"""Every registered method (depthcut.methods) through the same pipeline, and what each may use; LayerMerge's
search space contains the baselines', so at equal modelled latency it is never worse (issue 9 §4)."""
from __future__ import annotations

import math
import random

import pytest

from depthcut.cnn.build import is_trivial
from depthcut.zoo import analyze_zoo
from depthcut.errors import InfeasibleBudgetError
from depthcut.latency.dominance import macs
from depthcut.methods import get_method, method_names, natural_blocks
from depthcut.search.tables import Row

from test_compression import config, trained  # noqa: F401  (trained is a fixture)


def _chain_of(model):
    from depthcut.cnn.graph import analyze
    return analyze(model, (1, 1, 8, 8)).chain


def _all_kept(c):
    return tuple(c.kept) == tuple(range(c.start + 1, c.end + 1))


RULES = {
    "layermerge": lambda c, chain: True,
    "layermerge-damage": lambda c, chain: True,
    "two-stage": lambda c, chain: _all_kept(c),
    "layer-pruning": lambda c, chain: len(c.kept) == 1,
    "depthshrinker": lambda c, chain: c.end == c.start + 1 and _all_kept(c) or (
        _all_kept(c) and (c.start, c.end) in natural_blocks(chain)),
}


PLAN_METHODS = [m for m in method_names() if get_method(m).kind == "plan"]


def test_every_registered_method_has_a_rule_here():
    assert sorted(PLAN_METHODS) == sorted(RULES)
    assert set(method_names()) - set(PLAN_METHODS) == {"channel", "layermerge+channel"}


@pytest.fixture(scope="module")
def mbv2():
    return analyze_zoo("mobilenet_v2_fmnist")


@pytest.fixture(scope="module")
def zoo_analyses(mbv2):
    return {"mobilenet_v2_fmnist": mbv2, "resnet20_fmnist": analyze_zoo("resnet20_fmnist")}



def synthetic_rows(analysis, candidates, seed=0):
    rng = random.Random(seed)
    rows = []
    for c in candidates:
        lat = 0.0 if not c.kept else 0.01 + macs(c) / 1e8
        imp = 1.0 if is_trivial(c) else rng.uniform(0.6, 1.05)
        rows.append(Row(c.start, c.end, lat, imp, ref=c))
    return rows


@pytest.mark.parametrize("model", ["resnet20_fmnist", "mobilenet_v2_fmnist"])
@pytest.mark.parametrize("name", PLAN_METHODS)
def test_a_method_uses_only_its_rows_and_its_plans_fit(name, model, zoo_analyses):
    analysis = zoo_analyses[model]
    method, chain = get_method(name), analysis.chain
    usable = method.candidates(analysis.candidates, chain)
    assert all(RULES[name](c, chain) for c in usable)
    assert {c.end for c in usable if is_trivial(c)} == set(range(1, chain.length + 1))   # originals stay
    rows = synthetic_rows(analysis, usable)
    full = sum(r.latency_ms for r in rows if is_trivial(r.ref))
    frontier = method.search(rows, chain.length, 2000, full, chain=chain)
    if (model, name) == ("resnet20_fmnist", "depthshrinker"):
        # its blocks are basic blocks: two 3x3 convs merge into a 5x5 of more MACs, never faster, so skipped
        assert frontier.min_latency_ms == pytest.approx(full)
        return
    assert frontier.min_latency_ms < full                                  # the method can remove something
    for f in (1.0, 0.9, 0.8, 0.7, 0.6):
        try:
            plan = frontier.best(full * f)
        except InfeasibleBudgetError:
            assert full * f < frontier.min_latency_ms
            continue
        assert plan.latency_ms <= full * f + 1e-12
        assert [r.start for r in plan.rows] == [0] + [r.end for r in plan.rows[:-1]]
        assert plan.rows[-1].end == chain.length and all(RULES[name](r.ref, chain) for r in plan.rows
                                                         if not is_trivial(r.ref))


def test_natural_blocks_of_mobilenet_v2_are_its_inverted_residuals(mbv2):
    blocks = natural_blocks(mbv2.chain)
    assert blocks and all(b - a in (2, 3) for a, b in blocks)              # expand-dw-project or dw-project
    assert all(mbv2.chain.acts[b] is None for a, b in blocks)               # each ends on a linear bottleneck


@pytest.mark.parametrize("seed", range(3))
def test_layermerge_is_never_worse_than_a_baseline_at_equal_modelled_latency(mbv2, seed):
    """Its rows contain every baseline's, so at every budget the DP finds at least their importance (less the
    grid's rounding: a plan within L grid steps of the budget may not fit the grid)."""
    chain, L = mbv2.chain, mbv2.chain.length
    rows = synthetic_rows(mbv2, mbv2.candidates, seed)
    full = sum(r.latency_ms for r in rows if is_trivial(r.ref))
    lm = get_method("layermerge").search(rows, L, 2000, full, chain=chain)
    for name in PLAN_METHODS:
        if name in ("layermerge", "layermerge-damage"):     # the latter scores log I: another objective
            continue
        method = get_method(name)
        mine = [r for r in rows if r.ref in set(method.candidates([r.ref for r in rows], chain))]
        other = method.search(mine, L, 2000, full, chain=chain)
        for f in (0.95, 0.85, 0.75, 0.65):
            b = full * f
            try:
                theirs = other.best(b * (1 - L / 2000))
            except InfeasibleBudgetError:
                continue
            assert lm.best(b).importance >= theirs.importance - 1e-9, (name, f)


def test_layermerge_damage_trades_a_block_for_less_damage_where_the_papers_objective_does_not():
    """Three convs, 2 ms allowed of 3: removing conv 2 (Δacc -60 points, free) keeps three blocks; merging convs
    1-2 (Δacc -5 points, 1 ms) leaves two. Σ I takes the third block (2.55 against 1.95); the summed damage
    takes the merge (-0.05 against -0.60)."""
    rows = [Row(0, 1, 1.0, 1.0, ref="c1"), Row(1, 2, 1.0, 1.0, ref="c2"), Row(2, 3, 1.0, 1.0, ref="c3"),
            Row(1, 2, 0.0, math.exp(-0.60), ref="c2 removed"), Row(0, 2, 1.0, math.exp(-0.05), ref="c1-c2 merged")]
    papers = get_method("layermerge").search(rows, 3, 2000, 3.0).best(2.0)
    damage = get_method("layermerge-damage").search(rows, 3, 2000, 3.0).best(2.0)
    assert sorted(r.ref for r in papers.rows) == ["c1", "c2 removed", "c3"]
    assert sorted(r.ref for r in damage.rows) == ["c1-c2 merged", "c3"]
    assert damage.importance == pytest.approx(-0.05) and damage.latency_ms <= 2.0


@pytest.mark.parametrize("name", method_names())
def test_every_method_runs_through_compress(trained, tmp_path, name):  # noqa: F811
    from depthcut.compression import compress

    model, splits = trained
    try:
        result = compress(model, config(tmp_path, method=name, speedup=1.1, importance="none"), splits=splits)
    except InfeasibleBudgetError as e:               # a baseline may not reach the target: said, with its minimum
        assert name != "layermerge" and "fastest plan measures" in str(e)
        return
    r = result.report
    assert r["method"] == name and r["speedup_high"] >= 1.1
    # every probe names its plan, so any probed network can be rebuilt and timed again; the chosen one is probed
    if name == "channel":                             # width: fewer channels, as many convs
        assert r["params_after"] < r["params_before"] and r["convs_after"] == r["convs_before"]
        assert 0 < r["pruning_ratio"] < 0.9
        assert (r["pruning_ratio"], r["channel_scope"]) in {(p["pruning_ratio"], p["channel_scope"])
                                                             for p in r["probes"]}
        return
    assert r["intended_structure_error"] < 1e-9
    if name == "layermerge+channel":                  # depth and width: a width option and its landed depth plan
        assert r["width"]["name"] in [w["name"] for w in r["width_options"]]
        assert r["probes"] and r["plan_blocks"]
        return
    chosen = sorted(c.key for c in result.plan.blocks)
    assert chosen in [sorted(p["blocks"]) for p in r["probes"]]
    # the plan's blocks obey the method's rule
    assert all(RULES[name](c, _chain_of(model)) for c in result.plan.blocks if not is_trivial(c))
