"""depthcut: make trained PyTorch networks shallower under a measured latency budget.

Public verbs (imported lazily so that ``import depthcut`` stays cheap):

- ``depthcut.compress(model, LayerMergeConfig(...))`` — CNN depth compression (LayerMerge); the same run as
  named stages: ``depthcut.Compression(model, config)``.
- ``depthcut.compare(model, CompareConfig(...))`` — several methods at the same measured speed-ups, timed
  jointly: which is most accurate for this model.
- ``depthcut.analyze(model, input_shape)`` — the chain, barriers and candidates of any CNN.
- ``depthcut.prune(model, tokenizer, PruneConfig(...))`` — transformer depth pruning (blocks or sublayers).
- ``depthcut.upscale(model, tokenizer, UpscaleConfig(...))`` — SOLAR depth up-scaling.

- ``depthcut.compress_unet(unet, scheduler, images, GenerationConfig(...))`` — LayerMerge on a diffusion U-Net.

Every verb takes ``out=DIR`` and returns a result with ``.save_pretrained(dir)``; ``depthcut.load(dir)`` loads
any of them back. The CLI is a thin layer over the verbs.
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import methods as _methods  # noqa: E402,F401 - registers the built-in methods (depthcut.registry)

_LAZY = {
    "compress": ("depthcut.compression", "compress"),
    "Compression": ("depthcut.compression", "Compression"),
    "LayerMergeConfig": ("depthcut.config", "LayerMergeConfig"),
    "compare": ("depthcut.comparison", "compare"),
    "CompareConfig": ("depthcut.comparison", "CompareConfig"),
    "analyze": ("depthcut.cnn.graph", "analyze"),
    "DepthcutError": ("depthcut.errors", "DepthcutError"),
    "prune": ("depthcut.llm.prune", "prune"),
    "PruneConfig": ("depthcut.llm.prune", "PruneConfig"),
    "upscale": ("depthcut.llm.upscale", "upscale"),
    "UpscaleConfig": ("depthcut.llm.upscale", "UpscaleConfig"),
    "compress_unet": ("depthcut.diffusion.pipeline", "compress_unet"),
    "GenerationConfig": ("depthcut.diffusion.pipeline", "GenerationConfig"),
    "load": ("depthcut.saved", "load"),
    # a compressed diffusion U-Net (a diffusers UNet2DModel subclass)
    "DepthcutUNet2DModel": ("depthcut.diffusion.model", "DepthcutUNet2DModel"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'depthcut' has no attribute {name!r}")
