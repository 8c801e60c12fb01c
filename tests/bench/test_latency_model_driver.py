"""bench/latency_model.py: the embedded networks and the runtime's thread count reach the command and the report."""
from __future__ import annotations

import latency_model as lm


def report(**kw):
    runs = [{"run": 1, "model": "mobilenet_v2_fmnist", "input_shape": [1, 1, 28, 28], "refused": "the model misses",
             "plans": []}]
    return {"backend": "onnxruntime", "quantize": "int8", "cpu": "x86_64", "threads": 2, "versions": "v",
            "fresh": 1, "max_rounds": 60, "runs": runs, "summary": lm.summary(runs), **kw}


def test_the_report_names_the_models_input_and_threads_it_was_run_with():
    md = lm.markdown(report(models="mobilenet_v2_fmnist", size=None, timing_threads=1))
    assert ("`python bench/latency_model.py --fresh 1 --backend onnxruntime --quantize int8 --models "
            "mobilenet_v2_fmnist --timing-threads 1`") in md
    assert "runtime timed on 1 intra-op thread(s)" in md and "input 1x28x28" in md
    assert "| mobilenet_v2_fmnist | 1 | 1 |" in md            # one run, refused by the model's checks
    # the default models and threads leave the command as it was
    md = lm.markdown(report(models=lm.DEFAULT_MODELS, size=None, timing_threads=None))
    assert "--quantize int8`" in md and "runtime timed on 2 intra-op thread(s)" in md


def test_the_budgets_cover_the_embedded_networks_too():
    from depthcut import zoo

    for name in ("resnet20_fmnist", "mobilenet_v2_fmnist", "resnet34", "mobilenet_v2"):
        assert zoo.get(name) and all(0 < b < 1 for b in lm.BUDGETS[name])


def test_plans_a_compress_run_probed_are_read_by_model_and_unknown_blocks_skipped(tmp_path, capsys):
    import json
    from types import SimpleNamespace

    def candidate(key):
        start, end, kernel, kept = key.split("-", 3)
        return SimpleNamespace(key=key, start=int(start), end=int(end), kernel=int(kernel[1:]), depthwise=False,
                               kept=tuple(int(k) for k in kept.strip("[]").split(",")))

    analysis = SimpleNamespace(candidates=[candidate(k) for k in ("0-1-k3-[1]", "1-3-k3-[2,3]", "3-6-k5-[4,6]")])
    folder = tmp_path / "mobilenet_v2_fmnist-x2-seed0" / "openvino_float32"
    folder.mkdir(parents=True)
    # probe 3: the trained network kept convs 4 and 5 of block 3-6 for its 5x5 option, these weights 4 and 6:
    # the same shape, so the same latency
    (folder / "report.json").write_text(json.dumps({"model": "mobilenet_v2_fmnist", "probes": [
        {"blocks": ["0-1-k3-[1]", "1-3-k3-[2,3]"]}, {"blocks": ["0-3-k9-[1,2,3]"]},
        {"blocks": ["0-1-k3-[1]", "1-3-k3-[2,3]", "3-6-k5-[4,5]"]}]}))
    other = tmp_path / "resnet20.json"
    other.write_text(json.dumps({"model": "resnet20_fmnist", "probes": [{"blocks": ["0-1-k3-[1]"]}]}))
    plans = lm.report_plans(analysis, "mobilenet_v2_fmnist", [str(folder / "report.json"), str(other)])
    assert list(plans) == ["mobilenet_v2_fmnist-x2-seed0/openvino_float32 probe 1",
                           "mobilenet_v2_fmnist-x2-seed0/openvino_float32 probe 3"]
    assert [c.key for c in plans["mobilenet_v2_fmnist-x2-seed0/openvino_float32 probe 1"]] == \
        ["0-1-k3-[1]", "1-3-k3-[2,3]"]
    assert [c.key for c in plans["mobilenet_v2_fmnist-x2-seed0/openvino_float32 probe 3"]][-1] == "3-6-k5-[4,6]"
    assert "probe 2 skipped: block 0-3-k9-[1,2,3] is not a candidate here" in capsys.readouterr().out


def test_the_report_names_calibration_sessions_and_the_compress_plans():
    runs = [{"run": 1, "model": "mobilenet_v2_fmnist", "input_shape": [1, 1, 28, 28], "candidates": 3,
             "kept_candidates": 3, "table_seconds": 1.0, "calibration_seconds": 1.0,
             "latency_model": {"call_ms": 0.0, "call_ms_range": [0.0, 0.0], "call_ms_per_byte": 0.0, "other_ms": 0.0,
                               "original_factor": 1.0, "attempts": 1, "anchor": "networks",
                               "calibration": [{"modelled_ms": 1.0, "measured_ms": 1.0}]},
             "identity_now": {"ratio": 1.0, "low": 1.0, "high": 1.0},
             "plans": [{"budget_ratio": 0.5, "measured": {"ratio": 2.0, "low": 1.9, "high": 2.1, "rounds": 60},
                        "predicted": 2.1, "error": 0.05, "error_against_identity": 0.05, "additive_predicted": 1.5,
                        "additive_error": -0.25}],
             "report_plans": [{"plan": "x2 probe 1", "blocks": ["1-3-k3-[2,3]"],
                               "measured": {"ratio": 2.0, "low": 1.9, "high": 2.1},
                               "measured_alone": {"ratio": 1.9, "low": 1.85, "high": 1.95}, "predicted": 2.2,
                               "error": 0.1, "error_alone": 2.2 / 1.9 - 1}]}]
    md = lm.markdown(report(runs=runs, summary=lm.summary(runs), calibration_sessions=2, plans_from=["a.json"]))
    assert "--calibration-sessions 2 --plans-from a.json`" in md
    assert "worst error **10.0%** measured with the plans, **15.8%** measured alone" in md
    assert "| x2 probe 1 | 1 | x2.00 [1.90, 2.10] | x1.90 [1.85, 1.95] | x2.20 | +10.0% | +15.8% |" in md


def test_a_plan_is_timed_alone_as_compress_probes_it(monkeypatch):
    import depthcut.latency.compare as compare
    import torch
    from torch import nn

    seen = {}
    real = compare.compare_speed

    def spy(*args, **kw):
        seen.update(kw)
        return real(*args, **{**kw, "max_rounds": 12})
    monkeypatch.setattr(compare, "compare_speed", spy)
    est = lm.probe_alone(nn.Conv2d(1, 2, 3).eval(), nn.Conv2d(1, 2, 1).eval(), torch.randn(1, 1, 8, 8), "eager")
    assert seen["sessions"] == 4 and est.rounds == 12                       # the default config's 4 sessions
    assert seen["rel_width"] == 0.02 and seen["decided"] is None and seen["max_rounds"] == 100
