"""A compressed U-Net that diffusers' ``from_pretrained`` loads and its pipelines sample from.

``DepthcutUNet2DModel`` is a ``UNet2DModel`` whose config also holds the plan (``depthcut_plan``: the rows that
change the network). Built from that config it applies the plan to a fresh U-Net (merged ResNet blocks,
identity up-sampling convs), so the saved weights fit it exactly; ``save_pretrained`` / ``from_pretrained`` and
``DDPMPipeline`` / ``DDIMPipeline`` work as for any diffusers model (``import depthcut`` makes the class known
to a pipeline's ``model_index.json``, whose entry reads ``["depthcut.diffusion.model", "DepthcutUNet2DModel"]``).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from diffusers import ModelMixin, UNet2DModel  # noqa: F401 - a pipeline's loader looks ModelMixin up here
from diffusers.configuration_utils import register_to_config
from torch import nn

from .unet import Row


class DepthcutUNet2DModel(UNet2DModel):
    @register_to_config
    def __init__(self, depthcut_plan: list[dict[str, Any]] | None = None, **kwargs):
        super().__init__(**kwargs)
        if depthcut_plan:
            from .merge import apply_plan_in_place

            apply_plan_in_place(self, [row_from_dict(r) for r in depthcut_plan])

    @classmethod
    def from_unet(cls, unet: UNet2DModel, rows: list[Row]) -> "DepthcutUNet2DModel":
        """The compressed model of ``unet`` under ``rows`` (a plan; merged weights computed from ``unet``)."""
        from .merge import apply_plan

        config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
        changed = [r for r in rows if r.span == "conv1+conv2" or (r.kind == "upsample" and not r.kept)]
        model = cls(depthcut_plan=[row_to_dict(r) for r in changed], **config)
        # the dtype first, then the weights: loading float64 merged weights into float32 would round them
        nn.Module.to(model, device=unet.device, dtype=unet.dtype)
        model.load_state_dict(apply_plan(unet, rows).state_dict())
        return model.eval()


# diffusers reads a model's config keys from its __init__ signature: the parent's keys and the plan
_PARENT = inspect.signature(UNet2DModel.__init__)
DepthcutUNet2DModel.__init__.__signature__ = _PARENT.replace(parameters=[
    *_PARENT.parameters.values(),
    inspect.Parameter("depthcut_plan", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)])


def row_to_dict(row: Row) -> dict[str, Any]:
    d = dataclasses.asdict(row)
    d["kept"], d["input_shape"] = list(row.kept), list(row.input_shape)
    return d


def row_from_dict(d: dict[str, Any]) -> Row:
    return Row(**{**d, "kept": tuple(d["kept"]), "input_shape": tuple(d.get("input_shape", ()))})
