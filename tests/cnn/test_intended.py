"""Every structure of the corpus deploys exactly the intended function (SPEC A4): the original network with
only the plan's changes, built independently of the rewrite (depthcut.cnn.intended), compared in float64.
Random plans and the merge-everything plan, on the merged (deployed) and the unmerged (fine-tuned) forms."""
from __future__ import annotations

import random

import pytest
import torch

from corpus import CORPUS
from depthcut.cnn.build import build_merged, build_unmerged, identity_plan, is_trivial, plan_from_blocks
from depthcut.cnn.graph import analyze
from depthcut.cnn.intended import intended_network, plan_structure_errors, structure_ok, tolerance_for, verify_plan
from depthcut.errors import UnsupportedModelError


def plans(analysis, n_random: int = 4):
    """The merge-everything plan (longest block from every position, all convs kept), the prune-everything
    plan (longest block, fewest convs) and random partitions with random options."""
    by_start = {}
    for c in analysis.candidates:
        by_start.setdefault(c.start, []).append(c)
    out = []
    for key in (lambda c: (c.end, len(c.kept)), lambda c: (c.end, -len(c.kept))):
        blocks, pos = [], 0
        while pos < analysis.chain.length:
            blocks.append(max(by_start[pos], key=key))
            pos = blocks[-1].end
        out.append(plan_from_blocks(analysis.chain, blocks))
    for seed in range(n_random):
        rng, blocks, pos = random.Random(seed), [], 0
        while pos < analysis.chain.length:
            blocks.append(rng.choice(by_start[pos]))
            pos = blocks[-1].end
        out.append(plan_from_blocks(analysis.chain, blocks))
    return out


def test_the_corpus_is_large_enough():
    assert len(CORPUS) >= 40


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_plan_deploys_the_intended_function(name):
    case = CORPUS[name]()
    if case.refused is not None:
        with pytest.raises(UnsupportedModelError, match=case.refused):
            analyze(case.model, case.input_shape, exclude=case.exclude)
        return
    analysis = analyze(case.model, case.input_shape, exclude=case.exclude)
    chain = analysis.chain
    assert sum(not is_trivial(c) for c in analysis.candidates) >= case.min_candidates
    # the reference itself: with an identity plan it is the original network
    x = torch.randn(2, *case.input_shape[1:]).to(case.dtype)
    with torch.no_grad():
        want = case.model(x).double()
        got = intended_network(case.model, chain, identity_plan(chain), case.input_shape)(x).double()
    assert ((got - want).norm() / want.norm()) <= (1e-6 if case.dtype == torch.float32 else 1e-3)
    wrong = []
    for k, plan in enumerate(plans(analysis)):
        where = f"plan {k} ({[b.key for b in plan.blocks if not is_trivial(b)]})"
        # the rewrite itself, float64 end to end: exact to rounding
        errors = plan_structure_errors(case.model, analysis.gm, chain, plan, case.input_shape)
        if not structure_ok(errors) or max(errors["merged"], errors["unmerged"]) > 1e-9:   # small nets: no excuse
            wrong.append(f"{where} (float64): {errors}")
        # the deployed network in the model's own dtype: only the rounding of the merged kernels on top
        merged = build_merged(build_unmerged(analysis.gm, chain, plan).eval(), chain, plan)
        error = verify_plan(merged, case.model, chain, plan, case.input_shape)
        if not error <= tolerance_for(case.model):
            wrong.append(f"{where} deployed ({case.dtype}): {error:.2e}")
    assert not wrong, "\n".join(wrong)
