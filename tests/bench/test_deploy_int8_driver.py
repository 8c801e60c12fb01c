"""bench/deploy_int8.py: what part of the latency model's error on a probe its measurement cannot explain."""
from __future__ import annotations

import pytest

import deploy_int8


def test_the_error_beyond_a_probes_interval_is_the_distance_to_its_nearer_end():
    probe = {"measured_low": 2.22, "measured_high": 3.09}
    assert deploy_int8.beyond_interval({**probe, "predicted": 2.5}) == 0.0           # inside: the spread explains it
    assert deploy_int8.beyond_interval({**probe, "predicted": 2.167}) == pytest.approx(2.167 / 2.22 - 1)
    assert deploy_int8.beyond_interval({**probe, "predicted": 3.3}) == pytest.approx(3.3 / 3.09 - 1)
