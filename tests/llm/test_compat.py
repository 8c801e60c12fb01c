"""Pins every assumption depthcut makes about fast-moving transformers APIs, so that a release that changes
one *silently* (a renamed keyword, a cache passed another way) fails here rather than in a user's decode."""
from __future__ import annotations

import pytest
import torch

from conftest import FAMILY_TYPES
from depthcut.llm.compat import (cache_keyword, decode_consistency_error, find_cache, forward_cached,
                                 is_cache, new_dynamic_cache, output_cache)
from depthcut.llm.surgery import SkippedAttention, remove_units


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_the_cache_reaches_every_attention(model_type, tiny_model, tiny_input):
    """SkippedAttention keeps the cache's bookkeeping only if it can find the cache among its arguments."""
    model = tiny_model(model_type)
    seen = []

    def record(module, args, kwargs):
        seen.append(find_cache(args, kwargs))

    for layer in model.model.layers:
        layer.self_attn.register_forward_pre_hook(record, with_kwargs=True)
    cache = new_dynamic_cache(model)
    out = forward_cached(model, tiny_input, cache)
    assert len(seen) == len(model.model.layers)
    assert all(found is cache for found in seen)
    assert output_cache(out) is cache
    assert cache.get_seq_length() == tiny_input.shape[1]


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_cache_keyword_is_the_one_forward_takes(model_type, tiny_model):
    import inspect

    model = tiny_model(model_type)
    assert cache_keyword(model) in inspect.signature(type(model).forward).parameters


def test_skipped_attention_refuses_to_guess_without_a_cache(tiny_model):
    attn = SkippedAttention(tiny_model("llama").model.layers[0].self_attn)
    h = torch.randn(1, 3, 32)
    out, weights = attn(h, use_cache=False)
    assert torch.equal(out, torch.zeros_like(h)) and weights is None
    with pytest.raises(RuntimeError, match="no KV-cache object"):
        attn(h, use_cache=True, some_new_cache_keyword=object())


@pytest.mark.parametrize("keyword", ["cache", "past_key_values", "past_key_value", "a_future_name"])
def test_find_cache_by_type_whatever_the_keyword(tiny_model, keyword):
    cache = new_dynamic_cache(tiny_model("llama"))
    assert find_cache((), {keyword: cache}) is cache
    assert find_cache((torch.zeros(1), cache), {}) is cache
    assert find_cache((), {keyword: None, "x": 1}) is None
    assert is_cache(cache) and not is_cache(None)


def test_decode_consistency_check_sees_a_broken_cache(tiny_model, tiny_input, monkeypatch):
    """The check prune runs after saving must be able to fail: a skipped attention that stops appending to
    the cache (what transformers 5.24's keyword rename caused) restarts decoding positions at 0."""
    pruned = remove_units(tiny_model("llama"), [(0, "attn")])
    assert decode_consistency_error(pruned, tiny_input) < 1e-4
    import depthcut.llm.surgery as surgery

    monkeypatch.setattr(surgery, "_append_placeholder", lambda cache, layer_idx, hidden_states: None)
    assert decode_consistency_error(pruned, tiny_input[:, :8], prefill=4) > 1e-2
