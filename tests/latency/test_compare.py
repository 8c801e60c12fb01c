"""Speed-up with a confidence interval (depthcut.latency.compare), on scripted timings."""
import math

import pytest
import torch
from torch import nn

from depthcut.latency import compare
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


def scripted(monkeypatch, script):
    """sample_ms returns the next scripted samples for whichever model runs (by its .ms tag)."""
    def prepare(self, module, x):
        return lambda: module.ms
    monkeypatch.setattr("depthcut.latency.backends.EagerBackend.prepare", prepare)
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
