"""Latency measurement (SPEC B3) and the latency-aware selection knapsack. No timing assertions: only the
structure of the measurements and the exactness of the selection."""
from __future__ import annotations

import inspect
import itertools

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from depthcut.llm import latency as lat
from depthcut.errors import InfeasibleBudgetError
from depthcut.llm.criteria import Criterion
from depthcut.llm.prune import select_units
from depthcut.search.knapsack import select_units as knapsack_select

_MODEL: dict = {}


@pytest.mark.parametrize("unit, kinds", [("block", {"block"}), ("sublayer", {"attn", "mlp"})])
def test_unit_latency_has_one_nonnegative_entry_per_unit(tiny_model, unit, kinds):
    model = tiny_model("llama", num_layers=4)
    table = lat.unit_latency(model, prompt_len=8, decode_tokens=2, unit=unit, rounds=2, warmup=0, threads=1)
    n = 4 if unit == "block" else 8
    assert len(table["units"]) == len(table["prefill_ms"]) == len(table["decode_ms"]) == n
    assert {u[1] for u in table["units"]} == kinds
    assert all(v >= 0 for v in table["prefill_ms"] + table["decode_ms"])
    assert table["full_prefill_ms"] > 0 and table["full_decode_ms"] > 0
    assert table["protocol"]["prompt_len"] == 8 and table["protocol"]["threads"] == 1
    # every unit of a kind gets the same latency (llama does not mix attention types)
    for kind in kinds:
        assert len({v for u, v in zip(table["units"], table["decode_ms"]) if u[1] == kind}) == 1
    removed = table["units"][:2]
    assert lat.predicted_ms(table, removed, "decode") == pytest.approx(
        table["full_decode_ms"] - table["decode_ms"][0] - table["decode_ms"][1])


def test_mixed_attention_models_get_one_latency_per_layer_type(tiny_model, monkeypatch):
    """Issue 10: sliding-window and full-attention blocks are timed as separate groups, each unit costs its
    group's saving (scripted timings: a skipped full-attention block saves 3 ms, a sliding one 1 ms)."""
    model = tiny_model("gemma3_text", num_layers=6)           # sliding, full, sliding, sliding, full, sliding
    types = model.config.layer_types

    def fake_time(m, prompt, n):
        skipped_now = [i for i, layer in enumerate(m.model.layers) if "forward" in layer.__dict__]
        saved = sum(3.0 if types[i] == "full_attention" else 1.0 for i in skipped_now)
        return 20.0 - saved, 10.0 - saved / 2
    monkeypatch.setattr(lat, "time_generation", fake_time)
    table = lat.unit_latency(model, prompt_len=8, decode_tokens=2, unit="block", rounds=1, warmup=0)
    assert set(table["groups"]) == {"block:sliding_attention", "block:full_attention"}
    assert 0 not in sum((g["skipped"] for g in table["groups"].values()), [])     # block 0 always stays
    for (i, _), pre, dec in zip(table["units"], table["prefill_ms"], table["decode_ms"]):
        want = 3.0 if types[i] == "full_attention" else 1.0
        assert (pre, dec) == (pytest.approx(want), pytest.approx(want / 2))
    llama = lat.unit_latency(tiny_model("llama", num_layers=4), prompt_len=8, decode_tokens=2, rounds=1, warmup=0)
    assert set(llama["groups"]) == {"block:all"}


def test_unit_latency_leaves_the_model_intact(tiny_model, tiny_input):
    model = tiny_model("llama", num_layers=4)
    with torch.no_grad():
        before = model(tiny_input).logits
    lat.unit_latency(model, prompt_len=6, decode_tokens=1, unit="sublayer", rounds=1, warmup=0)
    with torch.no_grad():
        assert torch.equal(model(tiny_input).logits, before)


def test_measure_throughput_is_interleaved_and_rotated(tiny_model, monkeypatch):
    calls = []
    monkeypatch.setattr(lat, "time_generation", lambda m, prompt, n: (calls.append(m.tag), (1.0, 0.5))[1])
    a, b = tiny_model("llama", num_layers=2), tiny_model("llama", num_layers=3)
    a.tag, b.tag = "a", "b"
    result = lat.measure_throughput({"a": a, "b": b}, None, prompt_len=4, new_tokens=2, rounds=4, warmup=0)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert result["models"]["a"] == {"prefill_ms": 1.0, "decode_ms_per_token": 0.5, "prefill_iqr_ms": 0.0,
                                     "decode_iqr_ms": 0.0, "prefill_min_ms": 1.0, "decode_min_ms_per_token": 0.5}
    assert result["protocol"]["rounds"] == 4


@pytest.mark.parametrize("phase, want", [("prefill", 2.0), ("decode", 4.0)])
def test_compare_generation_pairs_rounds_in_alternating_order(tiny_model, monkeypatch, phase, want):
    """The LLM landing's comparison: dense and pruned alternate who goes first, and the ratio of the
    requested phase comes with its interval (scripted timings: dense 2 ms / 2 ms, pruned 1 ms / 0.5 ms)."""
    calls = []
    times = {"dense": (2.0, 2.0), "pruned": (1.0, 0.5)}
    monkeypatch.setattr(lat, "time_generation", lambda m, prompt, n: (calls.append(m.tag), times[m.tag])[1])
    dense, pruned = tiny_model("llama", num_layers=3), tiny_model("llama", num_layers=2)
    dense.tag, pruned.tag = "dense", "pruned"
    estimate = lat.compare_generation(dense, pruned, 4, 2, phase, min_rounds=4, max_rounds=10, warmup=0)
    assert calls[:4] == ["dense", "pruned", "pruned", "dense"]
    assert estimate.ratio == estimate.low == estimate.high == want and estimate.rounds == 4


def test_time_generation_decodes_with_the_cache(tiny_model):
    model = tiny_model("qwen2", num_layers=2)
    prefill, decode = lat.time_generation(model, torch.tensor([[3, 4, 5, 6]]), 3)
    assert prefill > 0 and decode > 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.floats(0, 5), min_size=6, max_size=6), st.lists(st.floats(0.1, 3), min_size=6, max_size=6),
       st.floats(0.05, 0.8))
@example([0, 1, 1, 1, 1, 0], [0.456, 0.456, 0.1307, 0.1, 0.1, 0.130859375], 0.4267444260426346)  # issue 6
def test_budget_selection_is_the_least_important_feasible_set(tiny_model, importance, unit_ms, fraction):
    """Brute force over all subsets of a 6-block model against prune.select_units under a budget."""
    model = _MODEL.setdefault("m", tiny_model("llama", num_layers=6))
    units = [(i, "block") for i in range(6)]
    full = sum(unit_ms) + 1.0  # 1 ms of embeddings / head that no removal saves
    table = {"units": units, "decode_ms": unit_ms, "full_decode_ms": full}
    need = fraction * sum(unit_ms)
    crit = Criterion("fixed", score=lambda m, w, unit: importance)
    removed, _ = select_units(model, None, crit, "block", (0, 0), None, need, table, "decode")
    assert full - sum(unit_ms[i] for i, _ in removed) <= full - need + 1e-9  # meets the budget
    # The knapsack is exact on a conservative grid: each kept unit's latency is rounded UP to a multiple of
    # budget/steps, so a kept set is certainly found when its latency fits the budget with one grid step to
    # spare per kept unit. The guarantee: no such set loses less importance than the answer.
    budget = sum(unit_ms) - need
    step = budget / inspect.signature(knapsack_select).parameters["steps"].default
    def fits_the_grid(subset):
        kept = [k for k in range(6) if k not in subset]
        return sum(unit_ms[k] for k in kept) + len(kept) * step <= budget * (1 - 1e-12)
    best = min(sum(importance[k] for k in subset) for r in range(6) for subset in itertools.combinations(range(6), r)
               if fits_the_grid(subset))
    assert sum(importance[i] for i, _ in removed) <= best + 1e-9


def test_budget_selection_refuses_an_infeasible_budget_with_the_minimum(tiny_model):
    model = tiny_model("llama", num_layers=4)
    units = [(i, "block") for i in range(4)]
    table = {"units": units, "decode_ms": [1.0, 2.0, 1.0, 1.0], "full_decode_ms": 6.0}
    crit = Criterion("fixed", score=lambda m, w, unit: [1.0, 1.0, 1.0, 1.0])
    with pytest.raises(InfeasibleBudgetError, match=r"at best 2\.00 ms") as info:
        select_units(model, None, crit, "block", (0, 0), None, 5.0, table, "decode")  # one block must stay
    assert info.value.minimum == pytest.approx(2.0)
    removed, _ = select_units(model, None, crit, "block", (0, 0), None, 4.0, table, "decode")
    assert len(removed) == 3 and (1, "block") in removed


def test_cached_unit_latency_times_once_per_architecture(tiny_model, monkeypatch, tmp_path):
    """Budget runs read the per-unit latency from the latency cache: the same architecture, dtype and
    protocol is timed once (a second model with other weights reads it), another architecture again."""
    calls = []
    real = lat.unit_latency
    monkeypatch.setattr(lat, "unit_latency", lambda m, *a, **k: calls.append(m) or real(m, *a, **k))
    model = tiny_model("llama", num_layers=4)
    how = dict(prompt_len=6, decode_tokens=1, unit="block", rounds=1, threads=1, cache_dir=tmp_path)
    first = lat.cached_unit_latency(model, **how)
    assert len(calls) == 1 and all(isinstance(u, tuple) for u in first["units"])
    other_weights = tiny_model("llama", num_layers=4)
    with torch.no_grad():
        for p in other_weights.parameters():
            p.mul_(2)
    assert lat.cached_unit_latency(other_weights, **how) == first and len(calls) == 1
    assert set(first) >= {"units", "prefill_ms", "decode_ms", "full_prefill_ms", "protocol"}
    lat.cached_unit_latency(tiny_model("llama", num_layers=3), **how)
    assert len(calls) == 2
