"""Registry of reference architectures and of the embedded (trained) default checkpoints.

``create(name)`` builds a model; ``load(name)`` builds it and loads the committed checkpoint when one
exists. Each entry records the input shape it expects and, where the anchors' papers define the compressible
body more narrowly than "every conv" (MobileNetV2: ``features[1:-1]``), the conv paths left out of the chain so
that published candidate counts and latency tables apply.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import DepthcutError
from .mobilenetv2 import mobilenet_v2
from .resnet import resnet18, resnet20, resnet34, resnet50, resnet56, resnet101, resnet152
from .vgg import vgg19_bn

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    kwargs: dict = field(default_factory=dict)
    input_shape: tuple[int, ...] = (1, 3, 224, 224)
    chain_exclude: tuple[str, ...] = ()      # conv module paths kept outside the chain
    dataset: str | None = None               # data set the embedded checkpoint was trained on

    def create(self, **overrides) -> nn.Module:
        return self.factory(**{**self.kwargs, **overrides})

    @property
    def checkpoint(self) -> Path:
        return CHECKPOINT_DIR / f"{self.name}.pt"


MODELS: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    MODELS[entry.name] = entry
    return entry


# ImageNet-style references (torchvision-equivalent), used for published candidate counts and tables.
register(ModelEntry("resnet18", resnet18))
register(ModelEntry("resnet34", resnet34))
register(ModelEntry("resnet50", resnet50))
register(ModelEntry("resnet101", resnet101))
register(ModelEntry("resnet152", resnet152))
register(ModelEntry("mobilenet_v2", mobilenet_v2, chain_exclude=("features.18.0",)))
register(ModelEntry("vgg19_bn", vgg19_bn))
register(ModelEntry("mobilenet_v2_1.4", mobilenet_v2, {"width_mult": 1.4}, chain_exclude=("features.18.0",)))
# CIFAR-style references.
register(ModelEntry("resnet20", resnet20, input_shape=(1, 3, 32, 32)))
register(ModelEntry("resnet56", resnet56, input_shape=(1, 3, 32, 32)))
# Embedded defaults: trained on Fashion-MNIST by scripts/train_zoo.py, checkpoints committed.
register(ModelEntry("resnet20_fmnist", resnet20, {"in_chans": 1, "num_classes": 10},
                    input_shape=(1, 1, 28, 28), dataset="fashion-mnist"))
register(ModelEntry("mobilenet_v2_fmnist", mobilenet_v2,
                    {"in_chans": 1, "num_classes": 10, "cifar": True, "width_mult": 0.5},
                    input_shape=(1, 1, 28, 28), chain_exclude=(), dataset="fashion-mnist"))


def get(name: str) -> ModelEntry:
    if name not in MODELS:
        raise DepthcutError(f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def create(name: str, **overrides) -> nn.Module:
    return get(name).create(**overrides)


def load(name: str, pretrained: bool = True) -> nn.Module:
    """Build a registered model and load its committed checkpoint (if ``pretrained`` and one exists)."""
    entry = get(name)
    model = entry.create()
    if pretrained and entry.checkpoint.exists():
        state = torch.load(entry.checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state))
    elif pretrained and entry.dataset:
        raise DepthcutError(f"checkpoint {entry.checkpoint} is missing; train it with "
                            f"`python scripts/train_zoo.py {name}`")
    return model.eval()


def load_torchvision_weights(name: str, model: nn.Module) -> nn.Module:
    """Copy torchvision's pretrained weights into our equal-structure model when torchvision imports
    (optional: torchvision is not a dependency and does not import with every torch build)."""
    try:
        import torchvision.models as tvm  # type: ignore
    except Exception as e:  # pragma: no cover - depends on the environment
        raise DepthcutError(f"torchvision is not importable here ({e}); cannot fetch weights for {name}")
    tv_name = {"mobilenet_v2": "mobilenet_v2"}.get(name, name)
    tv = getattr(tvm, tv_name)(weights="DEFAULT")
    model.load_state_dict(tv.state_dict())
    return model


def _efficientnet_lite0(**kw):
    from .efficientnet import efficientnet_lite0

    return efficientnet_lite0(**kw)


# A model nobody annotated for depthcut: the pip package's EfficientNet-Lite0 with its ImageNet weights.
register(ModelEntry("efficientnet_lite0", _efficientnet_lite0))


def analyze_zoo(name: str, input_shape: tuple[int, ...] | None = None, batch_size: int | None = None):
    """``depthcut.analyze`` a registered model with its own input shape and chain exclusions (the zoo depends
    on the analysis, never the other way round)."""
    from ..cnn.graph import analyze

    entry = get(name)
    model = load(name) if entry.checkpoint.exists() else entry.create().eval()
    return analyze(model, tuple(input_shape or entry.input_shape), entry.chain_exclude, batch_size)


def randomize_batchnorm(model: nn.Module, seed: int = 0, spread: float = 0.1) -> nn.Module:
    """Seeded, non-trivial BatchNorm statistics and affine parameters, in eval mode: a random-weight network
    for latency work (latency does not depend on the weights, but a fresh BatchNorm is an identity that hides
    folding bugs). Means and shifts are N(0, ``spread``), variances and scales U(0.5, 1.5)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * spread)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=gen) * spread)
    return model.eval()
