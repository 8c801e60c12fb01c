"""bench/matched_latency.py's refinement, filling and re-timing around the common-point selection (which lives
in depthcut.comparison and is tested in tests/test_comparison.py)."""
import pytest


# -- the refinement: the coarse timing chooses, a timing like the report's re-chooses ---------------------------
class FakeSearch:
    """A depth method whose own search offers ``plans`` around its landed plan."""
    kind = "depth"

    def __init__(self, method: str, plans: list[str]):
        self.method, self.plans_ = method, plans

    def plans_at(self, budgets):
        return [[p] for p in self.plans_]

    def network(self, plan):
        return f"{self.method}:{plan[0]}"


class FakeTimer:
    """Speed-ups by network: ``coarse`` for one-session timings (the selection), ``fine`` otherwise."""

    def __init__(self, coarse: dict, fine: dict):
        self.coarse, self.fine, self.calls = coarse, fine, []

    def runners(self, what, sessions=None):
        return (str(what) if not isinstance(what, str) else what, sessions)

    def joint(self, runners, reference, rounds):
        table = self.coarse if all(s == 1 for _, s in runners.values()) else self.fine
        self.calls.append(sorted(n for n in runners if n != reference))
        return {n: table[w] for n, (w, _) in runners.items() if n != reference}


class Original:
    def eval(self):
        return "original"


def test_a_choice_that_the_report_like_timing_rejects_is_made_again():
    # coarse: a:p and b:p look 1 % apart; timed like the report, they are 10 % apart and a:q, b:p 1 % apart
    coarse = {"original": 1, "a:landed": 1.9, "a:p": 1.52, "a:q": 1.70, "b:landed": 1.95, "b:p": 1.535, "b:q": 2.2}
    fine = {"original": 1, "a:landed": 1.9, "a:p": 1.50 * 1.10, "a:q": 1.51, "b:landed": 1.95, "b:p": 1.52, "b:q": 2.2}
    result, timer = matched_with_original(coarse, fine)
    assert {m: c["plan"] for m, c in result["coarse_choice"].items()} == {"a": ["p"], "b": ["p"]}
    assert result["refinements"][0]["spread"] <= 0.03              # re-chosen on the first refinement
    assert sorted(timer.calls[1]) == sorted(["a/landed", "a/0", "a/1", "b/landed", "b/0", "b/1"])
    assert result["spread"] <= 0.03                                # the fresh timing agrees with the refined one
    assert result["chosen"]["a"]["plan"] == ["q"] and result["chosen"]["b"]["plan"] == ["p"]
    assert result["version"] >= 2


def test_a_choice_confirmed_by_the_first_refinement_is_kept():
    coarse = {"original": 1, "a:landed": 1.52, "a:p": 1.8, "a:q": 2.0, "b:landed": 1.53, "b:p": 1.9, "b:q": 2.1}
    result, timer = matched_with_original(coarse, dict(coarse))
    assert len(result["refinements"]) == 1
    assert result["chosen"]["a"]["landed"] and result["chosen"]["b"]["landed"]


def matched_with_original(coarse, fine):
    from matched_latency import match

    reports = {m: {"plan_key": ["landed"], "modelled_body_ms_identity": 1.0, "probes": []} for m in ("a", "b")}
    searches = {"a": FakeSearch("a", ["p", "q"]), "b": FakeSearch("b", ["p", "q"])}
    timer = FakeTimer(coarse, fine)
    result = match("toy", 1.5, 0, reports, {m: f"{m}:landed" for m in reports}, searches.__getitem__, timer, 50,
                   Original())
    return result, timer


def test_a_plan_just_above_the_target_that_the_coarse_timing_puts_below_it_is_still_matched():
    """b's plans all measure below x1.5 in the coarse timing (one session, off by 2-4 %), its landed plan
    x1.52 in the report-like one: the coarse choice takes the target lowered by that error, the refinement
    chooses at the target."""
    coarse = {"original": 1, "a:landed": 1.52, "a:p": 1.6, "a:q": 1.7, "b:landed": 1.48, "b:p": 1.3, "b:q": 1.2}
    fine = dict(coarse, **{"b:landed": 1.52})
    result, _ = matched_with_original(coarse, fine)
    assert result is not None and result["chosen"]["b"]["landed"] and result["chosen"]["a"]["landed"]
    assert result["spread"] <= 0.02
    # nothing of b's near the target at all: no common point
    far = dict(coarse, **{"b:landed": 1.40})
    assert matched_with_original(far, dict(far))[0] is None


def test_a_depth_methods_landing_probes_near_the_target_are_candidates():
    """Noisy probes bias the predicted budgets: the DP's plans there all measure above the band, while two
    probes measured x1.24 and x1.27 (x1.25 target). Probes down to the coarse error below the target are
    candidates, with their modelled cost known for gap filling; the landed plan is not repeated."""
    from matched_latency import candidates

    search = BudgetSearch("d", {"landed": 6.0, "p124": 6.5, "p127": 6.4, "dp": 5.8, "p100": 8.0}, first=["dp"])
    probes = [{"blocks": ["landed"], "modelled": 6.0, "measured_ratio": 1.35},
              {"blocks": ["p124"], "modelled": 6.5, "measured_ratio": 1.24},
              {"blocks": ["p127"], "modelled": 6.4, "measured_ratio": 1.27},
              {"blocks": ["p100"], "modelled": 8.0, "measured_ratio": 1.10}]
    report = {"plan_key": ["landed"], "modelled_body_ms_identity": 10.0, "probes": probes}
    out = candidates("d", search, report, 1.25)
    assert [c["plan"] for c in out.values()] == [["landed"], ["p124"], ["p127"], ["dp"]]
    assert search.modelled[("p124",)] == 6.5 and search.modelled[("p127",)] == 6.4


def test_refinement_stops_after_its_limit_and_the_report_still_says_the_spread():
    from matched_latency import REFINES

    coarse = {"original": 1, "a:landed": 1.52, "a:p": 1.6, "a:q": 1.7, "b:landed": 1.53, "b:p": 1.9, "b:q": 2.1}
    fine = {"original": 1, "a:landed": 1.52, "a:p": 1.6, "a:q": 1.7, "b:landed": 1.80, "b:p": 1.9, "b:q": 2.1}
    result, timer = matched_with_original(coarse, fine)
    assert len(result["refinements"]) == REFINES
    assert result["spread"] == pytest.approx(1.80 / 1.7 - 1)      # the tightest choice, reported as measured


# -- fresh timings minutes apart: stored one by one, reported as medians ------------------------------------------
def test_the_report_takes_each_networks_median_over_the_fresh_timings():
    from matched_latency import reported

    result = {"speedups": {"a": 1.50, "b": 1.60},
              "retimed": [{"a": 1.55, "b": 1.52}, {"a": 1.53, "b": 1.56}]}
    said = reported(result)
    assert said["speedups"] == {"a": 1.53, "b": 1.56}
    assert said["spread"] == pytest.approx(1.56 / 1.53 - 1)
    assert said["spreads"] == pytest.approx([1.60 / 1.50 - 1, 1.55 / 1.52 - 1, 1.56 / 1.53 - 1])
    assert said["timings"] == 3
    assert reported({"speedups": {"a": 1.5, "b": 1.6}})["spreads"] == pytest.approx([1.6 / 1.5 - 1])


class QueueTimer:
    """Joint timings answered from a queue; records what each timing ran."""

    def __init__(self, answers):
        import torch
        self.answers, self.calls, self.x = list(answers), [], torch.zeros(1, 1, 4, 4)

    def runners(self, what, sessions=None):
        return str(what)

    def joint(self, runners, reference, rounds):
        self.calls.append(dict(runners))
        return self.answers.pop(0)


class ConvSearch:
    kind = "depth"

    def __init__(self):
        self.built = 0

    def network(self, plan):
        import torch
        self.built += 1
        return torch.nn.Conv2d(1, 1, 3, padding=1)


def test_retime_adds_one_timing_per_pass_and_times_each_chosen_network_from_a_file(tmp_path):
    import json
    from matched_latency import VERSION, reported, retime

    for m in ("a", "b"):
        (tmp_path / m).mkdir()
        (tmp_path / m / "model.onnx").write_bytes(b"landed")
    path = tmp_path / "toy-x1.5-s0.json"
    path.write_text(json.dumps({"version": VERSION, "speedups": {"a": 1.50, "b": 1.60}, "rounds": 50,
                                "chosen": {"a": {"plan": ["landed"], "landed": True, "accuracy": 90.0},
                                           "b": {"plan": ["p"], "landed": False, "accuracy": 89.0}}}))
    timer, search = QueueTimer([{"a": 1.55, "b": 1.52}, {"a": 1.53, "b": 1.56}]), ConvSearch()
    setup = lambda model, sessions, threads: (timer, Original())             # noqa: E731
    args = (lambda m: tmp_path / m, lambda m: search, 50, 4)

    retime("toy", path, *args, upto=2, setup=setup)
    retime("toy", path, *args, upto=2, setup=setup)                          # already has 2: nothing timed
    assert len(timer.calls) == 1
    exported = list((tmp_path / "b").glob("matched-*.onnx"))
    assert len(exported) == 1 and exported[0].stat().st_size > 0           # the chosen plan, exported once
    assert timer.calls[0] == {"original": "original", "a": str(tmp_path / "a" / "model.onnx"), "b": str(exported[0])}
    retime("toy", path, *args, upto=3, setup=setup)
    assert search.built == 1                                                 # the second pass reads the file
    stored = json.loads(path.read_text())
    assert stored["retimed"] == [{"a": 1.55, "b": 1.52}, {"a": 1.53, "b": 1.56}]
    assert reported(stored)["speedups"] == {"a": 1.53, "b": 1.56}


def test_retime_leaves_a_result_whose_landed_network_is_gone(tmp_path):
    import json
    from matched_latency import VERSION, retime

    path = tmp_path / "toy-x1.5-s0.json"
    stored = {"version": VERSION, "speedups": {"a": 1.5}, "rounds": 50,
              "chosen": {"a": {"plan": ["landed"], "landed": True, "accuracy": 90.0}}}
    path.write_text(json.dumps(stored))
    timer = QueueTimer([])
    assert retime("toy", path, lambda m: tmp_path / m, None, 50, 4, upto=3,
                  setup=lambda *a: (timer, Original())) == stored
    assert timer.calls == []


# -- gap filling: when the plans are too far apart, new plans between them ----------------------------------------
class ChannelSearch:
    """Channel plans over three groups: a ratio keeps that fraction of each, in multiples of 4 (the family does
    not matter here); a mixed plan is its counts."""
    kind = "model"
    FULL = {"g1": 16, "g2": 32, "g3": 64}

    def pruned(self, ratio, scope):
        return f"pruned:{scope}:{ratio}"

    def counts(self, plan):
        if plan is None:
            return dict(self.FULL)
        if "channel_counts" in plan:
            return dict(plan["channel_counts"])
        return {g: max(4, 4 * round(n * (1 - plan["pruning_ratio"]) / 4)) for g, n in self.FULL.items()}

    def counted(self, counts):
        return f"counted:{sorted(counts.items())}"


class BudgetSearch:
    """A depth method's DP over fixed plans (name -> modelled cost): at a budget, the costliest plan that fits
    (the most important). ``first`` is what its first call answers (its landing's predicted budgets, which
    missed the plans in between)."""
    kind = "depth"

    def __init__(self, method: str, costs: dict[str, float], first: list[str]):
        self.method, self.costs, self.first, self.modelled, self.asked = method, costs, first, {}, []

    def plans_at(self, budgets):
        if self.first is not None:
            plans, self.first = [[p] for p in self.first], None
        else:
            self.asked.append(list(budgets))
            fits = [max((c, p) for p, c in self.costs.items() if c <= b) for b in budgets
                    if any(c <= b for c in self.costs.values())]
            plans = list(dict.fromkeys(p for _, p in fits))
            plans = [[p] for p in plans]
        for p in plans:
            self.modelled[tuple(p)] = self.costs[p[0]]
        return plans

    def network(self, plan):
        return f"{self.method}:{plan[0]}"


def test_channel_pruning_fills_between_the_two_ratios_that_bracket_another_methods_speedup():
    from matched_latency import FILL, fill_candidates

    pool = {"c/landed": {"plan": {"pruning_ratio": 0.30, "channel_scope": "global"}, "landed": True},
            "c/0": {"plan": {"pruning_ratio": 0.36, "channel_scope": "global"}, "landed": False},
            "c/1": {"plan": {"pruning_ratio": 0.20, "channel_scope": "uniform"}, "landed": False}}
    speeds = {"c/landed": 1.29, "c/0": 1.35, "c/1": 1.40}
    out = fill_candidates("c", ChannelSearch(), {}, pool, speeds, [1.32])
    by_scope = {scope: sorted(c["plan"]["pruning_ratio"] for c in out.values() if c["plan"]["channel_scope"] == scope)
                for scope in ("global", "uniform")}
    assert len(by_scope["global"]) == FILL and all(0.30 < r < 0.36 for r in by_scope["global"])
    # the uniform family's only plan is faster than the aim: it brackets from the original (x1.0, ratio 0)
    assert len(by_scope["uniform"]) == FILL and all(0 < r < 0.20 for r in by_scope["uniform"])
    ratios = [c for c in out.values() if "pruning_ratio" in c["plan"]]
    assert all(c["network"] == f"pruned:{c['plan']['channel_scope']}:{c['plan']['pruning_ratio']}" for c in ratios)
    mixed = [c for c in out.values() if "pruning_ratio" not in c["plan"]]
    assert mixed and all(c["plan"]["channel_scope"] == "mixed" for c in mixed)
    assert all(c["network"] == f"counted:{sorted(c['plan']['channel_counts'].items())}" for c in mixed)
    assert len({n for n in out} | set(pool)) == len(out) + len(pool)       # new names


def test_channel_pruning_also_fills_with_plans_mixed_group_by_group_between_distinct_speed_levels():
    """Ratios cannot fill a step in latency (x1.53 -> x2.06 between two ratios); plans mixed group by group
    between the nearest distinct levels below the aim (x1.53, then the original: x1.52 is the same level) and
    the three above (x2.06, x2.17, x2.47) can: every mixed plan takes each group's count from one of its two
    ends, is neither end, and mixes towards every level above."""
    from matched_latency import MIX, MIX_ABOVE, MIX_BELOW, fill_candidates

    search = ChannelSearch()
    ratios = {"c/landed": 0.30, "c/0": 0.36, "c/1": 0.42, "c/2": 0.45, "c/3": 0.55}
    pool = {n: {"plan": {"pruning_ratio": r, "channel_scope": "global"}, "landed": n == "c/landed"}
            for n, r in ratios.items()}
    speeds = {"c/landed": 1.52, "c/0": 1.53, "c/1": 2.06, "c/2": 2.17, "c/3": 2.47}
    out = fill_candidates("c", search, {}, pool, speeds, [1.58])
    mixed = [c["plan"]["channel_counts"] for c in out.values() if "channel_counts" in c["plan"]]
    below = [search.counts(pool["c/0"]["plan"]), search.counts(None)]
    above = [search.counts(pool[n]["plan"]) for n in ("c/1", "c/2", "c/3")]
    assert (MIX_BELOW, MIX_ABOVE) == (2, 3)

    def between(plan, slower, faster):
        return plan not in (slower, faster) and all(plan[g] in (slower[g], faster[g]) for g in plan)
    assert mixed and all(any(between(p, s, f) for s in below for f in above) for p in mixed)
    for faster in above:               # towards every level above, from the nearest level below
        assert any(between(p, below[0], faster) for p in mixed)
    assert len(mixed) <= MIX * MIX_BELOW * MIX_ABOVE and len(mixed) == len({str(p) for p in mixed})


def test_no_filling_where_a_candidate_is_already_near_the_aim():
    from matched_latency import fill_candidates

    pool = {"c/landed": {"plan": {"pruning_ratio": 0.30, "channel_scope": "global"}, "landed": True},
            "c/0": {"plan": {"pruning_ratio": 0.36, "channel_scope": "global"}, "landed": False}}
    assert fill_candidates("c", ChannelSearch(), {}, pool, {"c/landed": 1.29, "c/0": 1.35}, [1.30, 1.34]) == {}
    assert fill_candidates("c", ChannelSearch(), {}, pool, {"c/landed": 1.29, "c/0": 1.35}, [1.50]) == {}


def test_a_depth_method_fills_at_budgets_between_the_bracketing_plans_costs_and_adds_only_new_plans():
    from matched_latency import fill_candidates

    search = BudgetSearch("d", {"landed": 6.6, "r": 6.3, "s": 6.1, "p": 5.9}, first=["p"])
    pool = {"d/landed": {"plan": ["landed"], "landed": True}, "d/0": {"plan": search.plans_at([0])[0], "landed": False}}
    report = {"plan_modelled": 6.6, "modelled_body_ms_identity": 10.0}
    out = fill_candidates("d", search, report, pool, {"d/landed": 1.52, "d/0": 1.70}, [1.60])
    assert all(5.9 < b < 6.6 for b in search.asked[-1])
    assert sorted(c["plan"][0] for c in out.values()) == ["r", "s"]           # p is known; r, s lie between
    assert all(c["network"] == f"d:{c['plan'][0]}" for c in out.values())
    # a plan with no cost known brackets nothing (the original's cost still does)
    assert fill_candidates("d", search, {}, pool, {"d/landed": 1.52, "d/0": 1.70}, [1.60]) == {}


def test_when_no_refinement_gets_within_the_spread_the_filled_plans_are_chosen():
    from matched_latency import REFINES, SPREAD, VERSION, match

    # a's plans: x1.52 (landed) and x1.70; b's only plan x1.60: 5 % apart at best, until a's x1.58 is found
    speeds = {"original": 1, "a:landed": 1.52, "a:p": 1.70, "a:r": 1.58, "b:landed": 1.60}
    searches = {"a": BudgetSearch("a", {"landed": 6.6, "r": 6.3, "p": 5.9}, first=["p"]),
                "b": BudgetSearch("b", {"landed": 6.2}, first=[])}
    reports = {"a": {"plan_key": ["landed"], "plan_modelled": 6.6, "modelled_body_ms_identity": 10.0, "probes": []},
               "b": {"plan_key": ["landed"], "plan_modelled": 6.2, "modelled_body_ms_identity": 10.0, "probes": []}}
    timer = FakeTimer(speeds, speeds)
    result = match("toy", 1.5, 0, reports, {m: f"{m}:landed" for m in reports}, searches.__getitem__, timer, 50,
                   Original())
    assert len(result["refinements"]) == REFINES + 1                # REFINES without, one with the fills
    assert [f["plan"] for f in result["fills"]["a"]] == [["r"]] and result["fills"]["b"] == []
    assert result["chosen"]["a"]["plan"] == ["r"] and result["spread"] <= SPREAD
    assert result["version"] == VERSION


def test_an_older_result_stands_only_where_this_version_would_choose_the_same():
    from matched_latency import VERSION, current

    at = {"a": {"refined_speedup": 1.52}, "b": {"refined_speedup": 1.55}}      # inside the band of x1.5
    far = {"a": {"refined_speedup": 1.90}, "b": {"refined_speedup": 1.92}}     # outside it
    refined = [{"spread": 0.05}, {"spread": 0.02}]
    v2 = {"version": 2, "refinements": refined, "chosen": at}
    assert current(v2 | {"speedups": {"a": 1.5, "b": 1.52}}, 1.5)
    assert not current(v2 | {"speedups": {"a": 1.5, "b": 1.56}}, 1.5)                      # alone: 4 %
    assert not current(v2 | {"speedups": {"a": 1.5, "b": 1.52}, "chosen": far}, 1.5)      # off the band
    assert not current(v2 | {"refinements": refined[::-1], "speedups": {"a": 1.5}}, 1.5)  # never within 3 %
    assert not current({"version": 1, "chosen": at}, 1.5)
    assert current({"version": 4, "chosen": at}, 1.5) and not current({"version": 4, "chosen": far}, 1.5)
    # version 3: stands unless a confirmation re-chose networks faster than 3 % above its timing's fastest
    timed = {"a/0": 1.52, "a/1": 1.60, "b/0": 1.55, "b/1": 1.62}
    first = {"chosen": {"a": "a/0", "b": "b/0"}, "speedups": {"a": 1.52, "b": 1.55}}
    local = {"chosen": {"a": "a/0", "b": "b/0"}, "speedups": {"a": 1.52, "b": 1.55}}
    jump = {"chosen": {"a": "a/1", "b": "b/1"}, "speedups": {"a": 1.60, "b": 1.62}}
    v3 = {"version": 3, "refinements": [{"spread": 0.02, "timed": timed}], "chosen": at}
    assert current(v3 | {"confirmations": [first]}, 1.5) and current(v3 | {"confirmations": [first, local]}, 1.5)
    assert not current(v3 | {"confirmations": [first, jump]}, 1.5)
    assert current({"version": VERSION, "chosen": far}, 1.5)
    # version 5: stands unless gap filling ran with channel pruning among the methods (6 adds mixed plans)
    assert current({"version": 5, "chosen": at, "fills": {}}, 1.5)
    assert current({"version": 5, "chosen": at, "fills": {"a": [], "b": []}}, 1.5)
    assert not current({"version": 5, "chosen": at, "fills": {"a": [], "channel": []}}, 1.5)
    assert current({"version": 7, "chosen": at, "refinements": [{"spread": 0.025}]}, 1.5)    # 8: only off band
    assert not current({"version": 7, "chosen": far}, 1.5)
    # version 6: stands unless a refinement stopped within SPREAD but not within AIM (7 refines on from there)
    v6 = {"version": 6, "chosen": at, "fills": {"channel": []}}
    assert current(v6 | {"refinements": [{"spread": 0.05}, {"spread": 0.015}]}, 1.5)
    assert not current(v6 | {"refinements": [{"spread": 0.05}, {"spread": 0.025}]}, 1.5)
    assert not current(v6 | {"refinements": [{"spread": 0.015}], "confirmations": [{"spread": 0.025}]}, 1.5)
    assert current(v6 | {"refinements": [{"spread": 0.015}], "confirmations": [{"spread": 0.04}, {"spread": 0.01}]},
                   1.5)


def test_the_target_of_a_stored_result_is_read_from_its_name(tmp_path):
    from matched_latency import target_of

    assert target_of(tmp_path / "resnet20_fmnist-x1.25-s2.json") == 1.25
    assert target_of(tmp_path / "mobilenet_v2_fmnist-x2.0-s0.json") == 2.0


# -- confirmation: the chosen networks timed alone, as the fresh timings time them ------------------------------
class AloneTimer(FakeTimer):
    """Like FakeTimer, but a timing of the chosen networks alone (named by method, no "/") reads ``alone``."""

    def __init__(self, coarse: dict, fine: dict, alone: dict):
        super().__init__(coarse, fine)
        self.alone = alone

    def joint(self, runners, reference, rounds):
        if any("/" in n for n in runners):
            return super().joint(runners, reference, rounds)
        self.calls.append(sorted(n for n in runners if n != reference))
        return {n: self.alone[w] for n, (w, _) in runners.items() if n != reference}


def test_a_choice_that_spreads_when_timed_alone_is_shifted_and_confirmed_again():
    from matched_latency import SPREAD, match

    fine = {"original": 1, "a:landed": 1.52, "a:p": 1.56, "b:landed": 1.54, "b:p": 1.60}
    alone = {"a:landed": 1.52, "a:p": 1.56, "b:landed": 1.60, "b:p": 1.66}    # b's network is 4 % faster alone
    searches = {"a": FakeSearch("a", ["p"]), "b": FakeSearch("b", ["p"])}
    reports = {m: {"plan_key": ["landed"], "modelled_body_ms_identity": 1.0, "probes": []} for m in ("a", "b")}
    timer = AloneTimer(fine, fine, alone)
    result = match("toy", 1.5, 0, reports, {m: f"{m}:landed" for m in reports}, searches.__getitem__, timer, 50,
                   Original())
    first, second = result["confirmations"]
    assert first["chosen"] == {"a": "a/landed", "b": "b/landed"} and first["spread"] > SPREAD
    assert second["chosen"] == {"a": "a/0", "b": "b/landed"} and second["spread"] <= SPREAD
    assert result["chosen"]["a"]["plan"] == ["p"] and result["chosen"]["b"]["landed"]
    assert result["speedups"] == {"a": 1.56, "b": 1.60}                  # the fresh timing, taken after


def test_confirmation_keeps_the_tightest_choice_when_none_is_within_the_spread():
    from matched_latency import CONFIRMS, match

    fine = {"original": 1, "a:landed": 1.52, "a:p": 1.56, "b:landed": 1.54, "b:p": 1.60}
    alone = {"a:landed": 1.52, "a:p": 1.40, "b:landed": 1.60, "b:p": 1.70}    # nothing meets alone
    searches = {"a": FakeSearch("a", ["p"]), "b": FakeSearch("b", ["p"])}
    reports = {m: {"plan_key": ["landed"], "modelled_body_ms_identity": 1.0, "probes": []} for m in ("a", "b")}
    timer = AloneTimer(fine, fine, alone)
    result = match("toy", 1.5, 0, reports, {m: f"{m}:landed" for m in reports}, searches.__getitem__, timer, 50,
                   Original())
    spreads = [c["spread"] for c in result["confirmations"]]
    assert len(spreads) == 2 <= CONFIRMS and min(spreads) > 0.03   # the second choice leaves a below the target
    best = min(result["confirmations"], key=lambda c: c["spread"])["chosen"]
    assert best == {"a": "a/landed", "b": "b/landed"}
    assert result["chosen"]["a"]["landed"] and result["chosen"]["b"]["landed"]


def test_confirmation_corrects_locally_and_does_not_jump_to_a_far_point():
    from matched_latency import match

    # timed alone, b is 3 % faster; a point within 3 % exists only near x1.9, far from the target x1.5
    fine = {"original": 1, "a:landed": 1.52, "a:p": 1.90, "b:landed": 1.55, "b:p": 1.88}
    alone = {"a:landed": 1.52, "a:p": 1.90, "b:landed": 1.60, "b:p": 1.94}
    searches = {"a": FakeSearch("a", ["p"]), "b": FakeSearch("b", ["p"])}
    reports = {m: {"plan_key": ["landed"], "modelled_body_ms_identity": 1.0, "probes": []} for m in ("a", "b")}
    result = match("toy", 1.5, 0, reports, {m: f"{m}:landed" for m in reports}, searches.__getitem__,
                   AloneTimer(fine, fine, alone), 50, Original())
    assert len(result["confirmations"]) == 1
    assert result["chosen"]["a"]["landed"] and result["chosen"]["b"]["landed"]
    assert max(result["speedups"].values()) < 1.7


# -- shared networks: another seed's choice, recovered with this seed, timed afresh -------------------------------
class RecoveringSearch(ConvSearch):
    """A depth search whose recovery answers from ``accuracies`` (plan tuple -> accuracy) and counts calls."""

    def __init__(self, accuracies):
        super().__init__()
        self.accuracies, self.recovered = accuracies, []

    def recover(self, plan):
        self.recovered.append(tuple(plan))
        return self.accuracies[tuple(plan)]


def test_a_replica_recovers_every_chosen_network_with_its_seed_and_times_them_afresh(tmp_path):
    import json
    from matched_latency import VERSION, replicate, reported

    for m in ("a", "b"):
        (tmp_path / m).mkdir()
        (tmp_path / m / "model.onnx").write_bytes(b"landed")
    source = {"version": VERSION, "speedups": {"a": 1.50, "b": 1.60}, "retimed": [{"a": 1.51, "b": 1.58}],
              "rounds": 50, "chosen": {"a": {"plan": ["landed"], "landed": True, "accuracy": 90.0},
                                       "b": {"plan": ["p"], "landed": False, "accuracy": 89.0, "recovery_s": 3.0}}}
    timer = QueueTimer([{"a": 1.54, "b": 1.55}])
    search = RecoveringSearch({("landed",): 91.0, ("p",): 88.0})
    setup = lambda model, sessions, threads: (timer, Original())             # noqa: E731
    args = (tmp_path / "m", lambda m: tmp_path / m, lambda m: search, 50, 4)

    result = replicate("toy", 1.5, 1, source, 0, *args, setup=setup)
    # the landed network too: its landing run's accuracy is the source seed's recovery, not this seed's
    assert sorted(search.recovered) == [("landed",), ("p",)]
    assert {m: p["accuracy"] for m, p in result["chosen"].items()} == {"a": 91.0, "b": 88.0}
    assert result["replica_of"] == 0 and "retimed" not in result
    assert reported(result)["speedups"] == {"a": 1.54, "b": 1.55}     # its own timing, none of the source's
    assert source["chosen"]["a"]["accuracy"] == 90.0                  # the source is left as it was

    again = replicate("toy", 1.5, 1, source, 0, *args, setup=setup)   # stored: nothing recovered or timed again
    assert again == json.loads((tmp_path / "m" / "toy-x1.5-s1.json").read_text()) == result
    assert len(search.recovered) == 2 and len(timer.calls) == 1

    source["chosen"]["b"]["plan"] = ["q"]                             # the source chose again: so does the replica
    search.accuracies[("q",)] = 87.5
    timer.answers.append({"a": 1.52, "b": 1.50})
    changed = replicate("toy", 1.5, 1, source, 0, *args, setup=setup)
    assert changed["chosen"]["b"]["accuracy"] == 87.5 and len(timer.calls) == 2
    assert changed["chosen"]["a"]["accuracy"] == 91.0                  # the same plan's recovery is reused
    assert len(search.recovered) == 3


def test_no_source_yet_leaves_a_replica_as_stored(tmp_path):
    from matched_latency import replicate

    assert replicate("toy", 1.5, 1, None, 0, tmp_path, None, None, 50, 4) is None


def test_matching_with_unrecovered_landing_runs_recovers_the_landed_network_too():
    from matched_latency import recover_chosen

    result = {"chosen": {"a": {"plan": ["landed"], "landed": True}, "b": {"plan": ["p"], "landed": False}}}
    search = RecoveringSearch({("landed",): 91.0, ("p",): 88.0})
    reports = {"a": {"accuracy_after": 10.0}, "b": {"accuracy_after": 12.0}}      # before any recovery
    recover_chosen(result, reports, lambda m: search, {}, lambda: None, recover_landed=True)
    assert {m: p["accuracy"] for m, p in result["chosen"].items()} == {"a": 91.0, "b": 88.0}
    kept = {"chosen": {"a": {"plan": ["landed"], "landed": True}}}
    recover_chosen(kept, reports, lambda m: search, {}, lambda: None)             # recovered landing runs
    assert kept["chosen"]["a"]["accuracy"] == 10.0
