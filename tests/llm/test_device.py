"""Device and dtype for the LLM side (issue 10): prune in bfloat16, its checks keep their teeth, device and
model-id errors are one line. CUDA itself is exercised by bench/llm_gpu_check.py on a GPU machine."""
from __future__ import annotations

import json

import pytest
import torch

from depthcut.errors import DepthcutError
from depthcut.llm import prune as P
from depthcut.llm.compat import decode_consistency_error
from depthcut.llm.device import TOLERANCE, resolve_device, resolve_dtype
from depthcut.llm.surgery import remove_units

from conftest import FAMILY_TYPES
from test_prune import char_tokenizer, corpus, small_config  # noqa: F401  (corpus is a fixture)


@pytest.mark.parametrize("family", FAMILY_TYPES)
def test_reduced_precision_tolerance_is_above_rounding_and_below_a_broken_cache(tiny_model, family, monkeypatch):
    """The tolerances in depthcut.llm.device: cached decoding of a pruned model in bf16/fp16 stays inside
    them, and the issue-6 bug (a skipped attention that stops counting tokens) stays far outside."""
    import depthcut.llm.surgery as surgery

    model = tiny_model(family, num_layers=6)
    x = torch.randint(2, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    units = [(0, "attn"), (2, "block")]
    for dtype in (torch.bfloat16, torch.float16):
        assert decode_consistency_error(remove_units(model, units).to(dtype), x) <= TOLERANCE[dtype] / 2
    monkeypatch.setattr(surgery, "_append_placeholder", lambda cache, layer_idx, hidden_states: None)
    assert decode_consistency_error(remove_units(model, units).to(torch.bfloat16), x) > 4 * TOLERANCE[torch.bfloat16]


def test_prune_in_bfloat16_saves_a_bfloat16_checkpoint_that_decodes_right(tiny_model, corpus, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model("gemma3_text", num_layers=6)
    out = tmp_path / "bf16"
    result = P.prune(model, char_tokenizer(), small_config(corpus, remove=2, unit="sublayer", criterion="ppl",
                                                            heal_steps=2, dtype="bfloat16", device="cpu",
                                                            out=str(out)))
    assert next(model.parameters()).dtype == torch.float32            # the caller's model is not touched
    assert next(result.model.parameters()).dtype == torch.bfloat16
    report = json.loads((out / "report.json").read_text())
    assert report["dtype"] == "bfloat16" and report["device"] == "cpu"
    assert report["verify_tolerance"] == TOLERANCE[torch.bfloat16]
    assert report["reload_decode_max_rel_logit_error"] <= TOLERANCE[torch.bfloat16]
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert next(reloaded.parameters()).dtype == torch.bfloat16


def test_device_and_dtype_errors_are_one_line():
    with pytest.raises(DepthcutError, match="dtype must be one of"):
        resolve_dtype("int8")
    with pytest.raises(DepthcutError, match="device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DepthcutError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_model_id_is_read_from_the_local_hf_cache_never_downloaded(tiny_model, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    from depthcut.llm.loading import load_model
    from depthcut.llm.surgery import save_pretrained

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DepthcutError, match="never downloads"):
        load_model("someone/not-cached")
    repo = tmp_path / "hub" / "models--someone--tiny"
    snapshot = repo / "snapshots" / ("a" * 40)
    save_pretrained(tiny_model("llama", num_layers=2), char_tokenizer(), snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    model, tokenizer = load_model("someone/tiny")
    assert model.config.num_hidden_layers == 2 and tokenizer("cat").input_ids
