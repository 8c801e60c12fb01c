"""torch.export programs are turned back into module graphs that compute exactly the same function."""
import pytest
import torch
from torch import nn

from depthcut.cnn.from_export import modules_from_export
from depthcut.zoo.mobilenetv2 import mobilenet_v2
from depthcut.zoo.resnet import resnet20


def randomise_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize("factory, shape", [(resnet20, (1, 3, 32, 32)),
                                            (lambda: mobilenet_v2(width_mult=0.5), (1, 3, 64, 64))])
def test_exported_program_round_trips_to_modules(factory, shape):
    model = randomise_bn(factory())
    gm = modules_from_export(torch.export.export(model, (torch.randn(shape),)))
    x = torch.randn((3,) + shape[1:])
    assert torch.equal(gm(x), model(x))
    convs = [n for n, m in gm.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(convs) == sorted(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    assert any(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in gm.modules())
