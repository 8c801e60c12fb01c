"""VGG19-BN (Simonyan & Zisserman 2015), module for module equal to torchvision's ``vgg19_bn``.

``features`` is a Sequential of conv3x3(+BN+ReLU) stages separated by MaxPool2d (the barriers of the chain),
then ``avgpool`` (AdaptiveAvgPool2d(7)) and ``classifier`` (Linear-ReLU-Dropout x2, Linear), with
torchvision's parameter names so its state dicts load unchanged. ``classifier_hidden`` (default 4096 as in
torchvision) only exists so that tests can build the 20M-parameter body without the 120M-parameter head.
"""
from __future__ import annotations

import torch
from torch import nn

CFG_E = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


def make_features(cfg: list, in_chans: int = 3, batch_norm: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = in_chans
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(c, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        c = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """torchvision.models.VGG, same structure and parameter names."""

    def __init__(self, features: nn.Sequential, num_classes: int = 1000, dropout: float = 0.5,
                 classifier_hidden: int = 4096):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, classifier_hidden), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(classifier_hidden, classifier_hidden), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(classifier_hidden, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg19_bn(num_classes: int = 1000, in_chans: int = 3, classifier_hidden: int = 4096,
             dropout: float = 0.5) -> VGG:
    return VGG(make_features(CFG_E, in_chans), num_classes, dropout, classifier_hidden)
