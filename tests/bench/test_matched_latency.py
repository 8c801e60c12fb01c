"""The common-point selection of bench/matched_latency.py against brute force: one network per method, all at
or above the target; within the 3 % spread the fastest network is as slow as any feasible choice allows (the
least accuracy given up), and without one the spread is the smallest any choice has."""
import itertools
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from matched_latency import SPREAD, common_point  # noqa: E402


def instance(seed: int):
    rng = random.Random(seed)
    methods = [f"m{k}" for k in range(rng.randint(2, 4))]
    speedups = {f"{m}/{i}": rng.uniform(1.3, 2.0) for m in methods for i in range(rng.randint(1, 5))}
    return methods, speedups, rng.uniform(1.3, 1.7)


def spread(ratios) -> float:
    return max(ratios) / min(ratios) - 1


@pytest.mark.parametrize("seed", range(200))
def test_the_common_point_is_the_brute_force_optimum(seed):
    methods, speedups, target = instance(seed)
    options = [[n for n in speedups if n.startswith(m + "/") and speedups[n] >= target] for m in methods]
    combos = [[speedups[n] for n in c] for c in itertools.product(*options)]
    chosen = common_point(speedups, methods, target)
    if not combos:                                      # some method has nothing at or above the target
        assert chosen == {}
        return
    assert sorted(chosen) == sorted(methods)
    got = [speedups[chosen[m]] for m in methods]
    assert all(chosen[m].startswith(m + "/") for m in methods) and min(got) >= target
    feasible = [c for c in combos if spread(c) <= SPREAD]
    if feasible:
        assert spread(got) <= SPREAD + 1e-12
        assert max(got) == pytest.approx(min(max(c) for c in feasible), abs=1e-12)
    else:
        assert spread(got) == pytest.approx(min(spread(c) for c in combos), abs=1e-12)


def test_a_method_below_the_target_everywhere_leaves_no_common_point():
    assert common_point({"a/0": 1.6, "b/0": 1.4}, ["a", "b"], 1.5) == {}


def test_the_nearest_feasible_point_wins_over_a_faster_tighter_one():
    speedups = {"a/0": 1.52, "a/1": 1.80, "b/0": 1.55, "b/1": 1.80}
    assert common_point(speedups, ["a", "b"], 1.5) == {"a": "a/0", "b": "b/0"}   # 2.0 % apart, nearer x1.5
