"""SOLAR depth up-scaling and mergekit passthrough YAML."""
from __future__ import annotations

import copy

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from transformers import AutoModelForCausalLM

from depthcut.errors import DepthcutError
from depthcut.llm.mergekit import (parse_passthrough_yaml, read_passthrough_yaml, sequence_to_ranges,
                                   write_passthrough_yaml)
from depthcut.llm.surgery import save_pretrained
from depthcut.llm.upscale import UpscaleConfig, depth_upscale, upscale, upscale_plan

SOLAR_YAML = """
slices:
  - sources: [{model: BASE, layer_range: [0, 24]}]
  - sources: [{model: BASE, layer_range: [8, 32]}]
merge_method: passthrough
"""


def test_solar_plan():
    plan = upscale_plan(32, 8)
    assert len(plan) == 48
    assert plan == list(range(0, 24)) + list(range(8, 32))
    assert upscale_plan(4, 0) == [0, 1, 2, 3, 0, 1, 2, 3]
    with pytest.raises(DepthcutError, match="overlap"):
        upscale_plan(4, 4)
    with pytest.raises(DepthcutError, match="overlap"):
        upscale_plan(4, -1)


def test_upscale_tiny_llama(tiny_model, tiny_input, tmp_path):
    model = tiny_model("llama", num_layers=6)
    grown = depth_upscale(model, overlap=2)
    assert grown.config.num_hidden_layers == 8 and len(grown.model.layers) == 8
    assert [layer.self_attn.layer_idx for layer in grown.model.layers] == list(range(8))
    # A[0..4) + B[2..6): new block 4 is a deep copy of old block 2, like new block 2
    for new, old in enumerate([0, 1, 2, 3, 2, 3, 4, 5]):
        torch.testing.assert_close(grown.model.layers[new].mlp.up_proj.weight, model.model.layers[old].mlp.up_proj.weight)
    assert grown.model.layers[2].mlp.up_proj.weight.data_ptr() != grown.model.layers[4].mlp.up_proj.weight.data_ptr()

    ref = copy.deepcopy(model)
    ref.model.layers = nn.ModuleList([ref.model.layers[i] for i in [0, 1, 2, 3, 2, 3, 4, 5]])
    ref.config.num_hidden_layers = 8
    with torch.no_grad():
        expected = ref(tiny_input, use_cache=False).logits
        torch.testing.assert_close(grown(tiny_input).logits, expected, atol=1e-5, rtol=1e-4)

    save_pretrained(grown, None, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 8
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tiny_input).logits, expected, atol=1e-5, rtol=1e-4)
    out = reloaded.generate(tiny_input, max_new_tokens=4, do_sample=False)
    assert torch.equal(out, grown.generate(tiny_input, max_new_tokens=4, do_sample=False))
    assert out.shape == (2, tiny_input.shape[1] + 4)


def test_upscale_base_layers_and_sliding_types(tiny_model):
    model = tiny_model("gemma2", num_layers=6)
    grown = depth_upscale(model, overlap=1, base_layers=[0, 2, 4])  # base stack of 3 -> 4 layers
    sources = [0, 2, 2, 4]
    assert grown.config.layer_types == [model.config.layer_types[s] for s in sources]
    with pytest.raises(DepthcutError, match="out of range"):
        depth_upscale(model, overlap=1, base_layers=[0, 9])


def test_mergekit_solar_round_trip():
    plan = upscale_plan(32, 8)
    text = write_passthrough_yaml(plan, "BASE")
    assert yaml.safe_load(text) == yaml.safe_load(SOLAR_YAML)
    assert read_passthrough_yaml(text) == plan
    assert read_passthrough_yaml(SOLAR_YAML) == plan
    assert write_passthrough_yaml([(0, 24), (8, 32)], "BASE") == text  # ranges form
    sequence, base = parse_passthrough_yaml(write_passthrough_yaml([0, 1, 3], "org/My Model: v2"))
    assert sequence == [0, 1, 3] and base == "org/My Model: v2"


def test_pruning_plan_compresses_to_ranges():
    assert sequence_to_ranges([0, 1, 2, 4, 5, 9]) == [(0, 3), (4, 6), (9, 10)]
    assert sequence_to_ranges([3, 3]) == [(3, 4), (3, 4)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=60))
def test_mergekit_round_trip_property(sequence):
    text = write_passthrough_yaml(sequence, "base-model")
    assert read_passthrough_yaml(text) == sequence
    slices = yaml.safe_load(text)["slices"]
    assert len(slices) == len(sequence_to_ranges(sequence))


@pytest.mark.parametrize("text, message", [
    ("slices: []\nmerge_method: passthrough\n", "non-empty 'slices'"),
    ("models: [{model: A}, {model: B}]\nmerge_method: slerp\n", "slerp"),
    (SOLAR_YAML.replace("passthrough", "linear"), "linear"),
    (SOLAR_YAML.replace("[8, 32]}]", "[8, 32]}, {model: OTHER, layer_range: [8, 32]}]"), "exactly one source"),
    (SOLAR_YAML.replace("[{model: BASE, layer_range: [8", "[{model: OTHER, layer_range: [8"), "several models"),
    (SOLAR_YAML.replace("[8, 32]", "[8, 8]"), "start < stop"),
    (SOLAR_YAML.replace("[8, 32]", "[8]"), "layer_range"),
    ("slices: [\n", "not valid YAML"),
])
def test_mergekit_errors(text, message):
    with pytest.raises(DepthcutError, match=message):
        read_passthrough_yaml(text)


def test_mergekit_write_errors():
    with pytest.raises(DepthcutError, match="empty"):
        write_passthrough_yaml([], "BASE")
    with pytest.raises(DepthcutError, match="start < stop"):
        write_passthrough_yaml([(4, 2)], "BASE")
    with pytest.raises(DepthcutError, match="negative"):
        write_passthrough_yaml([0, -1], "BASE")


def test_upscale_verb_saves_a_checkpoint_a_report_and_the_mergekit_plan(tiny_model, tmp_path):
    """Issue 10's API shape: upscale(model, tokenizer, UpscaleConfig) -> result.save_pretrained(dir); the caller's
    model is not modified; the saved YAML gives back the same plan."""
    from test_prune import char_tokenizer

    model = tiny_model("llama", num_layers=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = upscale(model, char_tokenizer(), UpscaleConfig(overlap=1, eval_windows=0, base_name="tiny"))
    assert result.layer_sequence == [0, 1, 2, 1, 2, 3] and result.model.config.num_hidden_layers == 6
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    out = result.save_pretrained(tmp_path / "up")
    assert parse_passthrough_yaml((out / "mergekit.yaml").read_text()) == ([0, 1, 2, 1, 2, 3], "tiny")
    assert UpscaleConfig.from_json((out / "upscale_config.json").read_text()).overlap == 1
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.randint(3, 50, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(reloaded(x).logits, result.model(x).logits, atol=1e-5)
    again = upscale(model, None, UpscaleConfig(from_mergekit=str(out / "mergekit.yaml"), eval_windows=0))
    assert again.layer_sequence == result.layer_sequence


def test_upscale_refuses_a_bad_plan_before_loading(monkeypatch, tmp_path):
    import depthcut.llm.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("loaded before the plan was checked"))
    with pytest.raises(DepthcutError, match="does not exist"):
        upscale(None, None, UpscaleConfig(from_mergekit=str(tmp_path / "missing.yaml")))
    with pytest.raises(DepthcutError, match="only one of"):
        UpscaleConfig(layers=(0, 1), from_mergekit="x.yaml")
