"""Where the decoder blocks of a Hugging Face causal LM live, and which config fields are per-layer.

Deleting entries of ``model.model.layers`` is not enough (SPEC B1): ``config.num_hidden_layers``, every
per-layer config list (``layer_types``...) and each attention's ``layer_idx`` must change together. The
registry below says, per ``config.model_type``, where the block list is, what the two sublayers of a block
and their norms are called, and which config fields are indexed by layer, so that surgery code never
guesses. An architecture that is not registered raises :class:`UnsupportedModelError` instead of being
edited half-way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import UnsupportedModelError


@dataclass(frozen=True)
class Family:
    """Layout of one ``model_type``.

    ``attn_norm`` / ``mlp_norm`` are the norms that belong to each residual branch (pre-norm, and for
    Gemma 2/3 the post-norm too): they are skipped together with the branch when a sublayer is removed.
    ``per_layer_lists`` are config fields holding one entry per block (edited by index). ``prefix_count``
    are integer fields that count a *prefix* of the blocks (Qwen2's ``max_window_layers``: blocks
    ``i >= max_window_layers`` use sliding attention); they are recomputed as the number of new blocks whose
    source block lay inside the old prefix, clamped to the new depth.
    """

    model_type: str
    layers_attr: str = "model.layers"
    attn_attr: str = "self_attn"
    mlp_attr: str = "mlp"
    attn_norm: tuple[str, ...] = ("input_layernorm",)
    mlp_norm: tuple[str, ...] = ("post_attention_layernorm",)
    per_layer_lists: tuple[str, ...] = ("layer_types",)
    prefix_count: tuple[str, ...] = ()
    sublayers: bool = True  # whether attention / MLP can be removed on their own

    def layers(self, model: nn.Module) -> nn.ModuleList:
        """The ``nn.ModuleList`` of decoder blocks."""
        module: Any = model
        for name in self.layers_attr.split("."):
            module = getattr(module, name)
        return module

    def sublayer_modules(self, part: str) -> tuple[str, tuple[str, ...]]:
        """(branch attribute, its norm attributes) for ``part`` in {"attn", "mlp"}."""
        if part == "attn":
            return self.attn_attr, self.attn_norm
        if part == "mlp":
            return self.mlp_attr, self.mlp_norm
        raise ValueError(f"unknown sublayer {part!r}; expected 'attn' or 'mlp'")


_GEMMA_NORMS = dict(attn_norm=("input_layernorm", "post_attention_layernorm"),
                    mlp_norm=("pre_feedforward_layernorm", "post_feedforward_layernorm"))

FAMILIES: dict[str, Family] = {f.model_type: f for f in [
    Family("llama"),
    Family("mistral"),
    Family("qwen2", prefix_count=("max_window_layers",)),
    Family("qwen3", prefix_count=("max_window_layers",)),
    Family("gemma"),
    Family("gemma2", **_GEMMA_NORMS),
    Family("gemma3_text", **_GEMMA_NORMS),
    Family("phi3"),
]}


def supported_model_types() -> list[str]:
    return sorted(FAMILIES)


def get_family(model_or_config: Any) -> Family:
    """The :class:`Family` of a model or config (or a ``model_type`` string)."""
    if isinstance(model_or_config, str):
        model_type = model_or_config
    else:
        config = getattr(model_or_config, "config", model_or_config)
        model_type = getattr(config, "model_type", None)
    family = FAMILIES.get(model_type)  # type: ignore[arg-type]
    if family is None:
        raise UnsupportedModelError(
            f"depth surgery does not support model_type {model_type!r}; supported: "
            f"{', '.join(supported_model_types())} (multimodal wrappers: load the text-only causal LM, "
            f"e.g. Gemma3ForCausalLM)")
    return family
