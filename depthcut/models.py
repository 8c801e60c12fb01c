"""Resolve the ``--model`` argument: a registered name, ``package.module:factory``, or a torch.export file."""
from __future__ import annotations

import contextlib
import importlib
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import zoo
from .errors import DepthcutError


@dataclass
class ResolvedModel:
    model: nn.Module
    name: str
    input_shape: tuple[int, ...] | None     # (1, C, H, W) when known
    chain_exclude: tuple[str, ...] = ()
    dataset: str | None = None
    preprocess: Any = None                  # depthcut.data.folder.Preprocess when the library states it


def resolve_model(spec: str | nn.Module, pretrained: bool = True) -> ResolvedModel:
    """Turn a model spec into an eval-mode nn.Module.

    - a registered zoo name (``resnet20_fmnist``): built and loaded from its committed checkpoint;
    - ``package.module:factory``: imported and called with no arguments;
    - a path to a ``torch.export`` program (``.pt2``): loaded and turned back into a module;
    - ``torchvision:NAME`` / ``timm:NAME``, optionally ``@FILE`` (a state dict) or ``@random``: the library's
      model with its pretrained weights from the local cache only (nothing downloads), at its input size.
    """
    if isinstance(spec, nn.Module):
        return ResolvedModel(spec.eval(), type(spec).__name__, None)
    if spec in zoo.MODELS:
        entry = zoo.get(spec)
        return ResolvedModel(zoo.load(spec, pretrained=pretrained), spec, entry.input_shape,
                             entry.chain_exclude, entry.dataset)
    library = spec.partition(":")[0]
    if library in LIBRARIES and not Path(spec).exists():
        return _from_library(spec)
    if ":" in spec and not Path(spec).exists():
        return _from_factory(spec)
    path = Path(spec)
    if path.suffix in (".pt2", ".pt", ".pth") or path.exists():
        return _from_export(path)
    raise DepthcutError(f"unknown model {spec!r}: not a registered name ({', '.join(sorted(zoo.MODELS))}), "
                        "not package.module:factory, and no such file")


LIBRARIES = ("torchvision", "timm")


def _from_library(spec: str) -> ResolvedModel:
    """``torchvision:resnet34``, ``timm:mobilenetv2_100@weights.pth``, ``torchvision:resnet50@random``."""
    library, _, rest = spec.partition(":")
    name, _, weights = rest.partition("@")
    try:
        lib = importlib.import_module("torchvision.models" if library == "torchvision" else "timm")
    except Exception as e:  # noqa: BLE001 - ImportError, or a torch build the library does not match
        raise DepthcutError(f"model {spec!r} needs {library}, which does not import here ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); install it for this torch build") from None
    if library == "torchvision":
        model, shape, cached, preprocess = _torchvision_model(lib, name, spec)
    else:
        model, shape, cached, preprocess = _timm_model(lib, name, spec)
    if weights == "random":
        pass
    elif weights:
        path = Path(weights)
        if not path.exists():
            raise DepthcutError(f"weights file {path} for model {spec!r} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise DepthcutError(f"weights {path} do not fit {library}:{name}: {str(e).splitlines()[0]}") from None
    else:
        model.load_state_dict(cached())
    return ResolvedModel(model.eval(), f"{library}:{name}", shape, preprocess=preprocess)


def _torchvision_model(models, name: str, spec: str):
    try:
        model = models.get_model(name, weights=None)
    except ValueError:
        raise DepthcutError(f"torchvision has no model {name!r} (model {spec!r})") from None
    from .data.folder import Preprocess

    shape, preprocess = (1, 3, 224, 224), None
    enum = None
    try:
        enum = models.get_model_weights(name).DEFAULT
        transforms = enum.transforms()
        crop = getattr(transforms, "crop_size", None)
        if crop:
            size = crop[0] if isinstance(crop, (list, tuple)) else crop
            shape = (1, 3, int(size), int(size))
    except Exception:  # noqa: BLE001 - a model without published weights: random only
        enum = None
    if enum is not None and hasattr(transforms, "mean") and hasattr(transforms, "std"):
        size, resize = shape[-1], getattr(transforms, "resize_size", None) or [shape[-1]]
        resize = resize[0] if isinstance(resize, (list, tuple)) else resize
        preprocess = Preprocess(tuple(transforms.mean), tuple(transforms.std), float(size) / float(resize),
                                f"torchvision {enum}")

    def cached():
        if enum is None:
            raise DepthcutError(f"torchvision publishes no weights for {name}; pass {spec}@FILE or {spec}@random")
        file = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        if not file.exists():
            raise DepthcutError(f"the weights of {spec} ({enum}) are not in the local cache ({file}); depthcut "
                                f"never downloads at run time: fetch them once, or pass {spec}@FILE, or "
                                f"{spec}@random for random weights (enough for latency)")
        return torch.load(file, map_location="cpu", weights_only=True)
    return model, shape, cached, preprocess


def _timm_model(timm, name: str, spec: str):
    try:
        model = timm.create_model(name, pretrained=False)
    except Exception as e:  # noqa: BLE001 - unknown name or bad config
        raise DepthcutError(f"timm cannot create {name!r} (model {spec!r}): {str(e).splitlines()[0]}") from None
    from .data.folder import Preprocess

    pcfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    size = tuple(pcfg.get("input_size", (3, 224, 224)))
    shape = (1,) + size
    preprocess = None
    if pcfg.get("mean") and pcfg.get("std"):
        preprocess = Preprocess(tuple(pcfg["mean"]), tuple(pcfg["std"]), float(pcfg.get("crop_pct", 0.875)),
                                f"timm pretrained_cfg of {name}")

    def cached():
        """The pretrained file from the local Hugging Face cache (or torch hub's, for URL weights); no
        request is ever made."""
        cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
        path = None
        if cfg.get("hf_hub_id"):
            from huggingface_hub import try_to_load_from_cache

            for filename in ("model.safetensors", "pytorch_model.bin"):
                found = try_to_load_from_cache(cfg["hf_hub_id"], filename)
                if isinstance(found, str):
                    path = Path(found)
                    break
        elif cfg.get("url"):
            candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg["url"]).name
            path = candidate if candidate.exists() else None
        if path is None:
            raise DepthcutError(f"the weights of {spec} ({cfg.get('hf_hub_id') or cfg.get('url') or 'none published'}) "
                                f"are not in the local cache; depthcut never downloads at run time: fetch them "
                                f"once, or pass {spec}@FILE, or {spec}@random for random weights (enough for latency)")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    return model, shape, cached, preprocess


def _from_factory(spec: str) -> ResolvedModel:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - ImportError, or the module's own code failing at import
        raise DepthcutError(f"cannot import {module_name!r} for model {spec!r}: {type(e).__name__}: {e}") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise DepthcutError(f"module {module_name!r} has no attribute {attr!r} (model {spec!r})")
    if callable(factory) and not isinstance(factory, nn.Module):
        try:
            model = factory()
        except Exception as e:  # noqa: BLE001 - the user's code: report it, do not crash inside depthcut
            first_line = (str(e).strip().splitlines() or [""])[0]
            raise DepthcutError(f"model factory {spec} raised {type(e).__name__}: {first_line} "
                                f"(it is called with no arguments)") from None
    else:
        model = factory
    if not isinstance(model, nn.Module):
        raise DepthcutError(f"{spec} did not return an nn.Module (got {type(model).__name__})")
    return ResolvedModel(model.eval(), spec, None)


def _from_export(path: Path) -> ResolvedModel:
    if not path.exists():
        raise DepthcutError(f"model file {path} does not exist")
    hint = "save one with torch.export.save(torch.export.export(model, (x,)), path)"
    if not zipfile.is_zipfile(path):
        raise DepthcutError(f"model file {path} is not a torch.export program (not a .pt2 archive); {hint}")
    try:
        with _quiet("torch.export"):
            program = torch.export.load(str(path))
    except Exception as e:  # noqa: BLE001 - any failure means "not a torch.export program"
        raise DepthcutError(f"model file {path} is not a torch.export program ({type(e).__name__}: {e}); "
                            "save one with torch.export.save(torch.export.export(model, (x,)), path)") from None
    from .cnn.from_export import modules_from_export

    module = modules_from_export(program)
    shape = None
    try:
        spec = program.graph_signature.user_inputs[0]
        val = next(n for n in program.graph.nodes if n.name == spec).meta.get("val")
        shape = tuple(val.shape) if val is not None else None
    except Exception:  # noqa: BLE001 - the shape is a convenience only
        pass
    return ResolvedModel(module, path.stem, shape)


@contextlib.contextmanager
def _quiet(logger: str):
    """torch logs its own traceback on a failed load; the user gets our one-line error instead."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)
