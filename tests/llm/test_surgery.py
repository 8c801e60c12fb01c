"""Depth surgery on every registered family (tiny random models): logits against independent references,
KV-cache decoding, generate(), save -> from_pretrained, config bookkeeping, errors."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, DynamicCache

from conftest import FAMILY_TYPES
from depthcut.llm.compat import cache_keyword, forward_cached, output_cache
from depthcut.errors import DepthcutError, UnsupportedModelError
from depthcut.llm.families import get_family
from depthcut.llm.surgery import (REMOVED_FIELD, SkippedAttention, SkippedMLP, SkippedNorm, duplicate_layers,
                                  load_pruned, remove_blocks, remove_units, save_pretrained)

ATOL = 1e-5


class PassThrough(nn.Module):
    """Stands in for a whole decoder block in the references: returns its input unchanged."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@torch.no_grad()
def logits(model, x):
    return model(x, use_cache=False).logits


@torch.no_grad()
def reference_without(model, x, drop=(), zero=()):
    """The original model with blocks ``drop`` replaced by pass-throughs and the output projection of the
    sublayers ``zero`` set to zero: the kept layers run with their original layer types, masks and rope."""
    ref = copy.deepcopy(model)
    layers = ref.model.layers
    for i in drop:
        layers[i] = PassThrough()
    for i, part in zero:
        branch = layers[i].self_attn if part == "attn" else layers[i].mlp
        proj = branch.o_proj if part == "attn" else branch.down_proj
        proj.weight.zero_()
        if proj.bias is not None:
            proj.bias.zero_()
    return logits(ref, x)


@torch.no_grad()
def cached_logits(model, x, prefill=5):
    """Prefill ``prefill`` tokens, then decode the rest one token at a time through a DynamicCache."""
    cache = DynamicCache(config=model.config)
    steps = [forward_cached(model, x[:, :prefill], cache).logits]
    for t in range(prefill, x.shape[1]):
        steps.append(forward_cached(model, x[:, t:t + 1], cache).logits)
    return torch.cat(steps, dim=1)


@torch.no_grad()
def greedy_manual(model, x, new_tokens=5):
    cache = DynamicCache(config=model.config)
    out = forward_cached(model, x, cache).logits
    tokens = [x]
    for _ in range(new_tokens):
        nxt = out[:, -1:].argmax(-1)
        tokens.append(nxt)
        out = forward_cached(model, nxt, cache).logits
    return torch.cat(tokens, dim=1)


def check_runtime(model, x):
    """Full-sequence logits == prefill-then-decode logits; generate() (dynamic cache, static cache, and
    continued from the cache of an earlier generate) == a manual greedy loop."""
    full = logits(model, x)
    torch.testing.assert_close(cached_logits(model, x), full, atol=ATOL, rtol=1e-4)
    greedy = dict(do_sample=False)
    manual = greedy_manual(model, x, 5)
    assert torch.equal(model.generate(x, max_new_tokens=5, min_new_tokens=5, **greedy), manual)
    static = model.generate(x, max_new_tokens=5, min_new_tokens=5, cache_implementation="static", **greedy)
    assert torch.equal(static, manual)
    first = model.generate(x, max_new_tokens=2, min_new_tokens=2, return_dict_in_generate=True, **greedy)
    cache = output_cache(first)
    assert cache is not None and cache.get_seq_length() == x.shape[1] + 1   # the last token is not cached yet
    resumed = model.generate(first.sequences, max_new_tokens=3, min_new_tokens=3,
                             **{cache_keyword(model): cache}, **greedy)
    assert torch.equal(resumed, manual)
    return full


def check_layer_bookkeeping(model, expected_types=None):
    n = model.config.num_hidden_layers
    assert len(model.model.layers) == n
    for i, layer in enumerate(model.model.layers):
        assert layer.self_attn.layer_idx == i
    types = getattr(model.config, "layer_types", None)
    if types is not None:
        assert len(types) == n
        if expected_types is not None:
            assert types == expected_types
        for layer, kind in zip(model.model.layers, types):
            # the attention module's own window follows the config entry of *its* position
            if hasattr(layer.self_attn, "sliding_window"):
                assert (layer.self_attn.sliding_window is not None) == (kind == "sliding_attention")


def check_reload(model, x, tmp_path, expected):
    save_pretrained(model, None, tmp_path)
    stock = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # any transformers: standard form
    assert stock.config.num_hidden_layers == model.config.num_hidden_layers
    if getattr(model.config, "layer_types", None) is not None:
        assert stock.config.layer_types == model.config.layer_types
    torch.testing.assert_close(logits(stock, x), expected, atol=ATOL, rtol=1e-4)
    fast = load_pruned(tmp_path).eval()
    torch.testing.assert_close(logits(fast, x), expected, atol=ATOL, rtol=1e-4)
    return stock, fast


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_remove_blocks(model_type, tiny_model, tiny_input, tmp_path):
    model = tiny_model(model_type)
    original_types = getattr(model.config, "layer_types", None)
    drop = [1, 4]
    kept = [i for i in range(6) if i not in drop]
    pruned = remove_blocks(model, drop)

    assert pruned.config.num_hidden_layers == 4 and model.config.num_hidden_layers == 6
    check_layer_bookkeeping(pruned, [original_types[i] for i in kept] if original_types else None)
    if model_type == "qwen2":  # blocks >= max_window_layers (3) slide; old 0, 2 stay below it
        assert pruned.config.max_window_layers == 2
    expected = reference_without(model, tiny_input, drop=drop)
    full = check_runtime(pruned, tiny_input)
    torch.testing.assert_close(full, expected, atol=ATOL, rtol=1e-4)
    assert (full - logits(model, tiny_input)).abs().max() > 1e-2  # the blocks mattered: test can fail
    # the original is untouched and its weights are not shared
    assert pruned.model.layers[1].mlp.down_proj.weight.data_ptr() != model.model.layers[2].mlp.down_proj.weight.data_ptr()
    torch.testing.assert_close(pruned.model.layers[1].mlp.down_proj.weight, model.model.layers[2].mlp.down_proj.weight)
    check_reload(pruned, tiny_input, tmp_path, expected)


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_remove_units_sublayers(model_type, tiny_model, tiny_input, tmp_path):
    model = tiny_model(model_type)
    units = [(0, "attn"), (3, "mlp"), (5, "block")]
    pruned = remove_units(model, units)

    assert pruned.config.num_hidden_layers == 5
    assert getattr(pruned.config, REMOVED_FIELD) == [[0, "attn"], [3, "mlp"]]
    family = get_family(pruned)
    layer0, layer3 = pruned.model.layers[0], pruned.model.layers[3]
    assert isinstance(layer0.self_attn, SkippedAttention) and isinstance(layer3.mlp, SkippedMLP)
    assert all(isinstance(getattr(layer0, n), SkippedNorm) for n in family.attn_norm)
    assert all(isinstance(getattr(layer3, n), SkippedNorm) for n in family.mlp_norm)
    assert not isinstance(layer0.mlp, SkippedMLP) and not isinstance(layer3.self_attn, SkippedAttention)
    check_layer_bookkeeping(pruned)

    expected = reference_without(model, tiny_input, drop=[5], zero=[(0, "attn"), (3, "mlp")])
    # block 0's attention is skipped: decoding relies on the placeholder cache entries for positions
    full = check_runtime(pruned, tiny_input)
    torch.testing.assert_close(full, expected, atol=ATOL, rtol=1e-4)
    assert (full - reference_without(model, tiny_input, drop=[5])).abs().max() > 1e-2

    stock, fast = check_reload(pruned, tiny_input, tmp_path, expected)
    assert not isinstance(stock.model.layers[0].self_attn, SkippedAttention)
    assert isinstance(fast.model.layers[0].self_attn, SkippedAttention)
    assert isinstance(fast.model.layers[3].mlp, SkippedMLP)
    check_runtime(stock, tiny_input)
    check_runtime(fast, tiny_input)


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_duplicate_layers(model_type, tiny_model, tiny_input, tmp_path):
    model = tiny_model(model_type, num_layers=4)
    sequence = [0, 1, 2, 1, 2, 3]
    grown = duplicate_layers(model, sequence)
    types = getattr(model.config, "layer_types", None)
    check_layer_bookkeeping(grown, [types[s] for s in sequence] if types else None)
    # duplicated blocks are deep copies, not shared modules
    a, b = grown.model.layers[1], grown.model.layers[3]
    assert a.mlp.down_proj.weight.data_ptr() != b.mlp.down_proj.weight.data_ptr()
    torch.testing.assert_close(a.mlp.down_proj.weight, b.mlp.down_proj.weight)

    # naive reference: the same module objects stacked in a copy, config edited by hand, no cache
    ref = copy.deepcopy(model)
    ref.model.layers = nn.ModuleList([ref.model.layers[s] for s in sequence])
    ref.config.num_hidden_layers = len(sequence)
    if types:
        ref.config.layer_types = [types[s] for s in sequence]
    expected = logits(ref, tiny_input)
    torch.testing.assert_close(check_runtime(grown, tiny_input), expected, atol=ATOL, rtol=1e-4)
    check_reload(grown, tiny_input, tmp_path, expected)


def test_identity_plans_and_iterative_pruning(tiny_model, tiny_input):
    model = tiny_model("gemma3_text")
    same = duplicate_layers(model, range(6))
    torch.testing.assert_close(logits(same, tiny_input), logits(model, tiny_input), atol=1e-6, rtol=0)
    # removing both halves of a block is removing the block
    halves = remove_units(model, [(2, "attn"), (2, "mlp")])
    assert halves.config.num_hidden_layers == 5 and not getattr(halves.config, REMOVED_FIELD, None)
    torch.testing.assert_close(logits(halves, tiny_input), logits(remove_blocks(model, [2]), tiny_input))
    # pruning an already pruned model renumbers the recorded sublayers
    first = remove_units(model, [(3, "mlp")])
    second = remove_units(first, [(0, "block"), (1, "attn")])
    assert getattr(second.config, REMOVED_FIELD) == [[0, "attn"], [2, "mlp"]]
    expected = reference_without(model, tiny_input, drop=[0], zero=[(1, "attn"), (3, "mlp")])
    torch.testing.assert_close(logits(second, tiny_input), expected, atol=ATOL, rtol=1e-4)
    # block 0 of ``second`` already lost its attention: removing its mlp removes the whole block
    third = remove_units(second, [(0, "mlp")])
    assert third.config.num_hidden_layers == 4 and getattr(third.config, REMOVED_FIELD) == [[1, "mlp"]]
    expected = reference_without(model, tiny_input, drop=[0, 1], zero=[(3, "mlp")])
    torch.testing.assert_close(logits(third, tiny_input), expected, atol=ATOL, rtol=1e-4)


def test_share_weights_never_modifies_source(tiny_model, tiny_input):
    model = tiny_model("llama")
    before = logits(model, tiny_input)
    shared = remove_units(model, [(1, "attn"), (2, "block")], share_weights=True)
    assert shared.model.layers[0].mlp.up_proj.weight.data_ptr() == model.model.layers[0].mlp.up_proj.weight.data_ptr()
    assert model.model.layers[1].self_attn.o_proj.weight.abs().sum() > 0
    torch.testing.assert_close(logits(model, tiny_input), before, atol=0, rtol=0)


def test_tied_embeddings_stay_tied(tiny_model):
    model = tiny_model("qwen3")  # tie_word_embeddings=True
    pruned = remove_blocks(model, [0])
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight


def test_errors(tiny_model):
    model = tiny_model("llama")
    with pytest.raises(DepthcutError, match="all 6 blocks"):
        remove_blocks(model, range(6))
    with pytest.raises(DepthcutError, match="out of range"):
        remove_blocks(model, [6])
    with pytest.raises(DepthcutError, match="out of range"):
        remove_blocks(model, [-1])
    with pytest.raises(DepthcutError, match="twice"):
        remove_blocks(model, [2, 2])
    with pytest.raises(DepthcutError, match="not an integer"):
        remove_blocks(model, [1.5])
    with pytest.raises(DepthcutError, match="part must be"):
        remove_units(model, [(1, "ffn")])
    with pytest.raises(DepthcutError, match="removed whole"):
        remove_units(model, [(1, "block"), (1, "mlp")])
    with pytest.raises(DepthcutError, match="already removed"):
        remove_units(remove_units(model, [(1, "mlp")]), [(1, "mlp")])
    with pytest.raises(DepthcutError, match="out of range"):
        duplicate_layers(model, [0, 7])
    with pytest.raises(DepthcutError, match="empty"):
        duplicate_layers(model, [])
    # edited in place without depthcut: detected instead of silently mis-numbering
    broken = copy.deepcopy(model)
    del broken.model.layers[0]
    with pytest.raises(DepthcutError, match="num_hidden_layers"):
        remove_blocks(broken, [1])


def test_unknown_model_type_is_named():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16))
    with pytest.raises(UnsupportedModelError, match="gpt2.*llama"):
        remove_blocks(gpt2, [0])


def test_unassigned_tensor_raises(tiny_model):
    model = tiny_model("llama")
    model.model.norm.weight = nn.Parameter(torch.ones(7))  # shape no longer matches the config
    with pytest.raises(DepthcutError, match="model.norm.weight"):
        remove_blocks(model, [0])


def test_load_pruned_refuses_fine_tuned_standard_form(tiny_model, tmp_path):
    pruned = remove_units(tiny_model("llama"), [(2, "attn")])
    save_pretrained(pruned, None, tmp_path)
    stock = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        stock.model.layers[2].self_attn.o_proj.weight.add_(0.1)  # "healed" in standard form
    stock.save_pretrained(tmp_path)
    with pytest.raises(DepthcutError, match="o_proj is not zero"):
        load_pruned(tmp_path)
    with pytest.raises(DepthcutError, match="does not exist"):
        load_pruned(tmp_path / "missing")
