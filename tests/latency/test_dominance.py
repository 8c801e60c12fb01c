"""Dominated candidates are dropped exactly: the LayerMerge frontier over the kept candidates equals the one
over all candidates at every budget, and candidates the MAC bound decides are never built or timed."""
from __future__ import annotations

import random

import pytest

from depthcut.cnn.build import is_trivial
from depthcut.zoo import analyze_zoo
from depthcut.latency.dominance import macs, max_accuracy_importance, prune_dominated
from depthcut.latency.model import LatencyModel
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
    """``overhead`` (a, b): the DP sees rows minus the per-call cost (depthcut.latency.model), as compress does."""
    analysis = analyze_zoo(name, input_shape=(1, 3, 64, 64) if name == "resnet50" else None)
    candidates, length = analysis.candidates, analysis.chain.length
    timed_ms = synthetic_latency(candidates)
    in_network = None if overhead is None else LatencyModel("per-call", *overhead).row_ms
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


def test_a_candidate_is_dropped_only_beyond_its_timings_interval():
    """Issue 28: on single timings of a loaded machine the same config kept 46, 48 or 49 candidates. A merge
    whose median is above its path's but whose interval overlaps the path's stays (the DP decides it); one
    whose whole interval is above the path's whole interval goes, and the report says why."""
    from depthcut.latency.backends import Timing

    analysis = analyze_zoo("resnet20")
    original = synthetic_latency(analysis.candidates)
    single = {c.end: original[c.key] for c in analysis.candidates if c.end == c.start + 1 and c.kept == (c.end,)}
    # every merge slower than the convs it replaces (a backend where merging never pays): 2 % or 30 %
    exact = {c.key: original[c.key] if c.end == c.start + 1 and c.kept == (c.end,)
             else (1.02 if c.start % 2 else 1.3) * sum(single[p] for p in range(c.start + 1, c.end + 1))
             for c in analysis.candidates if c.kept}
    top = max_accuracy_importance(92.0)
    no_bound = dict(max_importance=top, steps=STEPS, safety=1e9)     # only timings decide
    _, dominated_exact, _ = prune_dominated(analysis.candidates, lambda rows: {c.key: exact[c.key] for c in rows},
                                            **no_bound)
    measured = [d for d in dominated_exact if d.measured_ms is not None]
    assert measured, "the test needs candidates that are dropped after timing"

    def noisy(width):
        def time_rows(rows):     # every row's median as before, its 95 % interval +-width relative
            return {c.key: Timing(exact[c.key], 0.0, exact[c.key], exact[c.key], 30,
                                  exact[c.key] * (1 - width), exact[c.key] * (1 + width)) for c in rows}
        return time_rows

    _, narrow, _ = prune_dominated(analysis.candidates, noisy(1e-9), **no_bound)
    assert {d.key for d in narrow} == {d.key for d in dominated_exact}
    _, wide, _ = prune_dominated(analysis.candidates, noisy(0.05), **no_bound)
    slow = {d.key for d in measured if int(d.key.split("-")[0]) % 2 == 0}
    assert {d.key for d in wide} == slow       # 2 % slower within +-5 %: kept; 30 % slower: dropped
    assert all("measured at least" in d.reason and d.measured_ms >= d.path_ms for d in wide)
    # the same timings always give the same decision
    assert [d.key for d in prune_dominated(analysis.candidates, noisy(0.05), **no_bound)[1]] \
        == [d.key for d in wide]
