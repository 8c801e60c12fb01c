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
