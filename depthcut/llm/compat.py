"""The few places where depthcut touches fast-moving transformers APIs, in one module.

transformers renames things between releases: 5.24 passes the KV cache to decoder layers and attentions
as ``cache=`` instead of ``past_key_values=`` (the old keyword is deprecated, to be removed in 5.40), and
returns it as ``output.cache``. Code that looks for one keyword silently stops seeing the cache when the
name changes. So nothing here trusts a name: the cache is found by *type* wherever it is passed, and the
keyword to pass a cache to a model is read from the model's own ``forward`` signature.

tests/llm/test_compat.py pins each assumption with a test that fails on a silent change (not only on an
exception): the cache reaches every attention, and prefill-then-decode equals the full-sequence logits.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

# newest first; ``past_key_value`` is the pre-v5 per-layer keyword
CACHE_KEYWORDS = ("cache", "past_key_values", "past_key_value")


@functools.lru_cache(maxsize=1)
def cache_base_class() -> type:
    from transformers.cache_utils import Cache

    return Cache


def is_cache(value: Any) -> bool:
    return isinstance(value, cache_base_class())


def find_cache(args: tuple, kwargs: dict) -> Any | None:
    """The KV-cache object among a module call's arguments, whatever keyword (or position) carries it."""
    for name in CACHE_KEYWORDS:
        if is_cache(kwargs.get(name)):
            return kwargs[name]
    for value in (*kwargs.values(), *args):
        if is_cache(value):
            return value
    return None


@functools.lru_cache(maxsize=64)
def _cache_keyword_of(forward_class: type) -> str:
    params = inspect.signature(forward_class.forward).parameters
    for name in CACHE_KEYWORDS[:2]:
        if name in params:
            return name
    raise TypeError(f"{forward_class.__name__}.forward takes none of {CACHE_KEYWORDS[:2]}: "
                    "this transformers release passes the KV cache in a way depthcut does not know")


def cache_keyword(model: Any) -> str:
    """The keyword under which ``model.forward`` takes its KV cache in the installed transformers."""
    return _cache_keyword_of(type(model))


def output_cache(output: Any) -> Any:
    """The KV cache a model call returned (``output.cache`` in transformers >= 5.24, else
    ``output.past_key_values``)."""
    keys = output.keys() if hasattr(output, "keys") else ()
    for name in ("cache", "past_key_values"):
        if name in keys:
            return output[name]
    return None


def forward_cached(model: Any, input_ids: torch.Tensor, cache: Any, **kwargs: Any) -> Any:
    """``model(input_ids, <cache keyword>=cache, use_cache=True)`` with the keyword this release uses."""
    return model(input_ids=input_ids, use_cache=True, **{cache_keyword(model): cache}, **kwargs)


def new_dynamic_cache(model: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


@torch.no_grad()
def decode_consistency_error(model: Any, input_ids: torch.Tensor, prefill: int | None = None) -> float:
    """Max relative difference between full-sequence logits and prefill-then-decode logits (prefill
    ``prefill`` tokens through a fresh DynamicCache, then one token at a time).

    This is the check that sees a broken KV cache: a layer that stops counting tokens restarts positions at
    0 while decoding, which a no-cache forward and plain ``generate()`` both hide."""
    n = input_ids.shape[1]
    prefill = max(1, n // 2) if prefill is None else prefill
    if not 0 < prefill < n:
        raise ValueError(f"prefill must be in 1..{n - 1}, got {prefill}")
    input_ids = input_ids.to(next(model.parameters()).device)
    full = model(input_ids=input_ids, use_cache=False).logits
    cache = new_dynamic_cache(model)
    steps = [forward_cached(model, input_ids[:, :prefill], cache).logits]
    for t in range(prefill, n):
        steps.append(forward_cached(model, input_ids[:, t:t + 1], cache).logits)
    stepped = torch.cat(steps, dim=1)
    return float((stepped - full).abs().max() / full.abs().max().clamp_min(1e-6))
