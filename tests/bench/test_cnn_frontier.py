"""bench/cnn_frontier.py, a thin driver over depthcut.compare: the comparison it asks for, per model."""
from __future__ import annotations

import pytest

import cnn_frontier as cf
from depthcut.errors import DepthcutError


def config_of(model: str, *argv: str):
    args = cf.parser().parse_args(list(argv))
    args.importance_seed = None if args.importance_seed < 0 else args.importance_seed
    return cf.compare_config(model, args)


def test_the_driver_asks_compare_for_a_selection_with_per_model_budgets():
    rn = config_of("resnet20_fmnist")
    mb = config_of("mobilenet_v2_fmnist")
    assert rn.matching == "select" and rn.share_networks and rn.control and rn.fresh_timings == 3
    assert rn.methods == cf.METHODS and rn.speedups == (1.25, 1.5, 2.0) and rn.seeds == (0, 1, 2)
    assert (rn.compress["recovery_epochs"], mb.compress["recovery_epochs"]) == (0.25, 0.1)
    assert (rn.compress["importance_steps"], mb.compress["importance_steps"]) == (20, 10)
    assert rn.compress["importance_seed"] == 0 and rn.compress["timing_threads"] == 1
    # a plain value is every other model's; pairs override it
    cfg = config_of("other", "--recovery-epochs", "0.5", "resnet20_fmnist=1")
    assert cfg.compress["recovery_epochs"] == 0.5
    assert config_of("resnet20_fmnist", "--recovery-epochs", "0.5", "resnet20_fmnist=1").compress["recovery_epochs"] == 1


def test_each_seed_its_own_table_means_each_seed_its_own_networks():
    cfg = config_of("resnet20_fmnist", "--importance-seed", "-1")
    assert not cfg.share_networks and cfg.compress["importance_seed"] is None


def test_a_bad_method_is_one_line_before_any_work():
    with pytest.raises(DepthcutError, match="unknown method 'nope'"):
        config_of("resnet20_fmnist", "--methods", "layermerge", "nope")


def test_the_wall_clock_counts_an_invocation_killed_before_it_stopped(tmp_path):
    import json
    import time

    path = tmp_path / "clock.json"
    first = cf.WallClock(path, every=0.05)
    time.sleep(0.3)
    killed = json.loads(path.read_text())          # what a kill -9 now would leave behind
    assert killed["invocations"] == 1 and 0.15 <= killed["seconds"] <= first.now()["seconds"]
    first._done.set()                              # the ticker stops without a final write, as a kill would
    first._ticker.join()
    second = cf.WallClock(path, every=60)
    time.sleep(0.05)
    total = second.stop()
    assert total["invocations"] == 2 and total["seconds"] >= killed["seconds"] + 0.05
    assert json.loads(path.read_text()) == total
