"""Layer-streamed criteria (issue 10): a model whose weights exceed the memory given to it is scored with one
block resident, and the choice equals the in-memory one."""
from __future__ import annotations

import pytest
import torch

from depthcut.errors import DepthcutError
from depthcut.llm import criteria as C
from depthcut.llm.stream import STREAMABLE, StreamedModel, stream_select
from depthcut.llm.surgery import save_pretrained

from conftest import VOCAB

FAMILIES = ["llama", "gemma3_text", "qwen2"]


@pytest.fixture
def saved(tiny_model, tmp_path):
    def make(family):
        model = tiny_model(family, num_layers=8)
        save_pretrained(model, None, tmp_path / family)
        return model, tmp_path / family
    return make


def windows():
    return torch.randint(2, VOCAB, (3, 16), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_forward_equals_the_loaded_model(saved, family):
    model, path = saved(family)
    sm = StreamedModel(path)
    x = windows()
    with torch.no_grad():
        assert torch.allclose(sm.model(input_ids=x, use_cache=False).logits,
                              model(input_ids=x, use_cache=False).logits, atol=1e-5)
    assert all(p.is_meta for layer in sm.layers for p in layer.parameters())     # blocks dropped again


@pytest.mark.parametrize("criterion", STREAMABLE)
@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_choice_equals_in_memory_under_a_memory_cap(saved, family, criterion):
    model, path = saved(family)
    x = windows()
    crit = C.get_criterion(criterion)
    units = C.all_units(model, "block")
    protected = C.protected_units(units, 8, crit.protect)
    n = 2 if criterion != "mag+" else 1
    if crit.iterative:
        want = crit.select(model, x, n, crit.protect, "block")
    else:
        want = C.rank_removal(crit.score(model, x, "block"), units, n, protected)
    got, sm = stream_select(path, x, criterion, n)
    assert sorted(got) == sorted(want)
    total = sm.parameter_bytes()
    one_block = sum(p.numel() * 4 for p in model.model.layers[0].parameters())
    # the cap a machine would impose: the non-block weights plus one block (+1 for a block of another size)
    cap = sm.base_bytes + 2 * one_block
    assert sm.peak_bytes <= cap < total


def test_a_sharded_checkpoint_streams_shard_by_shard(tiny_model, tmp_path):
    """Large checkpoints come as several safetensors files and an index: each block is read from its shard."""
    model = tiny_model("llama", num_layers=8)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    shards = sorted((tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) >= 3 and (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    sm = StreamedModel(tmp_path / "sharded")
    x = windows()
    with torch.no_grad():
        assert torch.allclose(sm.model(input_ids=x, use_cache=False).logits,
                              model(input_ids=x, use_cache=False).logits, atol=1e-5)
    crit = C.get_criterion("angular")
    got, _ = stream_select(tmp_path / "sharded", x, "angular", 2)
    assert sorted(got) == sorted(crit.select(model, x, 2, crit.protect, "block"))


def test_criteria_that_cannot_stream_say_so(saved):
    _, path = saved("llama")
    with pytest.raises(DepthcutError, match="does not stream"):
        stream_select(path, windows(), "taylor", 1)


def test_cli_select_streams_a_checkpoint(tiny_model, tmp_path, capsys):
    import json

    from depthcut.llm.cli import main
    from test_prune import char_tokenizer

    path = tmp_path / "ckpt"
    save_pretrained(tiny_model("llama", num_layers=6), char_tokenizer(), path)
    text = tmp_path / "text.txt"
    text.write_text(" ".join(["the cat sat on a mat and ran far away"] * 400))
    assert main(["select", "--model", str(path), "--criterion", "block_influence", "--remove", "2",
                 "--calib", "2x24", "--corpus", str(text)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(out["remove"]) == 2 and out["peak_parameter_bytes"] < out["model_parameter_bytes"]
