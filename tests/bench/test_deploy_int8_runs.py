"""bench/deploy_int8_runs.py: the figure quoted is the worst run's, per arm, read from the runs' own reports."""
import json

from deploy_int8_runs import markdown, per_run, worst


def run_dir(root, arms: dict, refused=()):
    """A deploy_int8 --runs folder: one cell, each arm's probes as (error, low, high, slow timings)."""
    for arm, probes in arms.items():
        folder = root / "m-x1.5-seed0" / arm
        folder.mkdir(parents=True)
        (folder / "report.json").write_text(json.dumps({
            "model_error_largest": max(abs(p[0]) for p in probes),
            "probes": [{"model_error": e, "predicted": 2.0, "measured_low": lo, "measured_high": hi,
                        "measured_slow_timings": slow} for e, lo, hi, slow in probes]}))
    for arm in refused:
        (root / "m-x1.5-seed0" / arm).mkdir(parents=True)
        (root / "m-x1.5-seed0" / arm / "refused.json").write_text(json.dumps({"refused": "no"}))
    return str(root)


def test_the_worst_run_sets_each_arms_figure_and_refusals_add_up(tmp_path):
    a = per_run(run_dir(tmp_path / "a", {"openvino_int8": [(0.15, 1.6, 1.8, [1.5]), (0.02, 1.9, 2.1, [])],
                                         "float32_table_-_int8": [(0.03, 1.9, 2.1, [])]}))
    b = per_run(run_dir(tmp_path / "b", {"openvino_int8": [(-0.10, 2.1, 2.4, [])]}, refused=("onnxruntime_int8",)))
    assert a["openvino int8"] == {"cells": 1, "error": 0.15, "beyond": 2.0 / 1.8 - 1, "timed_again": [1, 2],
                                  "refused": 0}
    assert "float32 table -> int8" in a and b["onnxruntime int8"]["refused"] == 1
    w = worst({"a": a, "b": b})
    assert w["openvino int8"]["error"] == 0.15 and w["openvino int8"]["beyond"] == 2.0 / 1.8 - 1
    assert w["onnxruntime int8"] == {"error": None, "beyond": None, "refused": 1}     # refused in its only run
    text = markdown({"command": "x", "runs": {"a": a, "b": b}, "worst": w})
    assert "**15.0 %** (11.1 %)" in text and "1 refused" in text
