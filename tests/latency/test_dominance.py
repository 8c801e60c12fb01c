"""Dominated candidates are dropped exactly: the LayerMerge frontier over the kept candidates equals the one
over all candidates at every budget, and candidates the MAC bound decides are never built or timed."""
from __future__ import annotations

import random

import pytest

from depthcut.cnn.build import is_trivial
from depthcut.cnn.graph import analyze_zoo
from depthcut.latency.dominance import macs, max_accuracy_importance, prune_dominated
from depthcut.latency.overhead import in_network_ms
from depthcut.search.layermerge import solve
from depthcut.search.tables import Row

STEPS = 400


def synthetic_latency(candidates, per_call_ms=0.02, ms_per_gmac=1.0, batch=None):
    """A deterministic stand-in for a backend: a fixed cost per call plus a cost per MAC."""
    return {c.key: per_call_ms + ms_per_gmac * macs(c, batch) / 1e9 for c in candidates if c.kept}


def frontier_values(candidates, latency, importance, length, body_ms, budgets):
    rows = [Row(c.start, c.end, latency.get(c.key, 0.0), importance[c.key], ref=c) for c in candidates]
    frontier = solve(rows, length, steps=STEPS, max_latency_ms=body_ms)
    return [round(frontier.best(b).importance, 9) for b in budgets]


@pytest.mark.parametrize("name, base_accuracy, overhead", [
    ("resnet20", 92.0, None), ("resnet50", 75.0, None), ("resnet20", 20.0, None),
    ("resnet20", 92.0, (0.015, 2e-9)), ("resnet50", 75.0, (0.018, 1e-8))])
def test_frontier_is_unchanged_by_dropping_dominated_candidates(name, base_accuracy, overhead):
    """``overhead``: the DP sees rows minus the per-call cost (depthcut.latency.overhead), as compress does."""
    analysis = analyze_zoo(name, input_shape=(1, 3, 64, 64) if name == "resnet50" else None)
    candidates, length = analysis.candidates, analysis.chain.length
    timed_ms = synthetic_latency(candidates)
    in_network = None if overhead is None else (lambda c, t: in_network_ms(c, t, overhead))
    latency = timed_ms if overhead is None else {c.key: in_network(c, t) for c in candidates
                                                 for k, t in [(c.key, timed_ms.get(c.key, 0.0))] if c.kept}
    timed: list[str] = []

    def time_rows(rows):
        timed.extend(c.key for c in rows)
        return {c.key: timed_ms[c.key] for c in rows}

    top = max_accuracy_importance(base_accuracy)
    kept, dominated, measured = prune_dominated(candidates, time_rows, max_importance=top, steps=STEPS,
                                                in_network=in_network)
    assert dominated, "the test must exercise pruning"
    assert not {d.key for d in dominated if d.measured_ms is None} & set(timed)     # bound: never timed
    assert all(measured[c.key] == latency.get(c.key, 0.0) for c in kept)
    if top > 2:                                  # base accuracy < 30.7%: a 2-conv merge may be worth more than 2
        assert all(d.span >= 3 for d in dominated)
    rng = random.Random(0)
    body = sum(latency[c.key] for c in candidates if is_trivial(c))
    budgets = [body * f for f in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)]
    budgets = [b for b in budgets if b >= solve([Row(c.start, c.end, latency.get(c.key, 0.0), 1.0)
                                                 for c in candidates], length, steps=STEPS,
                                                max_latency_ms=body).min_latency_ms]
    for trial in range(3):
        # any importance the scores can take: originals 1, the others anywhere in (0, top]
        importance = {c.key: 1.0 if is_trivial(c) else rng.uniform(0.05, top) for c in candidates}
        full = frontier_values(candidates, latency, importance, length, body, budgets)
        pruned = frontier_values(kept, latency, importance, length, body, budgets)
        assert full == pruned, f"trial {trial}"


def test_resnet152_keeps_a_buildable_table():
    """ResNet-152 (224x224) yields 9,591 candidates, the largest a 73x73 conv of 44.7 GB; with an additive
    per-call + per-MAC latency the dominated ones go, the 73x73 one by the bound, never built."""
    analysis = analyze_zoo("resnet152")
    assert len(analysis.candidates) == 9591
    latency = synthetic_latency(analysis.candidates)
    timed = []

    def time_rows(rows):
        timed.extend(rows)
        return {c.key: latency[c.key] for c in rows}

    kept, dominated, _ = prune_dominated(analysis.candidates, time_rows, max_importance=1.3)
    biggest = max(analysis.candidates, key=lambda c: c.in_channels * c.out_channels * c.kernel ** 2)
    assert (biggest.kernel, biggest.in_channels, biggest.out_channels) == (73, 1024, 2048)
    assert biggest.key in {d.key for d in dominated}
    assert biggest not in timed
    largest_kept = max(c.in_channels * c.out_channels * c.kernel ** 2 * 4 for c in kept if c.kept)
    assert largest_kept < 2e9                      # every kept candidate's weights fit in memory (bytes)
    assert len(kept) < len(analysis.candidates) / 5
