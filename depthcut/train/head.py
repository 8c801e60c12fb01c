"""A classifier head for the user's classes (issue 33): when a model's outputs are not the data's classes.

A 1000-class ImageNet model scored on a 4-class folder compares unrelated indices: accuracy 0 -> 0 and no
warning. :func:`adapt_head` replaces the classifier (the last ``nn.Linear`` producing the model's outputs, or
timm's ``reset_classifier``) by a fresh one for the data's classes and trains it alone, the rest of the
network frozen and in eval mode (a linear probe: the features, BatchNorm statistics included, stay exactly
the user's). The adapted network is the one compressed, timed and compared against; the report names the
change.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..errors import DepthcutError
from .loop import evaluate, train


@dataclass
class HeadAdaptation:
    module: str               # the replaced classifier's path
    outputs_before: int
    outputs_after: int
    epochs: float
    accuracy: float           # the adapted network on the scoring split

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def classifier_path(model: nn.Module, outputs: int) -> str | None:
    """The last ``nn.Linear`` with ``outputs`` outputs (the classifier), or None."""
    found = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == outputs]
    return found[-1] if found else None


class _HeadOnly(nn.Module):
    """Trains only the head: the rest stays in eval mode (BatchNorm statistics and dropout untouched)."""

    def __init__(self, model: nn.Module, head: nn.Module):
        super().__init__()
        self.model, self.head = model, head

    def train(self, mode: bool = True) -> "_HeadOnly":
        self.training = mode
        self.model.eval()
        self.head.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def replace_head(model: nn.Module, outputs: int, classes: int, seed: int = 0) -> str:
    """Put a fresh ``classes``-way classifier in place of the ``outputs``-way one, in place; returns its path."""
    path = classifier_path(model, outputs)
    if path is None:
        if callable(getattr(model, "reset_classifier", None)):      # timm models that classify with a conv
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model.reset_classifier(classes)
            return "reset_classifier()"
        raise DepthcutError(f"cannot adapt the head: the model has no nn.Linear with {outputs} outputs to replace")
    old = model.get_submodule(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = nn.Linear(old.in_features, classes, bias=old.bias is not None,
                        device=old.weight.device, dtype=old.weight.dtype)
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
    return path


def adapt_head(model: nn.Module, outputs: int, classes: int, data: Any, score: Any, *, epochs: float = 2.0,
               lr: float = 0.05, batch_size: int = 32, seed: int = 0, progress: bool = True
               ) -> HeadAdaptation:
    """Replace the classifier of ``model`` (in place) and train it alone on ``data`` (module docstring)."""
    path = replace_head(model, outputs, classes, seed)
    head_params = {id(p) for p in (model.get_submodule(path).parameters() if path != "reset_classifier()"
                                   else model.get_classifier().parameters())}
    frozen = [p for p in model.parameters() if id(p) not in head_params and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    head = model.get_submodule(path) if path != "reset_classifier()" else model.get_classifier()
    try:
        train(_HeadOnly(model, head), data, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
              progress=progress, desc="head")
    finally:
        for p in frozen:
            p.requires_grad_(True)
    model.eval()
    return HeadAdaptation(path, outputs, classes, epochs, evaluate(model, score))
