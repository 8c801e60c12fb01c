"""bench/adaptive_rules.py's exchange certificate: where the bounds hold its answer is the full table's."""
import pytest

from adaptive_chains import instance, score
from adaptive_rules import ExchangeCertificate, ExchangeOnePerRound
from depthcut.importance.adaptive import Bounds
from depthcut.search.layermerge import solve
from depthcut.search.tables import Row


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("rule", [ExchangeCertificate, ExchangeOnePerRound])
def test_the_exchange_certificate_answers_as_the_full_table_where_the_bounds_hold(seed, rule):
    rows, true, cheap, noise, length = instance(seed)
    body = sum(r.latency_ms for r in rows if r.end == r.start + 1)
    full = solve([Row(r.start, r.end, r.latency_ms, score(true[r.ref.key]) if r.ref.key in true else 1.0, ref=r.ref)
                  for r in rows], length, steps=400, max_latency_ms=body)
    asked = []

    def refine(cands):
        asked.extend(c.key for c in cands)
        return {c.key: true[c.key] for c in cands}

    def true_value(solution):
        return sum(score(true[r.ref.key]) if r.ref.key in true else r.importance for r in solution.rows)
    adaptive = rule(rows, lambda rs: solve(rs, length, steps=400, max_latency_ms=body), Bounds(dict(cheap), noise),
                    score, refine)
    for fraction in (0.8, 0.6, 0.45):
        got = adaptive.best(fraction * body)
        assert got.latency_ms <= fraction * body
        assert true_value(got) >= true_value(full.best(fraction * body)) - 1e-9
    assert len(asked) == len(set(asked)) < len(true)       # never one entry twice, and not the whole table


def test_the_oracle_scores_a_seed_by_the_other_seeds_tables_and_the_noise_is_pairwise():
    from adaptive_rules import ORACLE, oracle_scores, seed_noise
    collected = {0: {"accuracy": {"a": 90.0, "b": 80.0, "only0": 70.0}, "cheap": {}},
                 1: {"accuracy": {"a": 91.0, "b": 82.0}, "cheap": {}},
                 2: {"accuracy": {"a": 92.0, "b": 81.0}, "cheap": {}}}
    oracle_scores(collected)
    assert collected[0]["cheap"][ORACLE] == {"a": 91.5, "b": 81.5, "only0": 70.0}   # a key no other seed has: own
    assert collected[1]["cheap"][ORACLE] == {"a": 91.0, "b": 80.5}
    noise = seed_noise([d["accuracy"] for d in collected.values()])
    # pairs: a 1, 2, 1; b 2, 1, 1
    assert noise["candidates"] == 2 and noise["median"] == 1.0 and noise["max"] == 2.0


def test_the_linear_tails_continue_the_isotonic_map_beyond_the_sample():
    from adaptive_rules import with_tails
    xs, ys = [10.0, 20.0, 30.0], [50.0, 60.0, 70.0]          # slope 1
    low = with_tails(xs, ys, low_only=True)
    both = with_tails(xs, ys, low_only=False)
    assert low(20.0) == both(20.0) == 60.0                     # inside: the isotonic map
    assert low(0.0) == both(0.0) == 40.0                       # below: continued with the slope
    assert low(40.0) == 70.0 and both(40.0) == 80.0            # above: constant, or continued
