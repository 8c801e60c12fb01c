"""Two-stage DP (SPEC A8): stage 1 on the real GPU tables, stage 2 and the importance extension vs brute force."""
import math
import random
from pathlib import Path

import pytest

from depthcut.errors import InfeasibleBudgetError
from depthcut.search import brute
from depthcut.search.tables import Row, load_kim23_csv, single_layer_latency
from depthcut.search.twostage import (conv_blocks, expand, extend_importance, kept_activations,
                                      min_body_latency, normalise_importance, solve_two_stage, stage1)

TABLES = Path(__file__).resolve().parents[1] / "data" / "kim23_latency_tables"   # see its README.md
MBV2_10 = TABLES / "mbv2_1.0_time_fish_gpu1_1228.csv"
MBV2_14 = TABLES / "mbv2_1.4_time_fish_gpu1_0103.csv"
VGG19 = TABLES / "vgg19_no_trt_time_fish_gpu1_0317.csv"


def shortest_path(rows, length):
    """Independent O(L^2) shortest path 0 -> L over the raw rows (no stage 1 at all)."""
    T = {(r.start, r.end): r.latency_ms for r in rows}
    dist = [0.0] + [math.inf] * length
    for j in range(1, length + 1):
        for i in range(j):
            if (i, j) in T:
                dist[j] = min(dist[j], dist[i] + T[(i, j)])
    return dist[length]


def prefix_valid_chains(T, i, j):
    """All chains i = m0 < ... < mk = j whose pieces are rows and whose prefixes (i, m_r) are rows: the
    sub-partitions the stage-1 recursion ranges over."""
    out = []

    def walk(pos, acc, chain):
        if pos == j:
            out.append((acc, chain))
            return
        for m in range(pos + 1, j + 1):
            if (pos, m) in T and (i, m) in T:
                walk(m, acc + T[(pos, m)], chain + [m])

    walk(i, 0.0, [])
    return out


def test_single_layer_sum_of_mbv2_table():
    rows, length = load_kim23_csv(MBV2_10)
    assert (len(rows), length) == (171, 50)
    assert single_layer_latency(rows) == pytest.approx(33.670, abs=1e-3)


@pytest.mark.parametrize("path", [MBV2_10, MBV2_14, VGG19])
def test_stage1_matches_exhaustive_sub_partitions_on_real_tables(path):
    rows, length = load_kim23_csv(path)
    T = {(r.start, r.end): r.latency_ms for r in rows}
    t_opt, split = stage1(rows, length)
    assert set(t_opt) == set(T)
    for (i, j), t in t_opt.items():
        assert t <= T[(i, j)]
        assert t == pytest.approx(min(a for a, _ in prefix_valid_chains(T, i, j)), abs=1e-9)
        # The recorded split really is that fast.
        assert t == pytest.approx(sum(T[b] for b in expand(i, j, split)), abs=1e-9)


@pytest.mark.parametrize("path", [MBV2_10, MBV2_14, VGG19])
def test_min_body_latency_equals_independent_shortest_path(path):
    rows, length = load_kim23_csv(path)
    ms, bounds = min_body_latency(rows, length)
    T = {(r.start, r.end): r.latency_ms for r in rows}
    assert bounds[0] == 0 and bounds[-1] == length and bounds == sorted(set(bounds))
    assert ms == pytest.approx(sum(T[b] for b in zip(bounds, bounds[1:])), abs=1e-9)
    assert ms == pytest.approx(shortest_path(rows, length), abs=1e-9)
    assert ms <= single_layer_latency(rows)
    print(f"\n{path.name}: min body {ms:.6f} ms (unmerged {single_layer_latency(rows):.6f}) boundaries {bounds}")


def test_vgg19_min_body_equals_all_2_to_15_partitions():
    rows, length = load_kim23_csv(VGG19)
    assert length == 16
    best = min(brute.score(p)[1] for p in brute.partitions_by_subsets(rows, length))
    assert min_body_latency(rows, length)[0] == pytest.approx(best, abs=1e-9)


def test_stage1_rejects_duplicate_blocks():
    with pytest.raises(ValueError, match="one latency per block"):
        stage1([Row(0, 1, 1.0, 0.0), Row(0, 1, 2.0, 0.0, option=1)], 1)


def _random_h(rng, blocks, p=0.7):
    return {(i, j, a, b): rng.uniform(-2.0, 1.0) for (i, j) in blocks for a in (0, 1) for b in (0, 1)
            if rng.random() < p}


def test_extend_importance_equals_chain_enumeration():
    rng = random.Random(5)
    for _ in range(30):
        length = rng.randint(1, 6)
        blocks = [(i, j) for i in range(length) for j in range(i + 1, length + 1) if rng.random() < 0.7]
        h = _random_h(rng, blocks)
        ext = extend_importance(h, length)
        for i in range(length):
            for j in range(i + 1, length + 1):
                for a in (0, 1):
                    for b in (0, 1):
                        want = brute.extend_importance(h, i, j, a, b)
                        got = ext.get((i, j, a, b), -math.inf)
                        assert got == pytest.approx(want, abs=1e-12) if want > -math.inf else got == -math.inf
        assert all(ext[k] >= v for k, v in h.items())


def test_normalise_importance():
    d = {(0, 1, 1, 1): -1.0, (1, 2, 1, 1): -3.0, (0, 2, 1, 1): -5.0}
    h = normalise_importance(d, alpha=0.5)
    assert h == {(0, 1, 1, 1): 0.0, (1, 2, 1, 1): -2.0, (0, 2, 1, 1): -4.0}


def test_stage2_equals_brute_force_at_every_step():
    rng = random.Random(17)
    for _ in range(30):
        length = rng.randint(1, 5)
        rows = brute.random_rows(rng, length, max_options=1)
        h = _random_h(rng, [r.block for r in rows])
        try:
            frontier = solve_two_stage(rows, length, h, steps=rng.choice([5, 20, 40]))
        except InfeasibleBudgetError:
            # Then no state sequence exists at all; brute force must agree.
            t_opt, _ = stage1(rows, length)
            assert brute.two_stage(t_opt, extend_importance(h, length), length, lambda t: 0, 0) is None
            continue
        t_opt, split = stage1(rows, length)
        ext = extend_importance(h, length)
        P, steps = frontier.steps_per_ms, frontier.steps
        cost = lambda t: brute.step_cost(t, P, steps)  # noqa: E731
        for t in range(steps + 1):
            want, got = brute.two_stage(t_opt, ext, length, cost, t), frontier.at_step(t)
            if want is None:
                assert got is None
                continue
            assert (got.importance, got.latency_ms) == (want[0], want[1])
            segs = got.rows
            assert segs[0].start == 0 and segs[0].a_start == 1 and segs[-1].end == length
            assert all(a.end == b.start and a.a_end == b.a_start for a, b in zip(segs, segs[1:]))
            blocks = conv_blocks(got)
            assert blocks[0][0] == 0 and blocks[-1][1] == length
            assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
            assert set(kept_activations(got)) <= {0} | {s.end for s in segs}


def test_either_end_state_may_win():
    """The issue-9 example: removing the activation at L (a linear bottleneck end) is the better plan."""
    rows = [Row(0, 1, 1.0, 0.0), Row(1, 2, 1.0, 0.0), Row(0, 2, 1.5, 0.0)]
    h = {(0, 1, 1, 1): 0.0, (1, 2, 1, 1): 0.0, (1, 2, 1, 0): 0.5, (0, 2, 1, 0): 0.2}
    best = solve_two_stage(rows, 2, h, steps=100).best(10.0)
    assert best.importance == pytest.approx(0.5)
    assert kept_activations(best) == [0, 1]
    assert best.rows[-1].a_end == 0
    # The only row reaching L has end state 0: still a plan, not "admits no plan".
    only = solve_two_stage(rows, 2, {(0, 2, 1, 0): 0.2}, steps=100).best(10.0)
    assert only.importance == pytest.approx(0.2) and kept_activations(only) == [0]


def test_callable_importance_and_alpha_match_dict():
    rng = random.Random(23)
    length = 5
    rows = brute.random_rows(rng, length, max_options=1)
    h = {(i, j, a, b): rng.uniform(-3.0, 0.0) for (i, j) in (r.block for r in rows) for a in (0, 1) for b in (0, 1)}
    f1 = solve_two_stage(rows, length, h, steps=50, alpha=0.3)
    f2 = solve_two_stage(rows, length, lambda i, j, a, b: h.get((i, j, a, b)), steps=50, alpha=0.3)
    budget = (f1.min_latency_ms + f1.max_latency_ms) / 2
    s1, s2 = f1.best(budget), f2.best(budget)
    assert (s1.importance, s1.latency_ms) == (s2.importance, s2.latency_ms)
    assert s1.latency_ms <= budget


def test_real_mbv2_stage2_budget_and_infeasible():
    rows, length = load_kim23_csv(MBV2_10)
    rng = random.Random(0)
    # Removing activations costs accuracy, more so for longer segments; states at MBV2 positions unrestricted.
    h = {(r.start, r.end, a, b): -0.1 * (r.end - r.start - 1) - 0.05 * (2 - a - b) - rng.random() * 0.01
         for r in rows for a in (0, 1) for b in (0, 1)}
    frontier = solve_two_stage(rows, length, h, steps=2000)
    body, _ = min_body_latency(rows, length)
    assert frontier.min_latency_ms == pytest.approx(body, abs=1e-9)
    for budget in (20.0, 25.0, 30.0):
        s = frontier.best(budget)
        assert s.latency_ms <= budget
    with pytest.raises(InfeasibleBudgetError, match="minimum achievable latency"):
        frontier.best(body - 0.5)
