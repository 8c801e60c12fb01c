"""bench/deploy_int8_runs.py: the figure quoted is the worst run's, per arm."""
from deploy_int8_runs import markdown, per_run, worst


def result(errors: dict, beyond: dict, refused=(), slow=()) -> dict:
    cells = [{"model": "m", "target": 1.5, "seed": 0,
              "rows": [{"arm": arm, "model_errors": [e], "probes_slow_timings": [[1.5] if arm in slow else []]}
                       for arm, e in errors.items()]}]
    return {"cells": cells, "summary": {"model_error_largest": errors, "model_error_beyond_interval_largest": beyond,
                                        "refused": [f"m x1.5 seed 0 {arm}" for arm in refused]}}


def test_the_worst_run_sets_each_arms_figure_and_refusals_add_up():
    a = per_run(result({"ort": 0.03, "ov": 0.15}, {"ort": 0.01, "ov": 0.09}, slow=("ov",)))
    b = per_run(result({"ort": 0.05, "ov": 0.10, "ov8": None}, {"ort": 0.0, "ov": 0.05, "ov8": None},
                       refused=("ov8",)))
    assert a["ov"]["timed_again"] == [1, 1] and a["ort"]["timed_again"] == [0, 1]
    w = worst({"a": a, "b": b})
    assert w["ort"] == {"error": 0.05, "beyond": 0.01, "refused": 0}
    assert w["ov"] == {"error": 0.15, "beyond": 0.09, "refused": 0}
    assert w["ov8"] == {"error": None, "beyond": None, "refused": 1}      # refused in its only run
    text = markdown({"command": "x", "runs": {"a": a, "b": b}, "worst": w})
    assert "**15.0 %** (9.0 %)" in text and "**5.0 %** (1.0 %)" in text
