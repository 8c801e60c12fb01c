"""bench/deploy_int8.py: what part of the latency model's error on a probe its measurement cannot explain."""
from __future__ import annotations

import pytest

import deploy_int8


def test_the_error_beyond_a_probes_interval_is_the_distance_to_its_nearer_end():
    probe = {"measured_low": 2.22, "measured_high": 3.09}
    assert deploy_int8.beyond_interval({**probe, "predicted": 2.5}) == 0.0           # inside: the spread explains it
    assert deploy_int8.beyond_interval({**probe, "predicted": 2.167}) == pytest.approx(2.167 / 2.22 - 1)
    assert deploy_int8.beyond_interval({**probe, "predicted": 3.3}) == pytest.approx(3.3 / 3.09 - 1)


def test_the_summary_counts_the_probes_timed_again_per_arm():
    cells = [{"rows": [{"arm": "openvino int8", "model_errors": [0.1, 0.0], "probes_slow_timings": [[1.5], []]},
                       {"arm": "onnxruntime int8", "model_errors": [0.0]},
                       {"arm": "openvino float32", "refused": "no"}]},
             {"rows": [{"arm": "openvino int8", "model_errors": [0.0], "probes_slow_timings": [[]]}]}]
    assert deploy_int8.timed_again(cells) == {"openvino int8": (1, 3), "onnxruntime int8": (0, 1)}
