"""What each unit costs: per-unit prefill / decode latency and interleaved end-to-end throughput (SPEC B3).

Backend: PyTorch eager on CPU, batch 1, the model's dtype. Two phases matter and behave differently:
* **prefill** - one forward over a ``prompt_len``-token prompt (attention grows with the prompt, MLP does not);
* **decode** - one token at a time with a KV cache; reported per generated token.

Per-unit latency is measured by *difference*: time the full model and the model with every other unit of a
kind skipped (skip masks, no copies), in the same rounds, interleaved, and divide the saving by how many
units were skipped. This captures exactly what removal saves (including the per-block Python / kernel-launch
overhead that hook-based layer timers miss). It assumes the blocks of a stack are alike (true for
llama/qwen/mistral-style decoders; interleaved sliding-window stacks get their average).

Timings on a shared machine are noisy: every comparison is interleaved (A B A B ..., order rotated each
round) and summarised by the median, with the spread (IQR) kept.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch

from .device import describe, model_device, model_dtype, synchronize
from .compat import forward_cached, new_dynamic_cache, output_cache
from .criteria import all_units, num_blocks, skipped

Unit = tuple[int, str]


def _prompt(model, prompt_len: int, seed: int = 0) -> torch.Tensor:
    vocab = int(model.config.vocab_size)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, prompt_len), generator=g)


@torch.inference_mode()
def time_generation(model, prompt: torch.Tensor, decode_tokens: int) -> tuple[float, float]:
    """(prefill ms, decode ms per token) of one greedy generation with a fresh KV cache."""
    device = model_device(model)
    prompt = prompt.to(device)
    cache = new_dynamic_cache(model)
    synchronize(device)
    start = time.perf_counter()
    out = forward_cached(model, prompt, cache)
    token = out.logits[:, -1:].argmax(-1)
    synchronize(device)
    prefill = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    for _ in range(decode_tokens):
        out = forward_cached(model, token, output_cache(out))
        token = out.logits[:, -1:].argmax(-1)
    synchronize(device)
    decode = (time.perf_counter() - start) * 1e3 / max(decode_tokens, 1)
    return prefill, decode


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Temporarily use ``threads`` intra-op threads (None = leave as is). On a shared machine 1 thread
    gives far steadier timings than oversubscribed cores."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _summary(values: list[float]) -> tuple[float, float]:
    """(median, inter-quartile range)."""
    if len(values) < 4:
        return statistics.median(values), max(values) - min(values)
    q = statistics.quantiles(values, n=4)
    return statistics.median(values), q[2] - q[0]


def _interleaved(runners: dict[str, callable], rounds: int, warmup: int) -> dict[str, list[tuple[float, float]]]:
    """Run every runner once per round, rotating the order each round so drift hits all of them alike."""
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    samples: dict[str, list] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            samples[name].append(runners[name]())
    return samples


def _protocol(prompt_len: int, decode_tokens: int, rounds: int, dtype, device=torch.device("cpu")) -> dict:
    return {"backend": f"torch-eager-{device.type}", "device": describe(device), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "batch": 1, "prompt_len": prompt_len, "decode_tokens": decode_tokens, "rounds": rounds,
            "dtype": str(dtype).replace("torch.", ""), "statistic": "median of interleaved rounds"}


def layer_type(model, index: int) -> str:
    """The attention kind of block ``index`` ("sliding_attention", "full_attention", ...), "all" when the
    config does not mix kinds."""
    types = getattr(model.config, "layer_types", None)
    return str(types[index]) if types and len(set(types)) > 1 else "all"


def _group_of(model, i: int, kind: str) -> str:
    """The timing group of unit (i, kind): its kind and, for blocks and attention, its layer type."""
    return f"{kind}:{layer_type(model, i) if kind in ('block', 'attn') else 'all'}"


def _timing_groups(model, kinds: list[str]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Each group's members (layer indices) and the members skipped to time it: every other one, never
    block 0 (it keeps the KV cache's length right); a group of block 0 alone is not timed."""
    members: dict[str, list[int]] = {}
    for kind in kinds:
        for i in range(num_blocks(model)):
            members.setdefault(_group_of(model, i, kind), []).append(i)
    skips = {}
    for group, idx in members.items():
        chosen = [i for i in idx[1::2] if i != 0] or [i for i in idx if i != 0][:1]
        if chosen:
            skips[group] = chosen
    return members, skips

def unit_latency(model, prompt_len: int = 128, decode_tokens: int = 16, unit: str = "block",
                 rounds: int = 5, warmup: int = 1, threads: int | None = None) -> dict:
    """Per-unit latency (ms) for prefill and decode, by timing the model with every other unit skipped.

    Units are grouped by kind and, for blocks and attention, by layer type: models that mix sliding-window
    and full attention (Gemma 2/3, Qwen with max_window_layers) pay differently per type at long context, so
    each group is timed on its own (every other member skipped; block 0 always stays, so the KV cache length
    stays right) and a unit costs its group's per-member saving.

    Returns {"unit", "units": [Unit], "prefill_ms": [per unit], "decode_ms": [per unit], "groups": {group:
    {"members", "skipped", "prefill_ms", "decode_ms"}}, "full_prefill_ms", "full_decode_ms",
    "overhead_prefill_ms", "overhead_decode_ms", "protocol"}, where overhead = full − Σ units (embeddings,
    final norm, LM head: what no removal can save).
    """
    kinds = {"block": ["block"], "sublayer": ["attn", "mlp"]}[unit]
    prompt = _prompt(model, prompt_len)
    members, skips = _timing_groups(model, kinds)

    def runner(skip: list[Unit]):
        def run():
            with skipped(model, skip):
                return time_generation(model, prompt, decode_tokens)
        return run
    runners = {"full": runner([])}
    for group, chosen in skips.items():
        kind = group.split(":")[0]
        runners[group] = runner([(i, kind) for i in chosen])
    with torch_threads(threads):
        samples = _interleaved(runners, rounds, warmup)
        protocol = _protocol(prompt_len, decode_tokens, rounds, model_dtype(model), model_device(model))
    med = {name: (_summary([s[0] for s in v])[0], _summary([s[1] for s in v])[0]) for name, v in samples.items()}
    per_group = {g: (max(med["full"][0] - med[g][0], 0.0) / len(c), max(med["full"][1] - med[g][1], 0.0) / len(c))
                 for g, c in skips.items()}
    for kind in kinds:                     # a group that could not be timed (only block 0): its kind's mean
        timed = [v for g, v in per_group.items() if g.startswith(kind + ":")]
        mean = tuple(sum(v[k] for v in timed) / len(timed) for k in (0, 1)) if timed else (0.0, 0.0)
        for g in members:
            if g.startswith(kind + ":") and g not in per_group:
                per_group[g] = mean
    units = all_units(model, unit)
    prefill = [per_group[_group_of(model, *u)][0] for u in units]
    decode = [per_group[_group_of(model, *u)][1] for u in units]
    return {
        "unit": unit, "units": units, "prefill_ms": prefill, "decode_ms": decode,
        "groups": {g: {"members": members[g], "skipped": skips.get(g, []), "prefill_ms": per_group[g][0],
                       "decode_ms": per_group[g][1]} for g in members},
        "full_prefill_ms": med["full"][0], "full_decode_ms": med["full"][1],
        "overhead_prefill_ms": max(med["full"][0] - sum(prefill), 0.0),
        "overhead_decode_ms": max(med["full"][1] - sum(decode), 0.0),
        "protocol": protocol,
    }


def cached_unit_latency(model, prompt_len: int = 128, decode_tokens: int = 16, unit: str = "block", *,
                        rounds: int = 5, threads: int | None = None, cache_dir=None) -> dict:
    """:func:`unit_latency` through the latency cache, next to the CNN's rows: keyed by what the timing
    depends on - the model's architecture (its config, not its weights), dtype, device, threads and the
    protocol - so a budget run started again reads it instead of timing the model again."""
    from pathlib import Path

    from ..cache import DEFAULT_CACHE_DIR, EntryStore, fingerprint

    device = model_device(model)
    manifest = {"table": "llm-unit-latency", "format": 1, "backend": f"torch-eager-{device.type}",
                "device": describe(device), "torch": torch.__version__, "threads": threads or torch.get_num_threads()}
    root = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    store = EntryStore(root / "latency" / fingerprint(manifest), manifest)
    key = "units-" + fingerprint({"config": model.config.to_dict(), "dtype": str(model_dtype(model)),
                                  "prompt_len": prompt_len, "decode_tokens": decode_tokens, "unit": unit,
                                  "rounds": rounds})
    if key not in store:
        store[key] = unit_latency(model, prompt_len, decode_tokens, unit, rounds=rounds, threads=threads)
    table = dict(store[key])
    table["units"] = [tuple(u) for u in table["units"]]   # JSON keeps (index, kind) as a list
    return table

def measure_throughput(models: dict, tokenizer=None, prompt_len: int = 128, new_tokens: int = 32,
                       rounds: int = 5, warmup: int = 1, threads: int | None = None) -> dict:
    """End-to-end prefill and decode speed of several models, interleaved in one run.

    Returns {"models": {name: {"prefill_ms", "decode_ms_per_token" (medians), "prefill_iqr_ms",
    "decode_iqr_ms", "prefill_min_ms", "decode_min_ms_per_token"}},
    "protocol": {...}}. All models get the same prompt (random ids, fixed seed; ``tokenizer`` is accepted for
    API symmetry and only used to check the vocabulary size).
    """
    first = next(iter(models.values()))
    prompt = _prompt(first, prompt_len)
    if tokenizer is not None and len(tokenizer) < int(prompt.max()) + 1:
        prompt = prompt % len(tokenizer)
    runners = {name: (lambda m=m: time_generation(m, prompt, new_tokens)) for name, m in models.items()}
    with torch_threads(threads):
        samples = _interleaved(runners, rounds, warmup)
        protocol = _protocol(prompt_len, new_tokens, rounds, model_dtype(first), model_device(first))
    result = {}
    for name, values in samples.items():
        pre, pre_iqr = _summary([v[0] for v in values])
        dec, dec_iqr = _summary([v[1] for v in values])
        # the minimum is reported too: on a contended machine noise only ever adds time
        result[name] = {"prefill_ms": pre, "decode_ms_per_token": dec, "prefill_iqr_ms": pre_iqr,
                        "decode_iqr_ms": dec_iqr, "prefill_min_ms": min(v[0] for v in values),
                        "decode_min_ms_per_token": min(v[1] for v in values)}
    return {"models": result, "protocol": protocol}


def predicted_ms(latency: dict, removed: Iterable[Unit], phase: str) -> float:
    """Additive surrogate: full latency minus the latency of the removed units, for 'prefill' or 'decode'."""
    table = dict(zip(map(tuple, latency["units"]), latency[f"{phase}_ms"]))
    return latency[f"full_{phase}_ms"] - sum(table[tuple(u)] for u in removed)


def compare_generation(dense, pruned, prompt_len: int, new_tokens: int, phase: str, *, min_rounds: int = 6,
                       max_rounds: int = 30, rel_width: float = 0.03, warmup: int = 1, threads: int | None = None,
                       decided=None):
    """``dense`` against ``pruned``, one generation each per round in alternating order
    (depthcut.latency.compare.paired_rounds): the ``phase`` ("prefill" ms or "decode" ms per token) speed-up
    with its 95% interval, the same statistics as the CNN landing uses."""
    from ..latency.compare import paired_rounds

    prompt = _prompt(dense, prompt_len)
    pick = 0 if phase == "prefill" else 1
    models = {"original": dense, "compressed": pruned}
    with torch_threads(threads):
        for _ in range(warmup):
            for m in models.values():
                time_generation(m, prompt, new_tokens)
        return paired_rounds(lambda name: [time_generation(models[name], prompt, new_tokens)[pick]],
                             min_rounds=min_rounds, max_rounds=max_rounds, rel_width=rel_width, decided=decided)
