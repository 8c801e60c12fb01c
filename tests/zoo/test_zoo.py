"""Every registered architecture builds, runs, and matches torchvision's published parameter counts."""
import pytest
import torch

from depthcut import zoo
from depthcut.errors import DepthcutError

# torchvision's parameter counts for the same architectures (torchvision.models docs)
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                      "mobilenet_v2": 3_504_872}


@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_every_entry_builds_and_runs(name):
    entry = zoo.get(name)
    model = entry.create().eval()
    shape = entry.input_shape
    if shape[-1] >= 224:          # keep the test light: any size that survives the strides works
        shape = shape[:2] + (64, 64)
    with torch.no_grad():
        y = model(torch.randn(2, *shape[1:]))
    assert y.shape[0] == 2 and y.dim() == 2
    conv_paths = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert set(entry.chain_exclude) <= conv_paths      # exclusions name real convs


@pytest.mark.parametrize("name, count", sorted(TORCHVISION_PARAMS.items()))
def test_parameter_counts_equal_torchvision(name, count):
    assert sum(p.numel() for p in zoo.create(name).parameters()) == count


def test_embedded_checkpoints_load_and_are_accurate_enough():
    for name in ("resnet20_fmnist", "mobilenet_v2_fmnist"):
        entry = zoo.get(name)
        if not entry.checkpoint.exists():
            pytest.fail(f"embedded checkpoint {entry.checkpoint} is missing")
        meta = torch.load(entry.checkpoint, map_location="cpu", weights_only=True).get("meta", {})
        assert meta.get("test_accuracy", 0) > 85, meta
        zoo.load(name)


def test_unknown_model_lists_the_registered_ones():
    with pytest.raises(DepthcutError, match="resnet34"):
        zoo.get("resnet35")
