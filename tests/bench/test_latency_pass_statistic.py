"""bench/latency_pass_statistic.py: the per-call model fitted on each pass statistic of a run's recorded timings."""
from __future__ import annotations

import random

import pytest

import latency_pass_statistic as lps
from latency_model_replay import analysis_of
from depthcut.latency import row_key
from depthcut.latency.model import calibration_plans


def test_within_a_band_takes_the_median_of_the_passes_near_the_fastest():
    assert lps.within(0.05)([1.0, 1.04, 1.06, 2.0]) == pytest.approx(1.02)
    assert lps.within(0.10)([1.0, 1.04, 1.06, 2.0]) == pytest.approx(1.04)
    assert lps.STATISTICS["second fastest pass"]([3.0, 1.0, 2.0]) == 2.0


def test_the_statistic_the_networks_follow_predicts_them_and_the_others_do_not():
    """Networks whose time is the sum of their rows' second-fastest passes (the fastest pass of each row runs
    a different amount fast): fitted on the second-fastest passes, every probed plan is predicted to 0.5 %; on
    the fastest passes, not (by less on the probes: a plan sums many rows' errors). The markdown has one row per statistic and anchor."""
    analysis = analysis_of("resnet20_fmnist", (1, 1, 28, 28))
    rng = random.Random(0)
    kept = [c for c in analysis.candidates if c.kept]
    truth = {c.key: 0.01 + 1e-4 * c.kernel * c.out_channels / 16 for c in kept}
    passes = {row_key(c, 1): sorted([truth[c.key] * (1 - rng.uniform(0.0, 0.5)), truth[c.key],
                                     truth[c.key] * 1.2, truth[c.key] * 1.5]) for c in kept}
    cal = calibration_plans([(c, truth[c.key]) for c in kept], analysis.chain.length)
    networks = {f"calibration: {name}": [c.key for c in plan] for name, plan in cal}
    for k in range(4):                                  # probed plans: random merges of the table's rows
        plan = calibration_plans([(c, truth[c.key]) for c in kept], analysis.chain.length, fractions=(),
                                 regions=0, random_series=(100 + k,), random_fractions=(0.5,))[1][1]
        networks[f"probe {k}"] = [c.key for c in plan]
    other = 0.02
    ms = lambda keys: other + sum(truth[k] for k in keys if k in truth)   # noqa: E731
    original = ms(networks["calibration: identity"])
    passes["network-original"] = [original * f for f in (1.0, 1.0, 1.2, 1.5)]   # the anchor: second = first
    measured = {n: {"ratio": original / ms(keys), "original_ms": original} for n, keys in networks.items()}
    run = {"networks": networks, "passes": passes, "measured": measured, "reference": "network-original"}
    fits = lps.fits(run, {c.key: c for c in analysis.candidates})
    assert fits["second fastest pass, table anchor"]["worst"] < 0.005
    assert fits["fastest pass, table anchor"]["worst"] > 0.005 and fits["fastest pass, table anchor"]["self_error"] > 0.01
    report = {"args": {"model": "resnet20_fmnist", "backend": "openvino", "quantize": "int8", "arm": "openvino_int8",
                       "fresh": 1, "timing_threads": 1}, "machine": "test", "runs": [{**run, "fits": fits}]}
    text = lps.markdown(report)
    assert all(f"| {s} | **" in text for s in lps.FITS) and "4 probed plans a run" in text


def test_the_report_says_how_far_a_plans_measurement_moves_between_runs():
    def run(scale):
        return {"measured": {"calibration: identity": {"ratio": 1.0}, "plan a": {"ratio": 2.0 * scale},
                             "plan b": {"ratio": 1.5}}}
    lines = lps.reproducibility([run(1.0), run(1.1)])
    assert "median 5.0%, largest 10.0% over 2 plans" in lines[0]
    assert lps.reproducibility([run(1.0)]) == []
