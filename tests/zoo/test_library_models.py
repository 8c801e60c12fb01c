"""``--model torchvision:NAME`` / ``timm:NAME`` (issue 8): weights from the local cache only, at the model's
input size, one-line errors otherwise. torchvision and timm do not import with this CPU torch build, so a
stand-in module plays torchvision here; `make coverage` runs the real libraries."""
from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from depthcut.errors import DepthcutError
from depthcut.models import resolve_model


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.fixture
def fake_torchvision(monkeypatch, tmp_path):
    weights = types.SimpleNamespace(url="https://example.invalid/tinynet-1234.pth",
                                    transforms=lambda: types.SimpleNamespace(crop_size=[160], resize_size=[200],
                                                                            mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.25]))
    models = types.ModuleType("torchvision.models")

    def get_model(name, weights=None):
        if name != "tinynet":
            raise ValueError(name)
        torch.manual_seed(0)
        return Net()
    models.get_model = get_model
    models.get_model_weights = lambda name: types.SimpleNamespace(DEFAULT=weights)
    package = types.ModuleType("torchvision")
    package.models = models
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints" / "tinynet-1234.pth"


def test_weights_come_from_the_local_cache_or_a_file(fake_torchvision, tmp_path):
    with pytest.raises(DepthcutError, match="not in the local cache.*never downloads"):
        resolve_model("torchvision:tinynet")
    trained = Net()
    with torch.no_grad():
        trained.fc.bias.fill_(7.0)
    fake_torchvision.parent.mkdir(parents=True)
    torch.save(trained.state_dict(), fake_torchvision)
    resolved = resolve_model("torchvision:tinynet")
    assert resolved.input_shape == (1, 3, 160, 160) and resolved.name == "torchvision:tinynet"
    # the library's own preprocessing travels with the model to the data pipeline (issue 8)
    assert resolved.preprocess.mean == (0.5, 0.4, 0.3) and resolved.preprocess.std == (0.2, 0.2, 0.25)
    assert resolved.preprocess.crop_pct == pytest.approx(160 / 200)
    assert torch.equal(resolved.model.fc.bias, trained.fc.bias)
    torch.save(trained.state_dict(), tmp_path / "mine.pth")
    assert torch.equal(resolve_model(f"torchvision:tinynet@{tmp_path / 'mine.pth'}").model.fc.bias, trained.fc.bias)
    assert not torch.equal(resolve_model("torchvision:tinynet@random").model.fc.bias, trained.fc.bias)


def test_library_errors_are_one_line(fake_torchvision, tmp_path):
    with pytest.raises(DepthcutError, match="torchvision has no model 'nonet'"):
        resolve_model("torchvision:nonet@random")
    with pytest.raises(DepthcutError, match="does not exist"):
        resolve_model(f"torchvision:tinynet@{tmp_path / 'missing.pth'}")
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(DepthcutError, match="do not fit torchvision:tinynet"):
        resolve_model(f"torchvision:tinynet@{tmp_path / 'wrong.pth'}")


def test_a_library_that_does_not_import_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)          # import timm -> ImportError
    with pytest.raises(DepthcutError, match="needs timm, which does not import here"):
        resolve_model("timm:mobilenetv2_100")
