"""One loader for every result depthcut saves: ``depthcut.load(folder)`` mirrors every ``save_pretrained``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import DepthcutError


def load(folder: str | Path, model: Any = None) -> Any:
    """The network a depthcut result saved in ``folder``:

    * a compressed CNN (``plan.json``): the merged ``nn.Module``, the plan replayed on the original ``model``
      (given, or resolved from the plan's recorded name; for depth and width together, the saved
      ``width_model.pt``) with the merged weights
      (:func:`depthcut.report.load_compressed`);
    * a channel-pruned CNN (``pruned_model.pt``): the pruned module;
    * a pruned or up-scaled LLM (a Hugging Face checkpoint): the ``transformers`` model, removed sublayers
      re-applied (:func:`depthcut.llm.surgery.load_pruned`);
    * a compressed diffusion U-Net (``unet/`` or a diffusers ``config.json``): the
      :class:`~depthcut.diffusion.model.DepthcutUNet2DModel`;
    * a comparison of methods (``depthcut.compare``): its report as a dict (each run's network is under
      ``runs/``, loadable with this function).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DepthcutError(f"no depthcut result at {folder}: not a folder")
    if (folder / "plan.json").exists():
        from .report import load_compressed

        return load_compressed(folder, model)
    report = _json(folder / "report.json")
    if report.get("kind") == "depthcut comparison":     # what depthcut.comparison.load_comparison reads
        return report
    if (folder / "pruned_model.pt").exists():
        import torch

        return torch.load(folder / "pruned_model.pt", map_location="cpu", weights_only=False)
    unet = folder / "unet" if (folder / "unet" / "config.json").exists() else folder
    config = _json(unet / "config.json")
    if config.get("_class_name"):
        from .diffusion.model import DepthcutUNet2DModel

        return DepthcutUNet2DModel.from_pretrained(str(unet))
    if config.get("model_type"):
        from .llm.surgery import load_pruned

        return load_pruned(str(folder))
    raise DepthcutError(f"no depthcut result at {folder}: no plan.json, pruned_model.pt, or model config.json")


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        raise DepthcutError(f"{path} is not a readable JSON file") from None
