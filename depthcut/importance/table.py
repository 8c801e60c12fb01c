"""The importance table I(i, j, k) (SPEC A6): one (cheaply fine-tuned) evaluation per candidate.

This is the expensive part of LayerMerge (150-391 short fine-tunes), so it is built to survive:

- every finished entry is written to an :class:`~depthcut.cache.EntryStore` *immediately and atomically*,
  so ``kill -9`` loses only the entries in flight, and a rerun skips everything already stored;
- the work goes through an :class:`~depthcut.importance.executor.Executor` (in-process, a process pool, or a
  distributed engine with the same ``map``), and ``shard=(i, n)`` splits it across machines sharing a cache.

The table stores the raw *metric* of each candidate (accuracy in % or a loss); :func:`importance_scores`
turns metrics into the DP's importance with :func:`score` (I = exp(Δacc/100)) or :func:`score_loss`
(I = exp(−ΔL/L0)). Keeping the raw metric means the base model can be re-evaluated without recomputing rows.

This module does not import torch at load time (only :func:`recalibrate_bn` needs it), so worker processes
and resumed runs start fast.
"""
from __future__ import annotations

import enum
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..cache import DEFAULT_CACHE_DIR, EntryStore, fingerprint, json_number, read_json
from ..cnn.chain import Candidate
from ..errors import CacheError, DepthcutError
from ..progress import progress as _progress
from .executor import Executor, LocalExecutor

TABLE_FORMAT = 1


# ------------------------------------------------------------------------------------------- scores ---

def score(acc: float, base_acc: float) -> float:
    """Importance of a candidate from accuracies in percent: I = exp((acc − base_acc) / 100).
    A harmless block scores ≈ 1; each point of accuracy lost costs ≈ 1%."""
    return math.exp((acc - base_acc) / 100.0)


def score_loss(loss: float, base_loss: float) -> float:
    """Importance for generative models from losses: I = exp(−(loss − base_loss) / base_loss)."""
    if not base_loss > 0:
        raise ValueError(f"base loss must be positive, got {base_loss}")
    return math.exp(-(loss - base_loss) / base_loss)


def importance_scores(metrics: Mapping[str, float], base: float, metric: str = "accuracy") -> dict[str, float]:
    """Map raw table metrics to importances; ``metric`` is "accuracy" (higher is better, in %) or "loss"."""
    if metric == "accuracy":
        return {k: score(v, base) for k, v in metrics.items()}
    if metric == "loss":
        return {k: score_loss(v, base) for k, v in metrics.items()}
    raise ValueError(f"metric must be 'accuracy' or 'loss', got {metric!r}")


# ------------------------------------------------------------------------------------------ proxies ---

class Proxy(str, enum.Enum):
    """How a candidate model is prepared before it is evaluated. Costs are per candidate, with E = one
    evaluation pass over the held-out evaluation subset.

    - ``FINETUNE`` ("finetune"): the LayerMerge protocol. ``train_fn`` fine-tunes the candidate briefly
      (paper: 1 epoch on 50k images; here whatever ``train_fn`` does, e.g. a few hundred steps), then it is
      evaluated. Cost: the fine-tune (forward + backward over the training subset, typically 3-10x E) + E.
      The most faithful ranking: it measures the damage that fine-tuning cannot repair.
    - ``BN_RECALIBRATION`` ("bn-recalibration"): no gradient steps; BatchNorm running statistics are reset
      and recomputed on a few calibration batches (the merged block shifts activation statistics downstream,
      and stale statistics dominate the raw damage). Cost: ``calibration_batches`` forward passes + E,
      roughly 1.1-1.5x E. Ranks well for blocks that only remove activations; under-rates candidates whose
      damage fine-tuning would repair (e.g. re-initialised single convs).
    - ``BN_BATCH`` ("bn-batch"): no gradient steps; every BatchNorm normalises each evaluation batch by that
      batch's own statistics (transductive: the scoring images are their own calibration). Cost: E, one pass,
      against BN re-calibration's two; the cheap score of adaptive importance.
    - ``NONE`` ("none"): evaluate the candidate as built. Cost: E. Cheapest and noisiest: stale BN
      statistics make most candidates look catastrophic, so it mostly separates "harmless" from "not".

    A "fewer steps" proxy is ``FINETUNE`` with a shorter ``train_fn``.
    """

    FINETUNE = "finetune"
    BN_RECALIBRATION = "bn-recalibration"
    BN_BATCH = "bn-batch"
    NONE = "none"


PROXIES: dict[str, str] = {
    Proxy.FINETUNE.value: "short fine-tune then evaluate; cost = fine-tune + 1 evaluation (most faithful)",
    Proxy.BN_RECALIBRATION.value: "recompute BatchNorm statistics on a few batches, no gradient steps, then "
                                  "evaluate; cost ≈ a few forward passes + 1 evaluation",
    Proxy.BN_BATCH.value: "evaluate with each batch normalised by its own BatchNorm statistics, no gradient "
                          "steps; cost = 1 evaluation",
    Proxy.NONE.value: "evaluate directly, no adaptation; cost = 1 evaluation (cheapest, noisiest)",
}


def recalibrate_bn(model: Any, batches: Iterable[Any], num_batches: int | None = None) -> Any:
    """Recompute every BatchNorm's running statistics over ``batches`` (see
    :func:`depthcut.train.loop.recalibrate_bn_on`); imported lazily so that this module stays torch-free."""
    from ..train.loop import recalibrate_bn_on

    return recalibrate_bn_on(model, batches, num_batches)


# -------------------------------------------------------------------------------------------- table ---

def importance_store(manifest: Mapping[str, Any], cache_dir: str | Path | None = None) -> EntryStore:
    """The store for one importance table: ``cache_dir/importance/<fingerprint(manifest)>``. The manifest
    must cover everything that changes the metrics: model weights (see ``cache.state_fingerprint``), proxy,
    fine-tune recipe, data subsets, seed."""
    manifest = {"table": "importance", "format": TABLE_FORMAT, **manifest}
    root = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    return EntryStore(root / "importance" / fingerprint(manifest), manifest)


@dataclass(frozen=True)
class StoredCost:
    """What the importance tables stored under one cache directory cost: entries by how they were scored
    (the fine-tune proxy or a cheap one) and the compute time every entry recorded when it was computed.
    Unlike a run's wall time it does not shrink when a killed run resumes from the cache."""

    finetuned: int
    cheap: int
    seconds: float


def stored_cost(cache_dir: str | Path | None = None) -> StoredCost:
    """The :class:`StoredCost` of every importance table under ``cache_dir/importance`` (one walk)."""
    root = (Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR) / "importance"
    finetuned = cheap = 0
    seconds = 0.0
    for manifest in sorted(root.rglob(EntryStore.MANIFEST)):
        store = EntryStore(manifest.parent, read_json(manifest))
        values = [value for _, value in store.items()]
        if store.manifest.get("proxy") == Proxy.FINETUNE.value:
            finetuned += len(values)
        else:
            cheap += len(values)
        seconds += sum(float(value.get("seconds", 0.0)) for value in values)
    return StoredCost(finetuned, cheap, seconds)


def in_shard(key: str, shard: tuple[int, int]) -> bool:
    """Stable assignment of an entry to shard ``i`` of ``n`` (same on every machine and Python run)."""
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    return int(hashlib.sha1(key.encode()).hexdigest(), 16) % n == i


@dataclass
class Failed:
    """What a scoring task that raised sends back instead of a metric (so one bad candidate, a CUDA OOM on
    one worker say, does not throw away the others)."""

    error: str
    traceback: str


class _Timed:
    """Wraps score_fn to also report wall time (stored with the entry for cost accounting), and to turn an
    exception into a :class:`Failed` result: it crosses process and Ray boundaries as a plain value."""

    def __init__(self, score_fn: Callable[[Candidate], float]):
        self.score_fn = score_fn

    def __call__(self, candidate: Candidate) -> tuple[float, float] | Failed:
        import traceback

        t0 = time.perf_counter()
        try:
            value = float(self.score_fn(candidate))
        except Exception as e:   # noqa: BLE001 - reported with its candidate, the table goes on
            return Failed(f"{type(e).__name__}: {e}", traceback.format_exc())
        return value, time.perf_counter() - t0


class ImportanceTaskError(DepthcutError):
    """Some entries raised; every other entry is stored, and a rerun computes only the failed ones."""


def _read_entry(store: EntryStore, key: str, metric_range: tuple[float, float] = (-math.inf, math.inf)) -> float:
    entry = store[key]
    try:
        value = json_number(entry["metric"])
    except (TypeError, KeyError, ValueError):
        raise CacheError(f"cache file {store.path(key)} does not hold an importance metric for {key!r}; "
                         f"delete it to recompute") from None
    low, high = metric_range
    if not (math.isfinite(value) and low <= value <= high):
        raise CacheError(f"cache file {store.path(key)} holds metric {value} for {key!r}, outside "
                         f"[{low:g}, {high:g}]; delete it to recompute")
    return value


def check_entries(store: EntryStore, metric_range: tuple[float, float] = (-math.inf, math.inf)) -> int:
    """Read every cached entry of ``store``; CacheError naming the first damaged file. Returns the count."""
    n = 0
    for key in store.keys():
        _read_entry(store, key, metric_range)
        n += 1
    return n


def importance_table(candidates: Iterable[Candidate], score_fn: Callable[[Candidate], float], *,
                     store: EntryStore, executor: Executor | None = None, progress: bool = True,
                     shard: tuple[int, int] | None = None,
                     metric_range: tuple[float, float] = (-math.inf, math.inf),
                     desc: str = "importance") -> dict[str, float]:
    """Compute ``{candidate.key: score_fn(candidate)}``, resuming from and writing to ``store`` (``desc``
    names the progress bar).

    Every metric, cached or new, must be finite and lie in ``metric_range`` (accuracy: (0, 100)); a cached
    entry outside it is a damaged file and raises :class:`CacheError` naming it before anything is computed.

    Entries already in the store are not recomputed; each new result is stored atomically as soon as the
    executor yields it. With ``shard=(i, n)`` only this shard's missing entries are computed and the result
    holds whatever the store has (possibly incomplete); without it the result is complete.
    """
    executor = executor or LocalExecutor()
    unique: dict[str, Candidate] = {}
    for c in candidates:
        unique.setdefault(c.key, c)
    todo = [c for key, c in unique.items()
            if (shard is None or in_shard(key, shard)) and key not in store]
    check_entries(store, metric_range)        # a damaged cached entry fails now, before any compute

    bar = _progress(total=len(todo), desc=desc, enabled=progress, unit="entry")
    failures: list[tuple[Candidate, Failed]] = []
    try:
        for cand, outcome in executor.map(_Timed(score_fn), todo):
            bar.update(1)
            if isinstance(outcome, Failed):
                failures.append((cand, outcome))
                continue
            value, seconds = outcome
            store[cand.key] = {"metric": value, "seconds": seconds, "candidate": cand.to_dict()}
            bar.set_postfix_str(f"{cand.key}={value:.4g}")
    finally:
        bar.close()
    if failures:
        _report_failures(store, failures, len(todo))

    keys = list(unique) if shard is None else [k for k in unique if k in store]
    return {key: _read_entry(store, key, metric_range) for key in keys}


def _report_failures(store: EntryStore, failures: list, attempted: int) -> None:
    """Write every failed candidate with its traceback next to the entries, then one line naming the file."""
    log = store.dir / "failures.log"
    text = "".join(f"=== {cand.key}\n{failed.error}\n{failed.traceback}\n" for cand, failed in failures)
    from ..cache import atomic_write_text

    atomic_write_text(log, text)
    first_cand, first = failures[0]
    raise ImportanceTaskError(f"{len(failures)} of {attempted} importance entries failed (first: {first_cand.key}: "
                              f"{first.error}); the others are cached, a rerun computes only these; tracebacks "
                              f"in {log}")
