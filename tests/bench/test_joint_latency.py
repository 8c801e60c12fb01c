"""bench/joint_latency.py: the joint method's latency side on a model by name, with stand-in data."""
from __future__ import annotations

import joint_latency as jl


def test_stand_in_splits_span_the_model_s_classes():
    splits = jl.stand_in_splits(32, 1000)
    x, _ = splits.test[0]
    assert tuple(x.shape) == (3, 32, 32) and int(splits.test.tensors[1].max()) == 999
    assert splits.train is splits.finetune is splits.score


def test_the_report_gives_each_width_s_prediction_error_and_the_set_aside_widths():
    widths = [{"width": "original", "over_original": 1.0, "too_fast": False, "left_out": None, "model_fallback": None,
               "rows": 26, "latency_model": "per-call", "predicted_speedup": 1.6, "blocks_changed": ["a"],
               "measured_speedup": 1.5, "interval": [1.45, 1.55]},
              {"width": "global-0.125", "over_original": 1.3, "too_fast": False, "left_out": None,
               "model_fallback": "missed", "rows": 19, "latency_model": "additive", "predicted_speedup": None,
               "blocks_changed": None, "measured_speedup": None, "interval": None},
              {"width": "uniform-0.5", "over_original": 4.0, "too_fast": True}]
    md = jl.markdown({"command": "c", "machine": "m", "model": "timm:x@random", "input_shape": [1, 3, 32, 32],
                      "seconds": 60, "chain": {"positions": 12, "candidates": 28},
                      "channel_landing": {"name": "global-0.26-landed", "speedup": 1.6}, "widths": widths})
    assert "| original | x1.00 | 26 | per-call | 1 | x1.60 | x1.50 [1.45, 1.55] | +6.7 % |" in md
    assert "additive (per-call did not hold)" in md and "target beyond its fastest plan" in md
    assert "| uniform-0.5 | x4.00 | faster than the target alone: set aside" in md
