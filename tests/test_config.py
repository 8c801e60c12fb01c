import json

import pytest

from depthcut.config import LayerMergeConfig
from depthcut.errors import DepthcutError


def test_config_round_trips_through_json(tmp_path):
    cfg = LayerMergeConfig(speedup=1.7, backend="eager", batch_size=8, input_shape=[1, 1, 28, 28])
    path = tmp_path / "cfg.json"
    cfg.save(path)
    again = LayerMergeConfig.load(path)
    assert again == cfg
    assert json.loads(path.read_text())["version"] == 1
    assert again.input_shape == (1, 1, 28, 28)


def test_the_target_is_a_speedup_or_a_latency():
    assert LayerMergeConfig().speedup == 1.5 and LayerMergeConfig().latency_ms is None
    cfg = LayerMergeConfig(latency_ms=2.0)              # a latency alone is a complete target
    assert cfg.speedup is None and cfg.latency_ms == 2.0
    assert LayerMergeConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("kwargs, words", [
    ({"speedup": 1.5, "latency_ms": 3.0}, "only one of speedup and latency_ms"),
    ({"speedup": float("nan")}, "'speedup' must be a finite number"),
    ({"speedup": float("inf")}, "'speedup' must be a finite number"),
    ({"latency_ms": float("nan")}, "'latency_ms' must be a finite number"),
    ({"batch_size": "8"}, "'batch_size' must be an integer, got '8'"),
    ({"batch_size": 2.5}, "'batch_size' must be an integer"),
    ({"distill": "yes"}, "'distill' must be true or false"),
    ({"progress": 1}, "'progress' must be true or false"),
    ({"input_shape": [1, 3, "a", 4]}, r"'input_shape\[2\]' must be an integer"),
    ({"input_shape": [1, 3, 4]}, "N,C,H,W"),
    ({"data": 3}, "'data' must be a string"),
    ({"importance_steps": -1}, "'importance_steps' must be >= 0"),
    ({"recovery_lr": 0.0}, "'recovery_lr' must be > 0"),
    ({"timing_rounds": 0}, "'timing_rounds' must be >= 1"),
    ({"timing_sessions": 0}, "'timing_sessions' must be >= 1"),
    ({"timing_threads": 0}, "'timing_threads' must be >= 1"),
    ({"timing_threads": 1, "backend": "eager"}, "timing_threads sets the thread pool of a runtime that has its own, as ONNX Runtime does; the 'eager' backend"),
    ({"kd_weight": 1.5}, "'kd_weight' must be <= 1"),
    ({"speedup": 0.5}, "speedup"),
    ({"speedup": None, "latency_ms": -1.0}, "-1.0 ms"),
    ({"method": "magic"}, "magic"),
    ({"importance": "oracle"}, "oracle"),
    ({"batch_size": 0}, "batch size"),
    ({"version": 99}, "version 99"),
])
def test_bad_config_names_the_problem(kwargs, words):
    with pytest.raises(DepthcutError, match=words):
        LayerMergeConfig(**kwargs)


def test_unknown_fields_and_bad_files_are_user_errors(tmp_path):
    with pytest.raises(DepthcutError, match="speed_up"):
        LayerMergeConfig.from_dict({"speed_up": 2})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DepthcutError, match="bad.json"):
        LayerMergeConfig.load(bad)
    with pytest.raises(DepthcutError, match="missing.json"):
        LayerMergeConfig.load(tmp_path / "missing.json")
    typed = tmp_path / "typed.json"
    typed.write_text(json.dumps({"speedup": "fast"}))
    with pytest.raises(DepthcutError, match=r"typed.json: config field 'speedup' must be a finite number or null"):
        LayerMergeConfig.load(typed)
    listed = tmp_path / "listed.json"
    listed.write_text("[1, 2]")
    with pytest.raises(DepthcutError, match="listed.json.*JSON object"):
        LayerMergeConfig.load(listed)


def test_device_defaults_to_the_cpu_without_a_gpu_and_cuda_is_checked(monkeypatch):
    import torch

    from depthcut.config import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(LayerMergeConfig(backend="eager")) == "cpu"
    with pytest.raises(DepthcutError, match="cuda requested but CUDA is not available"):
        resolve_device(LayerMergeConfig(backend="eager", device="cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device(LayerMergeConfig(backend="eager")) == "cuda"
    assert resolve_device(LayerMergeConfig(backend="onnxruntime")) == "cpu"     # ORT times on the CPU
    with pytest.raises(DepthcutError, match="only 1 GPU"):
        resolve_device(LayerMergeConfig(backend="eager", device="cuda:1"))
    with pytest.raises(DepthcutError, match="use --backend eager"):
        resolve_device(LayerMergeConfig(backend="onnxruntime", device="cuda"))
    for bad in ("gpu", "cuda:x", "cpu:0"):
        with pytest.raises(DepthcutError, match="device must be"):
            LayerMergeConfig(device=bad)


@pytest.mark.parametrize("fields, message", [
    ({"importance_mode": "sometimes"}, "unknown importance mode 'sometimes'"),
    ({"importance_mode": "adaptive", "importance": "bn-recalibration"}, "needs the 'finetune' proxy"),
    ({"importance_mode": "adaptive", "shard": (0, 2)}, "cannot be split into shards"),
    ({"importance_mode": "adaptive", "method": "depthshrinker"}, "ranks greedily"),
    ({"adaptive_tolerance": -0.1}, "adaptive_tolerance must be >= 0"),
])
def test_adaptive_importance_refuses_what_it_cannot_do_in_one_line(fields, message):
    with pytest.raises(DepthcutError, match=message) as err:
        LayerMergeConfig(**fields)
    assert "\n" not in str(err.value)


def test_adaptive_importance_is_accepted_where_the_search_is_exact_or_unused():
    for method in ("layermerge", "two-stage", "layer-pruning", "channel"):
        assert LayerMergeConfig(importance_mode="adaptive", method=method).importance_mode == "adaptive"
