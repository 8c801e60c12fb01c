"""Resolve the ``--model`` argument: a registered name, ``package.module:factory``, or a torch.export file."""
from __future__ import annotations

import contextlib
import importlib
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

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


def resolve_model(spec: str | nn.Module, pretrained: bool = True) -> ResolvedModel:
    """Turn a model spec into an eval-mode nn.Module.

    - a registered zoo name (``resnet20_fmnist``): built and loaded from its committed checkpoint;
    - ``package.module:factory``: imported and called with no arguments;
    - a path to a ``torch.export`` program (``.pt2``): loaded and turned back into a module.
    """
    if isinstance(spec, nn.Module):
        return ResolvedModel(spec.eval(), type(spec).__name__, None)
    if spec in zoo.MODELS:
        entry = zoo.get(spec)
        return ResolvedModel(zoo.load(spec, pretrained=pretrained), spec, entry.input_shape,
                             entry.chain_exclude, entry.dataset)
    if ":" in spec and not Path(spec).exists():
        return _from_factory(spec)
    path = Path(spec)
    if path.suffix in (".pt2", ".pt", ".pth") or path.exists():
        return _from_export(path)
    raise DepthcutError(f"unknown model {spec!r}: not a registered name ({', '.join(sorted(zoo.MODELS))}), "
                        "not package.module:factory, and no such file")


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
