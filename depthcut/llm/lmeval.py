"""Standard evaluation through lm-eval's Python API (``lm-eval``, the ``eval`` extra), fully offline.

LLM depth-pruning papers compare by lm-eval zero-shot tasks. Their data normally comes from the Hugging Face
hub, which depthcut never contacts at run time, so two tasks are written locally from the run's *held-out*
split (never seen by calibration or healing), in lm-eval's own task format:

* ``depthcut_heldout`` - ``loglikelihood_rolling`` over each held-out document (one corpus line): lm-eval's
  word perplexity, byte perplexity and bits per byte. Same text as depthcut's built-in PPL, but lm-eval's
  protocol (whole documents, rolling windows of the model's context, no BOS per window), so the numbers differ.
* ``depthcut_next_sentence`` - ``multiple_choice``: given a sentence of a held-out document, which of four
  sentences comes next? The true one, or three drawn (seeded) from other held-out documents. Reported as
  ``acc`` and ``acc_norm`` (length-normalised); chance is 0.25. Our task, not a published benchmark.

Any other task name goes to lm-eval's registry, plus the YAMLs in ``include`` (a folder): e.g. a copy of
``hellaswag.yaml`` whose ``dataset_path``/``dataset_kwargs`` point at a local file. The datasets library and
the hub client are put in offline mode for the call, so a task whose data is not on this machine fails with
lm-eval's error instead of downloading.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

from ..errors import DepthcutError

LOCAL_TASKS = ("depthcut_heldout", "depthcut_next_sentence")
NEXT_SENTENCE_DOCS = 200          # at most this many questions (one per held-out document)
DISTRACTORS = 3
METRICS = {"depthcut_heldout": ("word_perplexity", "byte_perplexity", "bits_per_byte"),
           "depthcut_next_sentence": ("acc", "acc_norm")}
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=\S)")


def _require():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise DepthcutError("lm-eval is not installed: pip install 'depthcut[eval]' (or lm-eval) to use "
                            "lm_eval_tasks / --lm-eval") from None


def check_tasks(tasks, include: str | None) -> None:
    """Before any work: lm-eval imports, ``include`` is a folder, and every task name is known."""
    _require()
    if include is not None and not Path(include).is_dir():
        raise DepthcutError(f"lm-eval include {include} is not a folder of task YAMLs")
    registry = [t for t in tasks if t not in LOCAL_TASKS]
    if registry:
        known = set(task_manager(registry, [include] if include else []).all_tasks)
        unknown = [t for t in registry if t not in known]
        if unknown:
            raise DepthcutError(f"unknown lm-eval task(s) {', '.join(unknown)}: use {', '.join(LOCAL_TASKS)}, a "
                                f"task of lm-eval's registry, or a YAML in --lm-eval-include")


def task_manager(tasks, include_paths: list) -> Any:
    """lm-eval's TaskManager for ``tasks``: indexing lm-eval's own registry (some 15,000 YAMLs) takes about
    30 s, so it is indexed only when a task is not in ``include_paths`` (depthcut's local tasks, the user's
    folder)."""
    from lm_eval.tasks import TaskManager

    if include_paths:
        manager = TaskManager(include_path=include_paths, include_defaults=False)
        if set(tasks) <= set(manager.all_tasks):
            return manager
    return TaskManager(include_path=include_paths or None)


def sentences(document: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(document.strip()) if len(s.strip().split()) >= 3]


def next_sentence_docs(text: str, seed: int = 0, limit: int = NEXT_SENTENCE_DOCS) -> list[dict[str, Any]]:
    """One question per document with at least two sentences: a random sentence, its true successor and
    ``DISTRACTORS`` sentences of other documents, in a seeded random order."""
    documents = [sentences(line) for line in text.splitlines() if line.strip()]
    rng = random.Random(seed)
    pool = [(d, s) for d, doc in enumerate(documents) for s in doc]
    questions = []
    for d, doc in enumerate(documents):
        if len(doc) < 2 or len(questions) >= limit:
            continue
        i = rng.randrange(len(doc) - 1)
        others = [s for k, s in pool if k != d]
        if len(others) < DISTRACTORS:
            break
        choices = [doc[i + 1], *rng.sample(others, DISTRACTORS)]
        order = list(range(len(choices)))
        rng.shuffle(order)
        questions.append({"context": doc[i], "choices": [choices[k] for k in order], "gold": order.index(0)})
    return questions


def write_local_tasks(eval_text: str, folder: Path, seed: int = 0) -> dict[str, int]:
    """The two local tasks (module doc) as JSONL data + lm-eval YAMLs in ``folder``; returns documents per task."""
    folder.mkdir(parents=True, exist_ok=True)
    heldout = [{"text": line.strip()} for line in eval_text.splitlines() if line.strip()]
    questions = next_sentence_docs(eval_text, seed)
    if not heldout or not questions:
        raise DepthcutError("the held-out text has no documents for the lm-eval tasks (one document per line, "
                            "at least two sentences each for depthcut_next_sentence)")
    for name, docs in (("heldout", heldout), ("next_sentence", questions)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    data = lambda name: f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / name}\n"  # noqa: E731
    (folder / "depthcut_heldout.yaml").write_text(
        "task: depthcut_heldout\n" + data("heldout.jsonl") +
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n"
        "metric_list:\n" + "".join(f"  - metric: {m}\n    aggregation: {a}\n    higher_is_better: false\n"
                                   for m, a in (("word_perplexity", "weighted_perplexity"),
                                                ("byte_perplexity", "weighted_perplexity"),
                                                ("bits_per_byte", "bits_per_byte"))) +
        "metadata:\n  version: 1.0\n")
    (folder / "depthcut_next_sentence.yaml").write_text(
        "task: depthcut_next_sentence\n" + data("next_sentence.jsonl") +
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{context}}\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: gold\ntarget_delimiter: \" \"\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n")
    return {"depthcut_heldout": len(heldout), "depthcut_next_sentence": len(questions)}


@contextlib.contextmanager
def _offline():
    """The datasets library and the hub client in offline mode for the duration (restored after)."""
    import datasets.config
    import huggingface_hub.constants as hub

    saved = (os.environ.get("HF_DATASETS_OFFLINE"), os.environ.get("HF_HUB_OFFLINE"),
             datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE)
    os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
    datasets.config.HF_DATASETS_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for key, value in zip(("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"), saved[:2]):
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE = saved[2:]


def evaluate_models(models: dict[str, Any], tokenizer, tasks, eval_text: str, include: str | None = None,
                    limit: int | None = None, batch_size: int = 8, seed: int = 0) -> dict[str, Any]:
    """lm-eval zero-shot ``tasks`` on every model of ``models`` ({name: model}, same tokenizer).

    Returns {"results": {model: {task: {metric: value, metric_stderr: value}}}, "protocol": {...}}."""
    _require()
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    tasks = list(tasks)
    with tempfile.TemporaryDirectory(prefix="depthcut-lmeval-") as tmp, _offline():
        counts = write_local_tasks(eval_text, Path(tmp), seed) if any(t in LOCAL_TASKS for t in tasks) else {}
        manager = task_manager(tasks, [tmp] + ([include] if include else []))
        results: dict[str, Any] = {}
        for name, model in models.items():
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            out = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, num_fewshot=0, limit=limit,
                                          log_samples=False, bootstrap_iters=1000, random_seed=seed,
                                          numpy_random_seed=seed, torch_random_seed=seed,
                                          fewshot_random_seed=seed, verbosity="ERROR")
            results[name] = {task: {k.split(",")[0]: v for k, v in values.items()
                                    if "," in k and isinstance(v, (int, float))}
                             for task, values in out["results"].items()}
    return {"results": results,
            "protocol": {"harness": f"lm-eval {lm_eval.__version__} (Python API, HFLM on the in-memory model)",
                         "num_fewshot": 0, "limit": limit, "tasks": tasks, "documents": counts,
                         "local_tasks": "written from the held-out split: depthcut_heldout (loglikelihood_rolling "
                                        "per document), depthcut_next_sentence (4-way multiple choice, chance 0.25; "
                                        "our task, not a published benchmark)"}}


def markdown(lm_eval_report: dict[str, Any]) -> list[str]:
    """Table lines: one row per (task, metric), one column per model."""
    results = lm_eval_report["results"]
    names = list(results)
    lines = ["| lm-eval task | metric | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    tasks = sorted({t for r in results.values() for t in r})
    for task in tasks:
        metrics = [m for m in results[names[0]].get(task, {}) if not m.endswith("_stderr")]
        for metric in metrics:
            cells = []
            for n in names:
                value = results[n].get(task, {}).get(metric)
                err = results[n].get(task, {}).get(metric + "_stderr")
                cells.append("-" if value is None else f"{value:.4f}" + (f" ± {err:.4f}" if isinstance(err, float)
                                                                           else ""))
            lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    return lines
