"""importance_seed: runs that differ only in their seed can share one importance table (issue 9 §5)."""
from __future__ import annotations

import pytest
import torch

from depthcut.config import LayerMergeConfig
from depthcut.errors import DepthcutError
from depthcut.importance.scorer import importance_manifest
from depthcut import zoo


@pytest.fixture(scope="module")
def resnet():
    from depthcut.cnn.graph import analyze

    entry = zoo.get("resnet20_fmnist")
    torch.manual_seed(0)
    model = entry.create().eval()
    return model, analyze(model, (1, 1, 28, 28), exclude=entry.chain_exclude)


def test_the_importance_table_follows_the_importance_seed(resnet):
    model, analysis = resnet
    manifest = lambda **kw: importance_manifest(model, analysis, LayerMergeConfig(**kw))  # noqa: E731
    assert LayerMergeConfig(seed=2).scoring_seed == 2 and LayerMergeConfig(seed=2, importance_seed=0).scoring_seed == 0
    # shared: seeds 1 and 2 with importance seed 0 read seed 0's table (the same cache entries)
    assert manifest(seed=1, importance_seed=0) == manifest(seed=2, importance_seed=0) == manifest(seed=0)
    # not shared: each seed its own table, as before the field existed
    assert manifest(seed=1) != manifest(seed=2)


def test_importance_seed_is_validated_and_saved(tmp_path):
    with pytest.raises(DepthcutError, match="importance_seed"):
        LayerMergeConfig(importance_seed=-1)
    path = tmp_path / "c.json"
    LayerMergeConfig(seed=3, importance_seed=0).save(path)
    assert LayerMergeConfig.load(path).scoring_seed == 0


def test_the_fine_tunes_numerics_key_the_table_only_when_changed(resnet):
    """channels_last and mixed precision change an entry's value (float order in 20 SGD steps), so their
    entries never mix with the default recipe's; the default's key is what it was before they were named."""
    model, analysis = resnet
    manifest = lambda **kw: importance_manifest(model, analysis, LayerMergeConfig(**kw))  # noqa: E731
    assert "channels_last" not in manifest() and "amp" not in manifest()
    assert len({str(manifest()), str(manifest(channels_last=True)), str(manifest(amp="bf16"))}) == 3
