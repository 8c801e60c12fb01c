"""Model factories for command-line tests (``--model cli_models:<factory>``; tests/ is on sys.path in-process,
and tests that spawn ``python -m depthcut`` put it on PYTHONPATH)."""
from __future__ import annotations

import torch
from torch import nn


class DigitsNet(nn.Module):
    """A small 1-channel CNN for the 8x8 digits set: stem, a residual pair, a strided conv, a head."""

    def __init__(self, padding: int | str = 1, in_chans: int = 1, num_classes: int = 10):
        super().__init__()

        def cbr(cin, cout, stride=1, act=True):
            pad = padding if stride == 1 else 1          # PyTorch refuses padding='same' with a stride
            layers = [nn.Conv2d(cin, cout, 3, stride, pad, bias=False), nn.BatchNorm2d(cout)]
            return nn.Sequential(*layers, nn.ReLU()) if act else nn.Sequential(*layers)

        self.stem = cbr(in_chans, 8)
        self.a = cbr(8, 8)
        self.b = cbr(8, 8, act=False)
        self.c = cbr(8, 12, stride=2)
        self.d = cbr(12, 12)
        self.head = nn.Linear(12, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.b(self.a(x)) + x)
        x = self.d(self.c(x))
        return self.head(x.mean((2, 3)))


def digits_net() -> nn.Module:
    torch.manual_seed(0)
    return DigitsNet()


def digits_net_same_padding() -> nn.Module:
    torch.manual_seed(0)
    return DigitsNet(padding="same")


def rgb_net() -> nn.Module:
    torch.manual_seed(0)
    return DigitsNet(in_chans=3, num_classes=2)


def two_way_net() -> nn.Module:
    torch.manual_seed(0)
    return DigitsNet(num_classes=2)


def broken_factory() -> nn.Module:
    raise ValueError("weights file not found: /nowhere/w.pt")


class SEGate(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, max(c // 4, 1), 1), nn.Conv2d(max(c // 4, 1), c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class SEBasic(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
        self.se = SEGate(c)

    def forward(self, x):
        return torch.relu(self.se(self.c2(self.c1(x))) + x)


class SEResNet(nn.Module):
    """The issue-7 reproduction: three SE basic blocks on 8x8 digits."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(SEBasic(8), SEBasic(8), SEBasic(8))
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def se_resnet() -> nn.Module:
    torch.manual_seed(0)
    return SEResNet()


class IllConditioned(DigitsNet):
    """Logits read through sin(1e6 * features): every relative rounding of the features (float32 evaluation,
    or merged kernels rounded to float32) moves the output ~1e6 times as much, so the network's own float32
    output is 1e-3 to 1e-1 from its float64 one, as random-weight timm seresnet50 / efficientnet_b1 are (issue 28).
    No float32 deployment of it can do better."""

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.b(self.a(x)) + x)
        return self.head(torch.sin(1e6 * self.d(self.c(x)).mean((2, 3))))


def ill_conditioned_net() -> nn.Module:
    torch.manual_seed(0)
    return IllConditioned()


class DeepStemResNet(nn.Module):
    """timm's resnet18d in shape, narrowed to run in seconds: a deep stem (three 3x3 convs), max pooling,
    four stages of two basic blocks (average-pool shortcut downsampling, as resnet-d), global pooling and a
    1000-way ImageNet classifier. What a user brings from timm, built locally (nothing downloads)."""

    class Basic(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
            self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
            self.down = None if stride == 1 and cin == cout else nn.Sequential(
                nn.AvgPool2d(stride, stride) if stride > 1 else nn.Identity(), nn.Conv2d(cin, cout, 1, bias=False),
                nn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(out + (x if self.down is None else self.down(x)))

    def __init__(self, width: int = 8, num_classes: int = 1000):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                                  nn.Conv2d(w, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                                  nn.Conv2d(w, 2 * w, 3, 1, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        stages, cin = [], 2 * w
        for i, cout in enumerate((2 * w, 4 * w, 8 * w, 16 * w)):
            stages += [self.Basic(cin, cout, 1 if i == 0 else 2), self.Basic(cout, cout, 1)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.stages(self.stem(x)).mean((2, 3)))


def resnet18d_shaped() -> nn.Module:
    """Random weights, with BatchNorm statistics measured on random images (as a trained network's are
    measured on its data): features of a useful scale, which a new head can learn from."""
    torch.manual_seed(0)
    model = DeepStemResNet()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None                      # a cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(16, 3, 32, 32))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    return model.eval()
