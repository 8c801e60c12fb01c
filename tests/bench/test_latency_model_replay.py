"""bench/latency_model_replay.py: a stored run's plans predicted again from its rows and fitted model alone."""
from __future__ import annotations

import json

import pytest

import latency_model_replay as replay
from depthcut.cnn.build import is_trivial
from depthcut.latency.model import LatencyModel


def stored_report(tmp_path):
    """One run as bench/latency_model.py writes it, its identity network measured 8 % under its model."""
    shape = (1, 1, 28, 28)
    analysis = replay.analysis_of("resnet20_fmnist", shape)
    rows = {c.key: 0.03 + 1e-4 * c.kernel * c.out_channels / 16 for c in analysis.candidates if c.kept}
    model = LatencyModel("per-call", call_ms=0.01, other_ms=0.02, batch_size=1, original_factor=1.01)
    trivial = [c for c in analysis.candidates if is_trivial(c)]
    full = sum(model.row_ms(c, rows[c.key]) for c in trivial)
    model.calibration = [{"network": "identity", "measured_ms": (0.02 + full) / 1.08, "modelled_ms": 0.02 + full}]
    merged = next(c for c in analysis.candidates if not is_trivial(c) and c.kept and c.end - c.start >= 2)
    plan = [merged] + [c for c in trivial if not merged.start <= c.start < merged.end]
    body = sum(model.row_ms(c, rows[c.key]) for c in plan)
    measured = 1.05
    run = {"run": 1, "model": "resnet20_fmnist", "input_shape": list(shape), "rows_ms": rows,
           "latency_model": model.to_dict(),
           "plans": [{"budget_ratio": 0.8, "measured": {"ratio": measured}, "blocks": [merged.key],
                      "error": model.predicted_speedup(body, full) / measured - 1}]}
    path = tmp_path / "latency_model_x.json"
    path.write_text(json.dumps({"runs": [run, {"run": 2, "model": "resnet20_fmnist", "refused": "x", "plans": []}]}))
    return path, model, body, full, measured


def test_replay_predicts_each_plan_anchored_and_both_modelled(tmp_path):
    path, model, body, full, measured = stored_report(tmp_path)
    r = replay.replay_file(path)
    assert (r["runs"], r["refused"], r["plans"]) == (1, 1, 1)
    assert r["stored_by"] == ["anchored"]                         # written by the current rule
    assert r["anchored"]["worst"] == pytest.approx(abs(model.predicted_speedup(body, full) / measured - 1))
    # the earlier rule carries the identity network's 8 % miss into the plan's prediction
    assert (1 + r["both_modelled"]["mean"]) / (1 + r["anchored"]["mean"]) == pytest.approx(1.08)
    md = replay.markdown([r, {"file": "old.json", "skipped": "written before the runs kept their rows"}])
    assert "| latency_model_x.json | 1 (1) | 1 |" in md and "skipped: written before" in md
