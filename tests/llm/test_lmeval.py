"""Standard evaluation through lm-eval (issue 10): the local tasks are what they claim, and lm-eval's numbers
equal the same quantities computed here independently from the model's logits."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch

from depthcut.errors import DepthcutError
from depthcut.llm import lmeval
from depthcut.llm import prune as P

from test_prune import WORDS, char_tokenizer, small_config

pytest.importorskip("lm_eval")


def text_of(n_docs: int, seed: int = 0) -> str:
    """Documents of three short sentences each, one per line (short enough for one context window)."""
    rng = random.Random(seed)
    sentence = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 5))) + "."  # noqa: E731
    return "\n".join(" ".join(sentence() for _ in range(3)) for _ in range(n_docs)) + "\n"


@pytest.fixture
def corpus(tmp_path) -> str:
    path = tmp_path / "corpus.txt"
    path.write_text(text_of(150))
    return str(path)


def test_next_sentence_questions_have_the_true_successor_and_foreign_distractors():
    text = text_of(30, seed=3)
    documents = [lmeval.sentences(line) for line in text.splitlines()]
    questions = lmeval.next_sentence_docs(text, seed=1)
    assert len(questions) == 30 and questions == lmeval.next_sentence_docs(text, seed=1)
    golds = set()
    for q, doc in zip(questions, documents):
        i = doc.index(q["context"])
        assert q["choices"][q["gold"]] == doc[i + 1] and len(q["choices"]) == 1 + lmeval.DISTRACTORS
        assert not set(q["choices"]) - {q["choices"][q["gold"]]} & set(doc)   # distractors: other documents
        golds.add(q["gold"])
    assert len(golds) > 1                                                      # the answer's place varies


def sum_logprob(model, context: list[int], continuation: list[int]) -> float:
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logp = model(input_ids=ids).logits.log_softmax(-1)[0]
    return sum(float(logp[len(context) + k - 1, t]) for k, t in enumerate(continuation))


def test_lm_eval_numbers_equal_an_independent_computation(tiny_model):
    """bits per byte of the rolling task and acc of the multiple-choice task, recomputed from the logits: the
    model, the tokenizer and the task files reach lm-eval as intended."""
    model, tok = tiny_model("llama", num_layers=3), char_tokenizer()
    text = text_of(12, seed=5)
    out = lmeval.evaluate_models({"m": model}, tok, list(lmeval.LOCAL_TASKS), text, batch_size=4)
    result = out["results"]["m"]

    nll, n_bytes = 0.0, 0
    for doc in (line.strip() for line in text.splitlines() if line.strip()):
        ids = tok.encode(doc, add_special_tokens=False)
        assert len(ids) < model.config.max_position_embeddings        # one window: no rolling to model here
        nll -= sum_logprob(model, [tok.bos_token_id], ids)
        n_bytes += len(doc.encode("utf-8"))
    assert result["depthcut_heldout"]["bits_per_byte"] == pytest.approx(nll / n_bytes / math.log(2), rel=1e-4)

    correct = 0
    for q in lmeval.next_sentence_docs(text, seed=0):
        context = tok.encode(q["context"], add_special_tokens=False)
        scores = [sum_logprob(model, context, tok.encode(q["context"] + " " + c, add_special_tokens=False)[len(context):])
                  for c in q["choices"]]
        correct += max(range(len(scores)), key=scores.__getitem__) == q["gold"]
    assert result["depthcut_next_sentence"]["acc"] == pytest.approx(correct / len(lmeval.next_sentence_docs(text)))
    assert out["protocol"]["num_fewshot"] == 0 and out["protocol"]["documents"]["depthcut_heldout"] == 12


def test_prune_reports_lm_eval_for_the_dense_and_the_pruned_model(tiny_model, corpus, tmp_path):
    config = small_config(corpus, remove=1, criterion="magnitude", out=str(tmp_path / "o"),
                          lm_eval_tasks=("depthcut_heldout", "depthcut_next_sentence"), lm_eval_limit=10)
    result = P.prune(tiny_model("llama", num_layers=4), char_tokenizer(), config)
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    for model in ("dense", "pruned"):
        assert 0.0 <= report["lm_eval"]["results"][model]["depthcut_next_sentence"]["acc"] <= 1.0
        assert report["lm_eval"]["results"][model]["depthcut_heldout"]["byte_perplexity"] > 1.0
    assert result.report["lm_eval"]["protocol"]["limit"] == 10
    assert "| depthcut_next_sentence | acc |" in (tmp_path / "o" / "report.md").read_text()


def test_an_unknown_task_is_refused_before_any_work(tiny_model, corpus, monkeypatch):
    monkeypatch.setattr(P, "load_corpus", lambda *a: pytest.fail("work started before the task was checked"))
    with pytest.raises(DepthcutError, match="unknown lm-eval task.*no_such_task"):
        P.prune(tiny_model("llama", num_layers=4), char_tokenizer(),
                small_config(corpus, remove=1, lm_eval_tasks=("no_such_task",)))
    with pytest.raises(DepthcutError, match="not a folder"):
        lmeval.check_tasks(("depthcut_heldout",), include="/nonexistent/tasks")
