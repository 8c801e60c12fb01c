"""Checks of the user's inputs that run before any expensive work.

Every check raises a :class:`~depthcut.errors.DepthcutError` whose one-line message names the problem (the
folder, the shape, the data set) and what to do. ``depthcut.compress`` runs them all before loading data,
analysing or timing anything, so a mistake never costs the minutes of compute that precede its discovery.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from .errors import DataError, DepthcutError


def check_output_dir(out: str | os.PathLike) -> Path:
    """``out`` is (or can be created as) a writable folder; returns it as a Path."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise DepthcutError(f"output folder {path} exists and is a file; pass --out a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".depthcut-write-test-"):
            pass
    except OSError as e:
        raise DepthcutError(f"cannot write to output folder {path} ({e.strerror or e}); "
                            f"pass --out a writable folder") from None
    return path


def input_shape_for(config_shape, model_shape, data_info: dict | None, data_name: str) -> tuple[int, ...]:
    """The (1, C, H, W) input to analyse and time at: the config's, else the model entry's, else the data
    set's own size. An image folder has no size of its own: it is resized to the model's input."""
    if config_shape:
        return (1,) + tuple(int(s) for s in config_shape[1:])
    if model_shape:
        return (1,) + tuple(int(s) for s in model_shape[1:])
    if data_info is None:
        raise DepthcutError("no input shape known: pass --input-shape N,C,H,W")
    if data_info["folder"]:
        raise DataError(f"images in folder {data_name} are resized to the model's input size, which is not "
                        f"known for this model: pass --input-shape 1,3,H,W")
    size = data_info["image_size"]
    return (1, data_info["in_chans"], size, size)


def check_data_fits(input_shape: tuple[int, ...], data_info: dict, data_name: str) -> None:
    """The data set's images have the channels and (for built-in sets) the size of the model input."""
    channels = input_shape[1]
    if data_info["in_chans"] != channels:
        raise DataError(f"data set {data_name} has {data_info['in_chans']}-channel images but the model input "
                        f"is {_fmt(input_shape)} ({channels} channels); use a {channels}-channel data set or "
                        f"a model for {data_info['in_chans']}-channel input")
    if not data_info["folder"] and tuple(input_shape[2:]) != (data_info["image_size"],) * 2:
        size = data_info["image_size"]
        raise DataError(f"data set {data_name} has {size}x{size} images but the input shape is "
                        f"{_fmt(input_shape)}: the model would be fine-tuned at one size and timed at another; "
                        f"pass --input-shape 1,{channels},{size},{size}")


def check_model_accepts(model: nn.Module, input_shape: tuple[int, ...], name: str,
                        num_classes: int | None = None) -> int | None:
    """One forward pass at ``input_shape`` (eval mode, no gradient; the model is not changed): the model
    runs on it and, for classification, returns (batch, scores). Returns the number of scores per image
    (:func:`class_policy` decides what to do when it is not the data's number of classes)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            y = model(torch.zeros(input_shape, device=device, dtype=dtype))
    except Exception as e:  # noqa: BLE001 - any failure means the shape does not fit this model
        raise DepthcutError(f"model {name} does not run on input shape {_fmt(input_shape)} "
                            f"({type(e).__name__}: {' '.join(str(e).split())}); pass the shape it expects "
                            f"with --input-shape N,C,H,W") from None
    finally:
        model.train(was_training)
    if num_classes is None:
        return None
    if not isinstance(y, torch.Tensor) or y.dim() != 2:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise DepthcutError(f"model {name} returns {shape} on input {_fmt(input_shape)}; a classifier must "
                            f"return (batch, classes) scores")
    return int(y.shape[1])


def class_policy(outputs: int, data_info: dict, name: str, adapt_head: bool) -> tuple[str, list[int] | None]:
    """How the model's ``outputs`` scores meet the data's classes: ``("same", None)`` when they are the data's
    classes; ``("synsets", indices)`` for a folder of ImageNet synsets (n01440764, ...) and a 1000-way model
    (each folder scored as the model's own class); ``("adapt", None)`` with ``adapt_head`` (a new head for
    the data's classes, trained first: depthcut.train.head). Anything else is refused in one line: accuracy
    would compare unrelated class indices."""
    from .data.datasets import synset_indices

    classes = data_info["num_classes"]
    if outputs == classes:
        return "same", None
    indices = synset_indices(data_info.get("classes") or []) if outputs == 1000 else None
    if indices is not None:
        return "synsets", indices
    if adapt_head:
        return "adapt", None
    how = ("pass --adapt-head to train a new " f"{classes}-way head first (the report names it)"
           + (", or name the class folders by their ImageNet synsets (n01440764, ...) to score the model's own "
              "classes" if outputs == 1000 and data_info.get("folder") else ""))
    if outputs < classes:
        raise DataError(f"the data set has {classes} classes but model {name} outputs {outputs} scores per image; "
                        f"use a model with a {classes}-way head, or {how}")
    raise DataError(f"model {name} outputs {outputs} scores per image but the data set has {classes} classes: "
                    f"its accuracy would compare unrelated class indices; {how}")


def _fmt(shape) -> str:
    return ",".join(str(int(s)) for s in shape)
