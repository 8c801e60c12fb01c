"""Transformer depth pruning and depth up-scaling for Hugging Face causal LMs (SPEC Part B).

Light on import: ``transformers`` is only imported when a function that needs it is first used.
Main entry points (lazily re-exported here):
  load_model, default_model_path                     -- loading.py (embedded SmolLM2 GGUF, .gguf, dirs)
  remove_blocks, remove_units, duplicate_layers,
  save_pretrained, load_pruned                       -- surgery.py
  PruneConfig, PruneResult                           -- prune.py; the verb is ``depthcut.prune`` (=
                                                        ``depthcut.llm.prune.prune(model, tokenizer, config)``)
  UpscaleConfig, UpscaleResult, upscale_plan,
  depth_upscale                                      -- upscale.py (SOLAR); the verb is
                                                        ``depthcut.llm.upscale.upscale(model, tokenizer,
                                                        UpscaleConfig)`` (``depthcut.llm.upscale`` is the
                                                        module)
  write_passthrough_yaml, read_passthrough_yaml      -- mergekit.py
  get_family                                         -- families.py
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_model": "loading", "default_model_path": "loading",
    "remove_blocks": "surgery", "remove_units": "surgery", "duplicate_layers": "surgery",
    "save_pretrained": "surgery", "load_pruned": "surgery", "Unit": "surgery",
    "upscale_plan": "upscale", "depth_upscale": "upscale", "UpscaleConfig": "upscale",
    "UpscaleResult": "upscale", "PruneConfig": "prune", "PruneResult": "prune",
    "write_passthrough_yaml": "mergekit", "read_passthrough_yaml": "mergekit",
    "get_family": "families", "Family": "families",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
