"""bench/pace_error.py: a probe's pace is its original against the original at the latency model's pace."""
import json

import pytest

from pace_error import line, probes


def test_pace_is_measured_against_the_models_original_and_the_line_fits_it(tmp_path):
    report = {"latency_model_fit": {"original_factor": 0.5,
                                    "calibration": [{"network": "identity", "measured_ms": 2.0}]},
              "probes": [{"measured_original_ms": ms, "model_error": err, "measured_rounds": 10}
                         for ms, err in ((1.0, 0.02), (1.2, 0.10), (1.1, 0.06))]}
    folder = tmp_path / "mobilenet_v2_fmnist-x1.5-seed0" / "openvino_int8"
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(report))
    found = probes(str(tmp_path))
    assert [p["pace"] for p in found] == pytest.approx([1.0, 1.2, 1.1])    # the original at 2.0 * 0.5 ms
    assert {p["arm"] for p in found} == {"openvino int8"} and found[0]["network"] == "mobilenet_v2_fmnist"
    fit = line(found)
    assert fit["slope"] == pytest.approx(0.4) and fit["at_pace_1"] == pytest.approx(0.02)
    assert fit["correlation"] == pytest.approx(1.0)
    assert line(found[:2]) is None                                          # too few probes for a line
