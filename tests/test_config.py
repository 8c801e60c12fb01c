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


@pytest.mark.parametrize("kwargs, words", [
    ({"speedup": None, "latency_ms": None}, "exactly one"),
    ({"speedup": 1.5, "latency_ms": 3.0}, "exactly one"),
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
