"""bench/cnn_frontier.py's bookkeeping: which runs a configuration needs, which stored runs it may reuse, and
the options that contradict each other (one line, before any work)."""
from __future__ import annotations


import pytest


import cnn_frontier as cf  # noqa: E402

FAST = ["--models", "resnet20_fmnist", "mobilenet_v2_fmnist", "--targets", "1.25", "2.0", "--methods", "layermerge",
        "channel", "--seeds", "0", "1", "2", "--importance-seed", "mobilenet_v2_fmnist=0", "--matched"]


def args_of(*argv):
    args = cf.parser().parse_args(list(argv))
    cf.check_args(args)
    return args


def test_shared_networks_land_only_at_their_seed_and_every_seed_gets_its_control():
    args = args_of(*FAST, "--share-networks", "--importance-seed", "resnet20_fmnist=1", "mobilenet_v2_fmnist=0")
    jobs = cf.jobs_of(args)
    assert sorted(j for j in jobs if j[0] == "control") == sorted(
        ("control", m, 1.0, s) for m in ("resnet20_fmnist", "mobilenet_v2_fmnist") for s in (0, 1, 2))
    landing = [j for j in jobs if j[0] != "control"]
    assert {(m, s) for _, m, _, s in landing} == {("resnet20_fmnist", 1), ("mobilenet_v2_fmnist", 0)}
    assert len(landing) == 2 * 2 * 2                        # models x targets x methods, once each
    # without the option every seed lands
    assert len([j for j in cf.jobs_of(args_of(*FAST)) if j[0] != "control"]) == 2 * 2 * 2 * 3


def test_unrecovered_landing_runs_carry_no_recovery_and_the_rest_the_budget():
    args = args_of(*FAST, "--recover-chosen-only", "--recovery-epochs", "resnet20_fmnist=0.25", "mobilenet_v2_fmnist=0.1")
    assert cf.frontier_config("resnet20_fmnist", "channel", 2.0, 1, args, landing=True).recovery_epochs == 0
    assert cf.frontier_config("resnet20_fmnist", "channel", 2.0, 1, args).recovery_epochs == 0.25
    assert cf.control_config("mobilenet_v2_fmnist", 1, args).recovery_epochs == 0.1
    plain = args_of(*FAST)                                 # recovered landing runs: the budget (default 1 epoch)
    assert cf.frontier_config("resnet20_fmnist", "channel", 2.0, 1, plain, landing=True).recovery_epochs == 1.0


def test_a_stored_run_is_reused_only_with_the_same_recipe():
    args = args_of(*FAST, "--channels-last", "--importance-steps", "mobilenet_v2_fmnist=10")
    cfg = cf.frontier_config("mobilenet_v2_fmnist", "layermerge", 2.0, 1, args, landing=True)
    assert cfg.channels_last and cfg.importance_steps == 10 and cfg.scoring_seed == 0
    stored = cf.version("layermerge", cfg)
    assert cf.reusable(stored, "layermerge", cfg)
    assert not cf.reusable(stored | {"channels_last": False}, "layermerge", cfg)
    assert not cf.reusable(stored | {"importance_steps": 20}, "layermerge", cfg)
    # a run stored before the fields existed: contiguous, 20 steps, 1 epoch, its own importance seed
    old = {"recovery_epochs": 1.0}
    plain = cf.frontier_config("resnet20_fmnist", "layermerge", 2.0, 1, args_of(*FAST), landing=True)
    assert cf.reusable(old, "layermerge", plain) and not cf.reusable(old, "layermerge", cfg)


@pytest.mark.parametrize("argv, message", [
    (["--share-networks"], "add --matched"),
    (["--matched", "--recover-chosen-only", "--share-networks", "--models", "resnet20_fmnist"],
     "resnet20_fmnist has no shared importance table"),
    (["--matched", "--share-networks", "--models", "resnet20_fmnist", "--importance-seed", "resnet20_fmnist=3"],
     "seed 3, which is not in --seeds 0 1 2"),
])
def test_contradicting_options_stop_with_one_line(argv, message):
    with pytest.raises(SystemExit, match=message):
        args_of(*argv)


def test_the_clock_adds_up_over_invocations_and_survives_a_kill(tmp_path):
    path = tmp_path / "clock.json"
    clock = cf.Clock(path)
    with clock.phase("runs"):
        pass
    with pytest.raises(KeyboardInterrupt):
        with cf.Clock(path).phase("matching"):          # interrupted inside a step: what it spent is kept
            raise KeyboardInterrupt
    again = cf.Clock(path)
    assert set(again.data["phases"]) == {"runs", "matching"}
    reading = cf.Clock(path, record=False)                  # --report-only: reads, adds nothing
    with reading.phase("joint"):
        pass
    assert reading.data == again.data == cf.Clock(path).data
    fresh, landing = cf.PHASES[-1], cf.PHASES[1]             # told in the order the benchmark takes them
    assert cf.clock_line({"phases": {fresh: 600.0, landing: 1200.0}}) == f"30 min ({landing} 20.0 min, {fresh} 10.0 min)"
