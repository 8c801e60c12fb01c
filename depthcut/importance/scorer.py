"""The importance the product scores (SPEC A6): each candidate applied alone to the original network, briefly
fine-tuned (or BN-recalibrated, or as built) on one held-out split and measured on a second, disjoint one,
I = exp(Δacc / 100). Entries go through the resumable table (``importance.table``) on any executor."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..cache import state_fingerprint
from ..cnn.build import is_trivial
from ..cnn.chain import Candidate
from ..config import LayerMergeConfig
from ..log import say as log_say
from .table import Proxy


def say(config: LayerMergeConfig, msg: str) -> None:
    log_say(msg, verb="compress", enabled=config.progress)


ACCURACY_RANGE = (0.0, 100.0)   # importance entries are accuracies in %
BN_BATCH_SIZE = 128             # the "bn-batch" proxy: each batch of 128 scoring images normalised by its statistics


def importance_manifest(original: nn.Module, analysis, config: LayerMergeConfig) -> dict[str, Any]:
    """Everything that changes an importance entry's value: another checkpoint, split or recipe must never
    reuse it."""
    return {"model": state_fingerprint(original), "data": config.data, "train_limit": config.train_limit,
            "finetune_size": config.finetune_size, "score_size": config.score_size,
            "proxy": config.importance, "steps": config.importance_steps, "lr": config.importance_lr,
            "batch_size": config.importance_batch_size, "seed": config.scoring_seed,
            "input_shape": list(analysis.input_shape), "conv_paths": [c.path for c in analysis.chain.convs],
            # the fine-tunes' numerics: channels_last moves an entry by up to ~1.5 points after 20 steps
            # (MobileNetV2), mixed precision by more; named only when set, so default-recipe stores stay valid
            **({"channels_last": True} if config.channels_last else {}), **({"amp": config.amp} if config.amp else {})}


@dataclass
class CandidateAccuracy:
    """The importance proxy of one candidate, as a picklable callable (so that process pools and Ray tasks can
    run it): build the network with only this block applied, adapt it (short fine-tune, BN re-calibration or
    nothing) on the fine-tune split, return its accuracy on the disjoint scoring split. Seeded per candidate,
    so a worker computes the same entry as the driver would.

    It carries the original module, not the traced graph (torch.fx GraphModules of real models do not
    pickle): a worker re-runs the deterministic analysis once and keeps it."""

    original: nn.Module
    input_shape: tuple[int, ...]
    exclude: tuple[str, ...]
    finetune: Any
    score: Any
    config: LayerMergeConfig
    device: str = "cpu"
    analysis: Any = field(default=None, repr=False)
    bn_batches: int = 50                    # BN re-calibration: batches of the fine-tune split
    prefix: Any = field(default=None, repr=False)   # "bn-batch": the original's activations (importance.prefix)
    share_weights: bool = True              # a proxy that changes no weight or statistic ("bn-batch", "none") runs
                                            # on the original's own modules (False: on a copy of the network, the
                                            # cost bench/cheap_score_prefix.py measures)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "analysis": None, "prefix": None}

    def __call__(self, candidate: Candidate) -> float:
        from ..cnn.build import build_unmerged, single_block_plan
        from ..cnn.graph import analyze
        from ..train import evaluate, recalibrate_bn, train

        if self.analysis is None:
            self.analysis = analyze(self.original, self.input_shape, exclude=self.exclude)
        config, chain = self.config, self.analysis.chain
        torch.manual_seed(config.scoring_seed)
        proxy = Proxy(config.importance)
        shared = self.share_weights and proxy in (Proxy.BN_BATCH, Proxy.NONE)
        model = build_unmerged(self.analysis.gm, chain, single_block_plan(chain, candidate),
                               share_weights=shared).to(self.device)
        if proxy is Proxy.FINETUNE:
            train(model, self.finetune, steps=config.importance_steps, lr=config.importance_lr,
                  batch_size=config.importance_batch_size, progress=False, seed=config.scoring_seed,
                  amp=config.amp, channels_last=config.channels_last)
        elif proxy is Proxy.BN_RECALIBRATION:
            recalibrate_bn(model, self.finetune, batches=self.bn_batches)
        elif proxy is Proxy.BN_BATCH:
            # what the original computes before the candidate's block is computed once for all candidates
            if self.prefix is None:
                from .prefix import SharedPrefix

                self.prefix = SharedPrefix(self.analysis.gm, self.score, BN_BATCH_SIZE, self.device)
            return self.prefix.accuracy(model)
        return evaluate(model.eval(), self.score)


def score_candidates(original: nn.Module, analysis, candidates: list[Candidate], base_acc: float, splits,
                     config: LayerMergeConfig, store, exclude: tuple[str, ...] = ()) -> dict[str, float]:
    """I = exp(Δacc/100) per candidate (SPEC A6), cached per entry in ``store`` (resumable after a kill), on
    the configured executor (local, process pool, Ray). With ``config.shard`` only that shard's entries are
    computed and the table returned holds whatever the shared store has."""
    from . import get_executor, importance_table, score

    todo = [c for c in candidates if not is_trivial(c)]
    device = str(next(original.parameters()).device)
    scorer = CandidateAccuracy(original, tuple(analysis.input_shape), tuple(exclude), splits.finetune,
                               splits.score, config, device, analysis)
    executor = get_executor(config.executor, config.workers, config.ray_address)
    say(config, f"importance table: {len(todo)} candidates to score ({config.importance}, "
                f"{config.importance_steps} steps), {sum(c.key in store for c in todo)} already cached"
                + (f", shard {config.shard[0]}/{config.shard[1]}" if config.shard else "")
                + (f", on {executor!r}" if config.executor != "local" else ""))
    accs = importance_table(todo, scorer, store=store, progress=config.progress, metric_range=ACCURACY_RANGE,
                            executor=executor, shard=tuple(config.shard) if config.shard else None)
    scores = {c.key: 1.0 for c in candidates}        # exp(0): the original network itself
    for c in todo:
        if c.key in accs:
            scores[c.key] = score(accs[c.key], base_acc)
    return scores


# ----------------------------------------------------------------------- adaptive importance (issue 30) ---

CHEAP_PROXY = Proxy.BN_BATCH.value   # the cheap score: each batch of the scoring images normalised by its own
CHEAP_SCORE_SIZE = 128               # statistics, accuracy on the first 128 images of the scoring split (one
                                     # batch: on MobileNetV2 a third of 512 images' time, and the same
                                     # refinements and answers under every rule, bench/results/adaptive_rules*)
CHEAP_BN_BATCHES = 4                 # (with "bn-recalibration": statistics from 4 batches of 128 fine-tune images)


@dataclass
class AdaptiveImportance:
    """The adaptive importance stage's state (depthcut.importance.adaptive): every candidate's bounds, what
    it cost so far, and ``refine(candidates)``, which fine-tunes entries into the full table's own store."""

    bounds: Any
    stats: Any
    refine: Any
    cheap: dict[str, float] = field(default_factory=dict)   # each candidate's cheap score (accuracy, %)


def cheap_scores(original: nn.Module, analysis, candidates: list[Candidate], splits, config: LayerMergeConfig,
                 cache_dir, exclude: tuple[str, ...] = (), proxy: str = CHEAP_PROXY,
                 images: int = CHEAP_SCORE_SIZE) -> dict[str, float]:
    """Every non-trivial candidate's cheap score: its accuracy on the first ``images`` scoring images with
    ``proxy`` (no gradient step), in its own resumable store."""
    from dataclasses import replace

    from torch.utils.data import Subset, TensorDataset

    from ..data.datasets import _subset
    from . import get_executor, importance_store, importance_table

    todo = [c for c in candidates if not is_trivial(c)]
    n_cheap = min(images, len(splits.score))
    first = (_subset(splits.score, torch.arange(n_cheap)) if isinstance(splits.score, TensorDataset)
             else Subset(splits.score, range(n_cheap)))
    scorer = CandidateAccuracy(original, tuple(analysis.input_shape), tuple(exclude), splits.finetune, first,
                               replace(config, importance=proxy, importance_mode="full"),
                               str(next(original.parameters()).device), analysis, bn_batches=CHEAP_BN_BATCHES)
    how = {Proxy.BN_BATCH.value: {"batch_size": BN_BATCH_SIZE},
           Proxy.BN_RECALIBRATION.value: {"bn_batches": CHEAP_BN_BATCHES}}.get(proxy, {})
    manifest = {**importance_manifest(original, analysis, config), "proxy": proxy, "steps": 0,
                "score_images": n_cheap, **how}
    store = importance_store(manifest, cache_dir)
    say(config, f"adaptive importance: cheap scores ({proxy}, accuracy on {n_cheap} images) for {len(todo)} "
                f"candidates, {sum(c.key in store for c in todo)} already cached")
    return importance_table(todo, scorer, store=store, progress=config.progress, metric_range=ACCURACY_RANGE,
                            executor=get_executor(config.executor, config.workers, config.ray_address),
                            desc="importance (cheap)")


def adaptive_importance(original: nn.Module, analysis, candidates: list[Candidate], splits,
                        config: LayerMergeConfig, store, cache_dir, exclude: tuple[str, ...] = ()
                        ) -> AdaptiveImportance:
    """A cheap score for every non-trivial candidate (its own store), the full-recipe entry for a seeded
    random sample (the full table's store), and the bounds fitted on them; the frontier refines the rest on
    demand through ``refine``."""
    import time

    from . import get_executor, importance_table
    from .adaptive import Refinement, calibrate_bounds, sample_keys

    t0 = time.perf_counter()
    todo = [c for c in candidates if not is_trivial(c)]
    executor = get_executor(config.executor, config.workers, config.ray_address)
    full = CandidateAccuracy(original, tuple(analysis.input_shape), tuple(exclude), splits.finetune, splits.score,
                             config, str(next(original.parameters()).device), analysis)
    cheap = cheap_scores(original, analysis, candidates, splits, config, cache_dir, exclude)

    def refine(cands: list[Candidate]) -> dict[str, float]:
        return importance_table(cands, full, store=store, progress=config.progress, metric_range=ACCURACY_RANGE,
                                executor=executor, desc="importance (fine-tuned)")

    sampled = set(sample_keys([c.key for c in todo], config.scoring_seed))
    sample = [c for c in todo if c.key in sampled]
    say(config, f"adaptive importance: fine-tuning a random sample of {len(sample)} candidates to calibrate "
                f"the cheap scores ({sum(c.key in store for c in sample)} already cached)")
    bounds = calibrate_bounds(cheap, refine(sample))
    stats = Refinement(candidates=len(todo), sampled=len(sample), margin=bounds.margin,
                       seconds=time.perf_counter() - t0)
    say(config, f"adaptive importance: fine-tuned accuracy within +-{bounds.margin:.2f} points of the cheap "
                f"score's estimate (coverage {stats.coverage:.0%}); the rest is fine-tuned as the search needs it")
    return AdaptiveImportance(bounds, stats, refine, dict(cheap))
