"""Speed-up with a confidence interval (depthcut.latency.compare), on scripted timings."""
import contextlib
import math

import pytest
import torch
from torch import nn

from depthcut.latency import compare, get_backend
from depthcut.latency.compare import compare_speed, median_interval, outliers


@pytest.mark.parametrize("n", range(1, 80))
def test_median_interval_has_its_coverage_and_is_the_narrowest_such(n):
    lo, hi = median_interval(list(range(n)))
    k = lo + 1                                                 # the interval is [x_(k), x_(n+1-k)]
    assert hi == n - k
    miss = lambda k: 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n   # noqa: E731  P(median outside)
    if n >= 6:
        assert 1 - miss(k) >= 0.95
        assert k == n // 2 or 1 - miss(k + 1) < 0.95           # one order statistic further in would not do
    else:
        assert (lo, hi) == (0, n - 1)


def test_outliers_counts_values_far_from_the_median():
    assert outliers([1.0, 1.01, 0.99, 1.0, 1.02, 3.0]) == 1
    assert outliers([1.0] * 5) == 0


class Fixed(nn.Module):
    def __init__(self, ms):
        super().__init__()
        self.ms = ms
        self.conv = nn.Conv2d(1, 1, 1)

    def forward(self, x):
        return self.conv(x)


def scripted(monkeypatch, script, drift=0.0):
    """sample_ms returns the next scripted samples for whichever model runs (by its .ms tag); the statistics
    alone, with the backend's drift floor at ``drift``."""
    def prepare(self, module, x):
        return lambda: module.ms
    monkeypatch.setattr("depthcut.latency.backends.EagerBackend.prepare", prepare)
    monkeypatch.setattr("depthcut.latency.backends.EagerBackend.DRIFT", drift)
    monkeypatch.setattr(compare, "measure", lambda run, **kw: None)

    def sample(run, n):
        return script[run()].pop(0)
    monkeypatch.setattr(compare, "sample_ms", sample)


def test_paired_rounds_cancel_drift_and_report_outliers(monkeypatch):
    # The machine slows down 3x halfway; one round of the compressed model is hit by a spike.
    drift = [1.0] * 10 + [3.0] * 10
    orig = [[2.0 * d] * 5 for d in drift]
    comp = [[1.0 * d] * 5 for d in drift]
    comp[4] = [5.0] * 5
    scripted(monkeypatch, {"o": orig, "c": comp})
    est = compare_speed(Fixed("o"), Fixed("c"), torch.zeros(1, 1, 2, 2), "eager", min_rounds=20, max_rounds=20)
    assert est.ratio == 2.0 and est.rounds == 20
    assert est.low <= 2.0 <= est.high and est.high == 2.0     # the spike only widens the low side
    assert est.outlier_rounds == 1


def test_stops_once_the_interval_is_narrow_or_decided(monkeypatch):
    scripted(monkeypatch, {"o": [[2.0] * 5] * 50, "c": [[1.0] * 5] * 50})
    est = compare_speed(Fixed("o"), Fixed("c"), torch.zeros(1, 1, 2, 2), "eager", min_rounds=10, max_rounds=50)
    assert est.rounds == 10 and est.rel_width == 0.0
    noisy = {"o": [[2.0 + 0.2 * (k % 3)] * 5 for k in range(50)], "c": [[1.0] * 5] * 50}
    scripted(monkeypatch, noisy)
    est = compare_speed(Fixed("o"), Fixed("c"), torch.zeros(1, 1, 2, 2), "eager", min_rounds=10, max_rounds=50,
                        rel_width=0.001, decided=lambda e: e.low > 1.5)
    assert est.rounds == 10


# -- runtime sessions: the interval covers the spread between them -------------------------------------------

def test_t95_is_students_t():
    assert compare.t95(1) == 12.706 and compare.t95(3) == 3.182 and compare.t95(11) == 2.228
    assert compare.t95(31) == 1.96


def test_session_interval_has_its_coverage_on_lognormal_session_effects():
    # The t interval on log ratios is exact for normal log effects: 95 % coverage, up to 2,000-trial noise
    # (binomial sd 0.5 %: the bounds are 4 sd away).
    gen = torch.Generator().manual_seed(0)
    for sessions in (3, 4, 6):
        trials, hit = 2000, 0
        for _ in range(trials):
            ratios = (2.0 * torch.exp(0.03 * torch.randn(sessions, generator=gen, dtype=torch.float64))).tolist()
            lo, hi = compare.session_interval(ratios)
            hit += lo <= 2.0 <= hi
        assert 0.93 <= hit / trials <= 0.97, (sessions, hit / trials)
    assert compare.session_interval([2.0]) is None


def scripted_sessions(monkeypatch, ratio_of_session, calls):
    """Each prepared session of the compressed model runs at its own speed; the original at 2 ms. The
    statistics alone: no drift floor."""
    monkeypatch.setattr("depthcut.latency.backends.EagerBackend.DRIFT", 0.0)
    counter = {"o": 0, "c": 0}

    def prepare(self, module, x):
        k = counter[module.ms]
        counter[module.ms] += 1
        return lambda: (module.ms, k)
    monkeypatch.setattr("depthcut.latency.backends.EagerBackend.prepare", prepare)
    monkeypatch.setattr(compare, "measure", lambda run, **kw: None)

    def sample(run, n):
        name, k = run()
        calls.append((name, k))
        return [2.0] * n if name == "o" else [2.0 / ratio_of_session[k]] * n
    monkeypatch.setattr(compare, "sample_ms", sample)


@pytest.mark.parametrize("block", [1, 2, 3, 5])
def test_sessions_rotate_in_blocks_and_each_sees_both_orders(monkeypatch, block):
    calls = []
    scripted_sessions(monkeypatch, [2.0] * 4, calls)
    rounds_n = 8 * block
    est = compare_speed(Fixed("o"), Fixed("c"), torch.zeros(1, 1, 2, 2), "eager", min_rounds=rounds_n,
                        max_rounds=rounds_n, sessions=4, block_rounds=block)
    assert est.sessions == 4 and est.rounds == rounds_n and est.session_ratios == (2.0,) * 4
    rounds = [calls[i:i + 2] for i in range(0, len(calls), 2)]
    assert [r[0][1] for r in rounds] == [(k // block) % 4 for k in range(rounds_n)]   # blocks of rounds
    assert all(r[0][1] == r[1][1] for r in rounds)                     # a round pairs the same session
    for s in range(4):
        firsts = {r[0][0] for r in rounds if r[0][1] == s}
        assert firsts == {"o", "c"}, s                                          # both orders in every session
    assert (est.low, est.ratio, est.high) == (2.0, 2.0, 2.0)


def test_a_slow_session_widens_the_interval_that_one_sessions_rounds_would_not(monkeypatch):
    # Three sessions say x2.0, one x2.3. The rounds' own interval (order statistics) sits at 2.0; the
    # session interval says a fresh measurement could land well above it.
    scripted_sessions(monkeypatch, [2.0, 2.0, 2.0, 2.3], [])
    est = compare_speed(Fixed("o"), Fixed("c"), torch.zeros(1, 1, 2, 2), "eager", min_rounds=40, max_rounds=40,
                        sessions=4)
    assert est.ratio == 2.0 and est.session_ratios == (2.0, 2.0, 2.0, 2.3)
    assert compare.median_interval([2.0] * 30 + [2.3] * 10) == (2.0, 2.0)
    lo, hi = compare.session_interval([2.0, 2.0, 2.0, 2.3])
    assert (est.low, est.high) == (min(2.0, lo), max(2.0, hi)) and est.high > 2.3 and est.low < 2.0
    assert "in 4 sessions" in est.describe()


def test_one_session_keeps_the_rounds_interval(monkeypatch):
    scripted_sessions(monkeypatch, [2.5], [])
    est = compare_speed(Fixed("o"), Fixed("c"), torch.zeros(1, 1, 2, 2), "eager", min_rounds=10, max_rounds=10)
    assert est.sessions == 1 and est.session_ratios == (2.5,) and (est.low, est.high) == (2.5, 2.5)


# -- several networks in the same rounds (equal-latency comparisons) -----------------------------------------

def test_compare_many_times_every_network_in_the_same_rounds(monkeypatch):
    # The machine's speed changes from round to round (x1 .. x3); the networks take 2, 1 and 0.8 ms at x1.
    # Each ratio to the original comes out exact, and so does the ratio between the two compressed ones.
    base = {"original": 2.0, "a": 1.0, "b": 0.8}
    calls = []

    def sample(run, n):
        name, session = run
        calls.append((name, session))
        factor = 1.0 + 2.0 * ((len(calls) - 1) // 3 % 7) / 6        # one factor per round of three
        return [base[name] * factor] * n
    monkeypatch.setattr(compare, "sample_ms", sample)
    monkeypatch.setattr(compare, "measure", lambda run, **kw: None)       # the warm-up
    runners = {name: [(name, s) for s in range(3)] for name in base}
    est = compare.compare_many(runners, rounds=30, block_rounds=2, warm_calls=0)   # (scripted samples only)
    assert set(est) == {"a", "b"}
    assert (est["a"].ratio, est["a"].low, est["a"].high) == (2.0, 2.0, 2.0)
    assert est["b"].ratio == pytest.approx(2.5) and est["b"].sessions == 3
    rounds = [calls[i:i + 3] for i in range(0, len(calls), 3)]
    assert [r[0][1] for r in rounds] == [(k // 2) % 3 for k in range(30)]           # sessions in blocks
    assert {r[0][0] for r in rounds} == set(base)                                   # everyone goes first
    after = {(r[i][0], r[i + 1][0]) for r in rounds for i in range(2)}
    assert after == {(x, y) for x in base for y in base if x != y}                 # and after everyone


class Cached:
    """A simulated network on a simulated clock whose cache holds one network: its first ``cold`` calls after
    another network ran cost ``penalty`` ms more (its weights evicted), then ``ms`` each."""
    last = None

    def __init__(self, clock: list[float], ms: float, penalty: float, cold: int = 3):
        self.t, self.ms, self.penalty, self.cold, self.streak = clock, ms, penalty, cold, 0
        self.clock = lambda: self.t[0]

    def __call__(self):
        self.streak = self.streak + 1 if Cached.last is self else 1
        Cached.last = self
        self.t[0] += (self.ms + (self.penalty if self.streak <= self.cold else 0.0)) / 1e3


@pytest.mark.parametrize("cold", [1, 2, 3])
def test_compare_many_times_each_network_warm_as_deployed(cold):
    """In rounds of several networks each one runs after the others evicted it: with 5 timed calls a sample,
    a network whose first ``cold`` calls pay a reload (more for the bigger original) measures a ratio between
    its warm and cold ones. WARM_CALLS untimed calls first give the warm ratio, as the network runs alone."""
    Cached.last = None
    clock = [0.0]
    runners = {"original": [Cached(clock, 2.0, 1.0, cold)], "a": [Cached(clock, 1.0, 0.2, cold)],
               "b": [Cached(clock, 0.5, 0.1, cold)]}
    warm = compare.compare_many(runners, rounds=12, block_rounds=1, warmup=0)
    assert compare.WARM_CALLS >= cold
    assert warm["a"].ratio == pytest.approx(2.0) and warm["b"].ratio == pytest.approx(4.0)
    Cached.last = None
    cold_rounds = compare.compare_many(runners, rounds=12, block_rounds=1, warmup=0, warm_calls=0)
    expected = (2.0 + (1.0 if cold >= 3 else 0.0)) / (1.0 + (0.2 if cold >= 3 else 0.0))
    assert cold_rounds["a"].ratio == pytest.approx(expected)      # the median of 5 is cold once 3 calls are


def test_compare_many_rejects_what_it_cannot_pair():
    with pytest.raises(ValueError, match="reference"):
        compare.compare_many({"a": [lambda: None]})
    with pytest.raises(ValueError, match="same"):
        compare.compare_many({"original": [lambda: None], "a": [lambda: None, lambda: None]})


def test_the_backends_drift_floor_widens_a_steady_interval(monkeypatch):
    """A steady machine gives a zero-width interval, yet the next timing lands elsewhere: the backend's floor
    (Backend.drift, measured by bench/timing_coverage.py) keeps the interval at least +-drift wide."""
    steady = {"o": [[2.0] * 5 for _ in range(20)], "c": [[1.0] * 5 for _ in range(20)]}
    scripted(monkeypatch, steady, drift=0.03)
    est = compare_speed(Fixed("o"), Fixed("c"), torch.zeros(1, 1, 2, 2), "eager", min_rounds=10, max_rounds=20)
    assert est.ratio == 2.0 and est.low == pytest.approx(2.0 / 1.03) and est.high == pytest.approx(2.06)
    assert est.rounds == 10                                   # 2 x drift wide is narrow enough to stop
    scripted(monkeypatch, {"o": [[2.0] * 5 for _ in range(20)], "c": [[1.0] * 5 for _ in range(20)]})
    assert compare_speed(Fixed("o"), Fixed("c"), torch.zeros(1, 1, 2, 2), "eager", min_rounds=10,
                         max_rounds=20, drift=0.01).high == pytest.approx(2.02)   # an explicit floor wins


def _zero_init_block() -> nn.Module:
    """A residual-style block whose last BatchNorm is zero-initialised, as timm's are before training."""
    block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
    nn.init.zeros_(block[4].weight)
    return block.eval()


def test_networks_are_timed_without_exact_zeros_and_left_untouched(monkeypatch):
    """ONNX Runtime ran an untrained timm resnet18d 13 % faster than the same network recovered (issue 33):
    every end-to-end timing times a copy whose all-zero weights and BatchNorm means are small random values."""
    from depthcut.latency import get_backend
    from depthcut.latency.backends import timing_copy

    block = _zero_init_block()
    timed = timing_copy(block)
    assert timed is not block
    for t in list(timed.parameters()) + [b for n, b in timed.named_buffers() if n.endswith("running_mean")]:
        assert t.any(), "an all-zero tensor was left in the timed copy"
    assert not block[4].weight.any() and not block[1].running_mean.any()      # the caller's module is unchanged
    x = torch.randn(1, 4, 8, 8)
    assert torch.equal(timed[0](x), block[0](x))          # tensors that were not all zero keep their values
    dense = nn.Conv2d(4, 4, 3)
    assert timing_copy(dense) is dense                   # nothing to fill: no copy
    seen = []
    backend = get_backend("eager")
    real = backend.session_maker
    monkeypatch.setattr(backend, "session_maker", lambda m, x: seen.append(m) or real(m, x))
    compare_speed(block, _zero_init_block(), x, backend, min_rounds=2, max_rounds=2)
    assert len(seen) == 2 and all(all(p.any() for p in m.parameters()) for m in seen)


def test_several_networks_timed_together_get_their_intervals_floored_at_the_drift():
    from depthcut.latency.compare import time_jointly

    x = torch.randn(1, 4, 8, 8)
    nets = {"same": _zero_init_block(), "smaller": nn.Conv2d(4, 4, 1).eval()}
    est = time_jointly(_zero_init_block(), nets, x, "eager", sessions=2, rounds=10, drift=0.5)   # 5 a session
    assert set(est) == {"same", "smaller"}
    for e in est.values():
        assert e.sessions == 2 and e.low <= e.ratio / 1.5 + 1e-12 and e.high >= e.ratio * 1.5 - 1e-12


class _RecordingBackend:
    """Records when each network's export happens and the order in which sessions are made."""

    def __init__(self):
        self.exports, self.made = [], []

    @contextlib.contextmanager
    def session_maker(self, network, example_input):
        self.exports.append(network.tag)
        yield lambda: self.made.append(network.tag) or (lambda: None)


@pytest.mark.parametrize("n_networks,sessions", [(2, 4), (3, 3), (4, 4), (3, 1)])
def test_sessions_are_made_in_turns_so_no_network_is_always_made_last(n_networks, sessions):
    from depthcut.latency.compare import interleaved_sessions

    nets = {}
    for i in range(n_networks):
        nets[f"n{i}"] = nn.Conv2d(1, 1, 1)
        nets[f"n{i}"].tag = f"n{i}"
    backend = _RecordingBackend()
    runners = interleaved_sessions(backend, nets, torch.randn(1, 1, 4, 4), sessions)
    assert sorted(backend.exports) == sorted(nets)                       # one export per network
    assert {n: len(r) for n, r in runners.items()} == {n: sessions for n in nets}
    turns = [backend.made[j * n_networks:(j + 1) * n_networks] for j in range(sessions)]
    assert all(sorted(t) == sorted(nets) for t in turns)                  # session j of all before j + 1 of any
    last = [t[-1] for t in turns]
    if sessions >= n_networks:                                           # every network is made last in some turn
        assert set(last) == set(nets) and len(set(t[0] for t in turns)) == n_networks


def test_onnxruntime_exports_a_network_once_and_its_sessions_compute_it(monkeypatch):
    pytest.importorskip("onnxruntime")
    import depthcut.latency.backends as backends
    from depthcut.latency.compare import interleaved_sessions

    calls = []
    real = backends.export_onnx
    monkeypatch.setattr(backends, "export_onnx", lambda *a, **k: calls.append(1) or real(*a, **k))
    nets = {"a": nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)).eval(),
            "b": nn.Sequential(nn.Conv2d(1, 2, 5), nn.ReLU(), nn.Flatten()).eval()}
    x = torch.randn(1, 1, 8, 8)
    runners = interleaved_sessions(get_backend("onnxruntime", threads=1), nets, x, 3)
    assert len(calls) == 2
    with torch.no_grad():
        for name, net in nets.items():
            assert len(runners[name]) == 3
            for run in runners[name]:
                assert torch.allclose(torch.as_tensor(run()[0]), net(x), atol=1e-5)


# -- the run's pace: a timing taken in a slow phase is timed again (depthcut.latency.compare.Pace) ----------
def estimate_of(ratio: float, original_ms: float):
    from depthcut.latency.compare import SpeedupEstimate
    return SpeedupEstimate(ratio, ratio * 0.98, ratio * 1.02, 20, 0, original_ms, original_ms / ratio,
                           original_ms / ratio * 1.01)


def in_turn(*timings):
    queue = list(timings)
    return lambda: queue.pop(0)


def test_pace_takes_the_first_timing_as_it_comes():
    from depthcut.latency.compare import Pace
    pace = Pace()
    assert pace.steady(in_turn(estimate_of(2.0, 9.0))).ratio == 2.0      # nothing to compare it with yet
    assert pace.originals_ms == [9.0]


def test_a_timing_whose_original_ran_slow_is_timed_again_and_the_usual_pace_stands():
    from depthcut.latency.compare import Pace
    pace, said = Pace(originals_ms=[0.50, 0.55, 0.60]), []
    got = pace.steady(in_turn(estimate_of(1.68, 0.914), estimate_of(2.22, 0.56)), say=said.append)
    assert got.ratio == 2.22 and got.slow_timings == pytest.approx((0.914 / 0.55,))
    assert len(said) == 1 and "slow phase" in said[0] and "x1.66" in said[0]
    assert pace.originals_ms[-1] == 0.56 and "after 1 slow timing" in got.describe()


def test_a_timing_inside_the_pace_limit_stands_untouched():
    from depthcut.latency.compare import Pace
    pace = Pace(originals_ms=[0.50, 0.55, 0.60])
    first = estimate_of(1.9, 0.55 * 1.39)                                   # slower, but within the limit
    assert pace.steady(in_turn(first)) is first


def test_a_slow_phase_that_lasts_keeps_the_fastest_paced_timing_after_the_retries():
    from depthcut.latency.compare import PACE_RETRIES, Pace
    pace = Pace(originals_ms=[1.0])
    times = [estimate_of(1.5, 2.0), estimate_of(1.7, 1.6), estimate_of(1.6, 1.8)]
    got = pace.steady(in_turn(*times))
    assert PACE_RETRIES == 2 and got.ratio == 1.7 and len(got.slow_timings) == 2   # three timings in all
    assert pace.originals_ms == [1.0, 1.6]


def test_probes_share_the_runs_pace(monkeypatch):
    """compress's probes (depthcut.compression.probe_speed) go through the run's Pace: a slow probe is timed
    again with the same arguments."""
    from types import SimpleNamespace

    from depthcut import compression
    from depthcut.config import LayerMergeConfig
    from depthcut.latency.compare import Pace

    script = [estimate_of(2.0, 0.5), estimate_of(1.6, 0.9), estimate_of(2.1, 0.52)]
    calls = []

    def fake(original, candidate, example, backend, **kw):
        calls.append(kw)
        return script.pop(0)
    monkeypatch.setattr(compare, "compare_speed", fake)
    run = SimpleNamespace(config=LayerMergeConfig(), original=None, example=None, backend=None, pace=Pace(),
                          say=lambda s: None)
    assert compression.probe_speed(run, None, decided=None).ratio == 2.0
    assert compression.probe_speed(run, None, decided=None).ratio == 2.1
    assert len(calls) == 3 and calls[1] == calls[2] and run.pace.originals_ms == [0.5, 0.52]


def test_the_report_says_which_probe_was_timed_again():
    from depthcut.report import _landing
    probe = {"budget": 0.3, "modelled": 0.29, "predicted": 2.2, "model_error": 0.01, "meets": True,
             "lands": True, **{f"measured_{k}": v for k, v in estimate_of(2.18, 0.56).to_dict().items()}}
    slow = {**probe, "measured_slow_timings": [1.66]}
    lines = _landing({"probes": [probe, slow], "model_error_largest": 0.01})
    assert "timed again" not in lines[-2] and "timed again: the original ran x1.66 its pace first" in lines[-1]
