"""Methods compared at equal measured latency (depthcut.comparison), on the simulated backend."""
from __future__ import annotations

import itertools
import json
import random

import pytest
import torch

from depthcut import comparison
from depthcut.cli import main
from depthcut.comparison import CompareConfig, compare, load_comparison
from depthcut.matching import AIM, BAND, SPREAD, common_point
from depthcut.config import LayerMergeConfig
from depthcut.errors import DepthcutError

from test_compression import config, trained  # noqa: F401,F811 - the shared trained TinyNet fixture


def test_methods_land_in_the_band_are_timed_jointly_and_ranked(trained, tmp_path):  # noqa: F811
    model, splits = trained
    cfg = CompareConfig(methods=("layermerge", "layer-pruning", "channel"), speedups=(1.3,), seeds=(0,),
                        match_tolerance=0.10, joint_rounds=6, compress=config(tmp_path))
    result = compare(model, cfg, out=tmp_path / "cmp", splits=splits)
    runs = {r.method: r for r in result.runs}
    # the simulated backend charges per call and per conv: channel pruning cannot make it faster, so that
    # method is recorded as not landing, with its one-line reason, and the others go on
    assert not runs["channel"].landed and "\n" not in runs["channel"].error
    landed = [r for r in result.runs if r.landed]
    assert {r.method for r in landed} == {"layermerge", "layer-pruning"}
    for r in landed:
        # at or above the target (inside the band when the frontier has a plan there, as the report says), and
        # timed again with the others in the same rounds (simulated: exact)
        assert r.report["speedup"] >= 1.3
        assert r.report["within_band"] == (r.report["speedup"] <= 1.3 * 1.10 + 1e-9)
        assert r.joint["ratio"] == pytest.approx(r.report["speedup"], rel=1e-6)
        assert r.joint["low"] <= r.joint["ratio"] <= r.joint["high"]
    table = {row["method"]: row for row in result.table(1.3)}
    assert table["channel"]["landed"] == 0 and table["channel"]["errors"]
    best = max(landed, key=lambda r: r.report["accuracy_after"]).method
    assert result.best(1.3) == best
    # one seed: the means are the runs' own joint speed-ups
    spread = max(r.joint["ratio"] for r in landed) / min(r.joint["ratio"] for r in landed) - 1
    assert result.matched(1.3) == (spread <= 0.10)
    assert result.seed_spreads(1.3) == {0: pytest.approx(spread)}
    # the saved comparison: report, plot, and every landed run loadable on its own
    out = tmp_path / "cmp"
    for name in ("report.md", "report.json", "accuracy_vs_speedup.png"):
        assert (out / name).is_file(), name
    saved = load_comparison(out)
    import depthcut
    assert depthcut.load(out) == saved                     # one loader for every result
    assert isinstance(depthcut.load(out / "runs" / "layermerge-x1.3-seed0", model=model), torch.nn.Module)
    assert saved["targets"]["1.3"]["best"] == best
    assert {r["method"] for r in saved["runs"]} == {"layermerge", "layer-pruning", "channel"}
    assert (out / "runs" / "layermerge-x1.3-seed0" / "report.json").is_file()
    assert "Most accurate: **" + best in (out / "report.md").read_text()


@pytest.mark.parametrize("fields, words", [
    ({"methods": ("layermerge", "nope")}, "unknown method 'nope'"),
    ({"methods": ("layermerge", "layermerge")}, "each method once"),
    ({"speedups": (0.9,)}, "'speedups' must be > 1.0"),
    ({"compress": {"speedup": 2.0}}, "compare sets speedup for each run itself"),
    ({"compress": {"backend": 3}}, "config field 'backend' must be a string"),
    ({"match_tolerance": 0.0}, "'match_tolerance' must be > 0.0"),
])
def test_a_bad_comparison_is_one_line_before_any_work(fields, words):
    with pytest.raises(DepthcutError, match=words):
        CompareConfig(**fields)


def test_config_round_trips_and_takes_a_compress_config(tmp_path):
    cfg = CompareConfig(methods=("layermerge", "channel"), speedups=(1.5, 2.0), seeds=(0, 1),
                        compress=LayerMergeConfig(backend="eager", recovery_epochs=0.5, speedup=3.0))
    assert "speedup" not in cfg.compress and cfg.base().backend == "eager"
    assert cfg.run_config("channel", 2.0, 1).method == "channel"
    assert cfg.run_config("channel", 2.0, 1).speed_tolerance == cfg.match_tolerance
    path = tmp_path / "cmp.json"
    cfg.save(path)
    assert CompareConfig.load(path) == cfg


def test_cli_compare_prints_the_ranking_and_writes_the_report(trained, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("DEPTHCUT_PLUGINS", "simulated_backend")
    out = tmp_path / "cli"
    code = main(["compare", "--model", "cli_models:digits_net", "--data", "digits", "--backend", "sleepy",
                 "--speedup", "1.3", "--methods", "layermerge", "layer-pruning", "--match-tolerance", "0.1",
                 "--joint-rounds", "6", "--importance-steps", "2", "--finetune-size", "200", "--score-size", "200",
                 "--recovery-epochs", "0.2", "--timing-rounds", "2", "--input-shape", "1,1,8,8",
                 "--cache-dir", str(tmp_path / "c"), "--quiet", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "x1.3: layermerge" in printed and "most accurate:" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["methods"] == ["layermerge", "layer-pruning"]


# -- the common point of several methods' networks (depthcut.matching drives it) ----------------------
# one network per method, all at or above the target; within 2 % (else within the 3 % spread) the fastest network
# is as slow as any feasible choice allows (the least accuracy given up), and without one the spread is the
# smallest any choice has

def instance(seed: int):
    rng = random.Random(seed)
    methods = [f"m{k}" for k in range(rng.randint(2, 4))]
    speedups = {f"{m}/{i}": rng.uniform(1.3, 2.0) for m in methods for i in range(rng.randint(1, 5))}
    return methods, speedups, rng.uniform(1.3, 1.7)


def spread(ratios) -> float:
    return max(ratios) / min(ratios) - 1


@pytest.mark.parametrize("seed", range(200))
def test_the_common_point_is_the_brute_force_optimum(seed):
    methods, speedups, target = instance(seed)
    options = [[n for n in speedups if n.startswith(m + "/") and speedups[n] >= target] for m in methods]
    combos = [[speedups[n] for n in c] for c in itertools.product(*options)]
    chosen = common_point(speedups, methods, target)
    if not combos:                                      # some method has nothing at or above the target
        assert chosen == {}
        return
    assert sorted(chosen) == sorted(methods)
    got = [speedups[chosen[m]] for m in methods]
    in_band = [c for c in combos if max(c) <= target * (1 + BAND)]
    combos = in_band or combos                          # choices at the target first
    assert all(chosen[m].startswith(m + "/") for m in methods) and min(got) >= target
    # within AIM first (a margin for the drift between timings), else within SPREAD
    feasible = [c for c in combos if spread(c) <= AIM] or [c for c in combos if spread(c) <= SPREAD]
    if feasible:
        assert spread(got) <= SPREAD + 1e-12
        assert max(got) == pytest.approx(min(max(c) for c in feasible), abs=1e-12)
    else:
        assert spread(got) == pytest.approx(min(spread(c) for c in combos), abs=1e-12)


def test_a_point_in_the_band_wins_over_a_tighter_one_far_above_the_target():
    speedups = {"a/0": 1.52, "a/1": 1.90, "b/0": 1.58, "b/1": 1.91}           # 3.9 % at x1.5, 0.5 % at x1.9
    assert common_point(speedups, ["a", "b"], 1.5) == {"a": "a/0", "b": "b/0"}
    assert common_point({"a/0": 1.90, "b/0": 1.95}, ["a", "b"], 1.5) == {"a": "a/0", "b": "b/0"}   # none in band


def test_a_method_below_the_target_everywhere_leaves_no_common_point():
    assert common_point({"a/0": 1.6, "b/0": 1.4}, ["a", "b"], 1.5) == {}


def test_the_nearest_feasible_point_wins_over_a_faster_tighter_one():
    speedups = {"a/0": 1.52, "a/1": 1.80, "b/0": 1.55, "b/1": 1.80}
    assert common_point(speedups, ["a", "b"], 1.5) == {"a": "a/0", "b": "b/0"}   # 2.0 % apart, nearer x1.5


def test_int8_runs_are_compared_by_their_int8_accuracy():
    """With quantize="int8" the deployed networks are int8: the table ranks them by the int8 accuracy, which
    can reverse the float one's order."""
    from depthcut.comparison import Comparison, Run

    def run(method, float_acc, int8_acc):
        report = {"accuracy_before": 90.0, "accuracy_after": float_acc, "speedup": 2.0,
                  "int8": {"accuracy_int8_before": 89.5, "accuracy_int8_after": int8_acc}}
        return Run(method, 2.0, 0, report=report, joint={"ratio": 2.0, "low": 1.9, "high": 2.1})
    config = CompareConfig(methods=("layermerge", "channel"), speedups=(2.0,), compress={"quantize": "int8"})
    c = Comparison(config, "m", [run("layermerge", 88.0, 87.0), run("channel", 87.5, 87.4)])
    assert {r["method"]: r["accuracy"] for r in c.table(2.0)} == {"layermerge": 87.0, "channel": 87.4}
    assert c.best(2.0) == "channel" and c.table(2.0)[0]["accuracy_before"] == 89.5
    assert c.runs[0].summary()["accuracy_int8_after"] == 87.0


# -- matching "select": one network per method at a common measured point, recovered once ----------------------
def select_config(tmp_path, **kw):
    fields = dict(methods=("layermerge", "layer-pruning"), speedups=(1.3,), seeds=(0, 1), match_tolerance=0.10,
                  joint_rounds=6, matching="select", fresh_timings=2, share_networks=True, control=True,
                  compress=config(tmp_path, importance_seed=0))
    fields.update(kw)
    return CompareConfig(**fields)


def test_select_chooses_a_common_point_recovers_each_network_once_and_shares_it_across_seeds(trained, tmp_path,
                                                                                               monkeypatch):  # noqa: F811
    import depthcut.matching as matching
    from depthcut.methods import Method

    model, splits = trained
    recoveries = []
    real = matching.DepthPlans.recover
    monkeypatch.setattr(matching.DepthPlans, "recover",
                        lambda self, plan: recoveries.append((self.run.config.seed, tuple(plan))) or real(self, plan))
    result = compare(model, select_config(tmp_path), out=tmp_path / "cmp", splits=splits)
    first = [r for r in result.runs if r.seed == 0]
    assert {r.method for r in first} == {"layermerge", "layer-pruning"} and all(r.landed for r in first)
    for r in first:
        # landed without recovery: whichever network is chosen gets the one recovery
        assert r.report["config"]["recovery_epochs"] == 0.0
        # simulated timings are exact: the chosen network meets the target, each fresh timing says the same
        assert r.matched["speedup"] >= 1.3 and len(r.matched["timings"]) == 2
        assert r.matched["timings"][0] == pytest.approx(r.matched["timings"][1])
    speeds = [r.matched["speedup"] for r in first]
    assert max(speeds) / min(speeds) - 1 <= SPREAD
    # seed 1 recovers seed 0's chosen plans with its own seed, and times them afresh
    second = {r.method: r for r in result.runs if r.seed == 1}
    for r in first:
        assert second[r.method].matched["plan"] == r.matched["plan"]
    assert sorted(s for s, _ in recoveries) == [0, 0, 1, 1]
    assert result.table(1.3)[0]["landed"] == 2                    # both seeds compared
    assert set(result.controls) == {0, 1} and all(c["accuracy_after"] > 50 for c in result.controls.values())
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "common measured point" in report and "Control" in report

    # a rerun with the same folder reuses every landing, selection, recovery and timing: no work at all
    monkeypatch.setattr(Method, "compress", lambda *a, **k: pytest.fail("landed again"))
    monkeypatch.setattr(matching, "match", lambda *a, **k: pytest.fail("selected again"))
    monkeypatch.setattr(comparison, "joint_speedups", lambda *a, **k: pytest.fail("landings timed again"))
    again = compare(model, select_config(tmp_path), out=tmp_path / "cmp", splits=splits)
    assert len(recoveries) == 4
    assert [r.matched for r in again.runs] == [r.matched for r in result.runs]
    assert [r.joint for r in again.runs] == [r.joint for r in result.runs] and all(r.joint for r in first)


def test_select_keeps_a_method_without_plan_search_at_its_landed_network(trained, tmp_path):  # noqa: F811
    """layermerge+channel offers no other plans: its landed (and recovered) network is its candidate."""
    from depthcut.methods import get_method

    assert not get_method("layermerge+channel").searchable and get_method("layermerge+channel").plan_search(None) is None
    with pytest.raises(DepthcutError, match="share_networks"):
        select_config(tmp_path, share_networks=True, compress=config(tmp_path))       # no fixed importance seed
    with pytest.raises(DepthcutError, match="matching"):
        select_config(tmp_path, matching="nearest")


def test_a_stored_run_from_before_a_new_config_field_is_reused_only_at_its_default():
    """A comparison stored by an earlier version lacks the fields added since: at their defaults they are what
    it ran with, so it is reused; asked for another value, it is not."""
    from depthcut.comparison import _as_json, _same_config
    from depthcut.config import LayerMergeConfig

    wanted = _as_json(LayerMergeConfig(speedup=2.0, recovery_epochs=0.25).to_dict())
    stored = {k: v for k, v in wanted.items() if k != "test_limit"}
    assert _same_config(stored, wanted)
    assert not _same_config(stored, _as_json(LayerMergeConfig(speedup=2.0, recovery_epochs=0.25,
                                                              test_limit=500).to_dict()))
    assert not _same_config({**stored, "recovery_epochs": 1.0}, wanted)


def test_a_stored_run_is_reused_whatever_path_names_its_cache():
    """Resuming from another checkout, or naming the cache by its absolute path, is the same comparison: the
    cache's location and the progress display are not what a run computes; anything else still counts."""
    from depthcut.comparison import _as_json, _same_config
    from depthcut.config import LayerMergeConfig

    stored = _as_json(LayerMergeConfig(speedup=2.0, cache_dir=".cache/x", progress=True).to_dict())
    assert _same_config(stored, _as_json(LayerMergeConfig(speedup=2.0, cache_dir="/abs/.cache/x",
                                                          progress=False).to_dict()))
    assert not _same_config(stored, _as_json(LayerMergeConfig(speedup=2.5, cache_dir=".cache/x",
                                                              progress=True).to_dict()))
