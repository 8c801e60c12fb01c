"""``depthcut.compress`` and :class:`Compression`: the LayerMerge pipeline end to end, as named stages.

prepare (check every input) -> analyse -> latency rows (timed, per-call cost removed, dominated rows dropped)
-> importance -> search (one DP solve: the frontier) -> land on the measured target (probe plans with
confidence intervals, calibrate, stop inside the band) and verify against the intended function -> recover
(fine-tune the unmerged, padding-shifted network, optionally distilling from the original; merge; check
merged == unmerged) -> the final measurement -> export + report.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import log
from .cache import DEFAULT_CACHE_DIR
from .cnn.build import is_trivial   # a single-conv block keeping its conv: the original network
from .cnn.chain import Candidate, Plan
from .config import LayerMergeConfig, resolve_device
from .errors import InfeasibleBudgetError
from .models import ResolvedModel, resolve_model


@dataclass
class CompressResult:
    model: nn.Module | None           # merged, deployable network (None: a --shard run, importance only)
    unmerged: nn.Module | None        # the same function in its trainable, padding-shifted form
    plan: Plan | None
    report: dict[str, Any]
    frontier: list[tuple[float, float]] = field(default_factory=list)  # (modelled body ms, importance)
    example: torch.Tensor | None = field(default=None, repr=False)      # the input the ONNX export traces
    # the network the plan applies to, when it is not the original (depth and width: the width-pruned one)
    base: nn.Module | None = field(default=None, repr=False)
    # with ``quantize="int8"``: the deployed network quantized, as a QDQ ONNX file's bytes (model_int8.onnx)
    int8_onnx: bytes | None = field(default=None, repr=False)

    def save_pretrained(self, out: str | Path) -> Path:
        """Write the deployable result to ``out``: state dicts and plan (or the pruned module for the channel
        baseline), ``model.onnx``, ``report.json`` / ``report.md``; ``depthcut.report.load_compressed(out)``
        rebuilds it. ``compress(..., out=DIR)`` calls this."""
        from .report import write_joint_outputs, write_outputs, write_width_outputs

        out = Path(out)
        if self.int8_onnx is not None:
            from .cache import atomic_write_text

            atomic_write_text(out / "model_int8.onnx", self.int8_onnx)
            self.report["onnx_int8"] = "model_int8.onnx"
        example = self.example if self.example is not None else torch.randn(self.report["input_shape"])
        writer = (write_joint_outputs if self.base is not None else write_outputs if self.plan is not None
                  else write_width_outputs)
        writer(self, out, example)
        return out


def say(config: LayerMergeConfig, msg: str) -> None:
    """A line on depthcut's one logging channel (:mod:`depthcut.log`), unless ``config.progress`` is off."""
    log.say(msg, verb="compress", enabled=config.progress)


class Compression:
    """One model's compression as named stages, each computed once, on first use:

        inputs (checked, at construction) -> analysis -> rows (latency table and model) -> reachable
        -> importance -> frontier -> chosen (landed and confirmed) -> verified -> recovered -> final
        -> report -> result

    Long stages are cached on disk as well (latency rows, the latency model, importance entries: a rerun or
    a run resumed after a kill recomputes nothing finished). Asking for a stage computes what it needs:
    ``Compression(model, config).frontier`` scores the importance table and stops there, as ``compare`` and
    the benchmarks use it. The registered method decides which candidates the rows hold and how the frontier
    is searched (depthcut.methods); a method that rewrites the model instead (``channel``) runs its own
    stages through ``Method.compress``.
    """

    STAGES = ("analysis", "rows", "reachable", "importance", "frontier", "chosen", "verified", "recovered",
              "final", "report")

    def __init__(self, model: str | nn.Module, config: LayerMergeConfig | None = None, *,
                 out: str | Path | None = None, splits=None):
        """Stage 0: check every input before anything expensive; place a copy of the model on the device."""
        from .data import make_splits
        from .latency import get_backend
        from .latency.compare import Pace
        from .registry import get_method

        config = config or LayerMergeConfig()
        self.t_start = time.time()
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        resolved, input_shape, device, (policy, class_index, outputs) = prepare(model, config, out, splits)
        # the caller's model is never moved or changed: everything runs on a copy on the chosen device
        original = copy.deepcopy(resolved.model).to(device).eval()
        self.backend = get_backend(config.backend, device=device,
                                   memory_format="channels_last" if config.channels_last else "contiguous",
                                   **({"threads": config.timing_threads} if config.timing_threads else {}),
                                   **({"quantize": config.quantize} if config.quantize else {}))
        self.int8_onnx: bytes | None = None      # the deployed int8 file, once measured_fields has made it
        if splits is None:
            splits = make_splits(config.data, config.finetune_size, config.score_size, seed=config.scoring_seed,
                                 train_limit=config.train_limit, test_limit=config.test_limit,
                                 image_size=tuple(input_shape[2:]),
                                 preprocess=resolved.preprocess, workers=config.data_workers,
                                 class_index=class_index)
        if config.finetune_size is None or config.score_size is None:   # sized from the data: say so, key on it
            config = replace(config, finetune_size=len(splits.finetune), score_size=len(splits.score))
            say(config, f"held-out splits sized from the data: {config.finetune_size} images for the short "
                        f"fine-tunes, {config.score_size} for scoring")
        self.classes: dict[str, Any] = {"policy": policy, "model_outputs": outputs}
        if policy == "synsets":
            say(config, f"class folders named by ImageNet synsets: scored as the model's own classes {class_index}")
            self.classes["imagenet_indices"] = class_index
        elif policy == "adapt":
            self.classes["head"] = adapt_classifier(config, original, outputs, splits)
        self.config, self.resolved, self.original, self.input_shape = config, resolved, original, tuple(input_shape)
        self.device, self.splits, self.out = device, splits, out
        self.cache_dir = Path(config.cache_dir) if config.cache_dir else DEFAULT_CACHE_DIR
        self.example = torch.randn((config.batch_size,) + tuple(input_shape[1:]))   # every end-to-end timing's input
        self.fit = {"amp": config.amp, "channels_last": config.channels_last}       # every fine-tune's numerics
        self.method = get_method(config.method)
        self.teacher = original       # what recovery distils from (the joint method sets the unpruned original)
        self.pace = Pace()            # the original's pace over this run's probes: a slow phase is timed again

    def say(self, msg: str) -> None:
        say(self.config, msg)

    def use(self, **stages: Any) -> "Compression":
        """Stand in stages computed elsewhere (``rows=``, ``importance=``): the stages after them use these.
        The joint depth + width method gives each width's run the original width's importance table."""
        unknown = set(stages) - set(self.STAGES)
        if unknown:
            raise ValueError(f"not a stage of Compression: {', '.join(sorted(unknown))}")
        self.__dict__.update(stages)      # what a cached_property would have stored
        return self

    # -- the stages ------------------------------------------------------------------------------------
    @cached_property
    def analysis(self):
        return analyse(self)

    @cached_property
    def base_accuracy(self) -> float:
        """The original's accuracy on the scoring split (the importance scores' reference)."""
        from .train import evaluate

        return evaluate(self.original, self.splits.score)

    @cached_property
    def rows(self) -> "LatencyRows":
        return latency_rows(self)

    @cached_property
    def reachable(self):
        return check_reachable(self, self.rows)

    @cached_property
    def importance(self):
        """Every candidate's importance (the full table), or with ``importance_mode="adaptive"`` the adaptive
        stage's bounds, which the frontier refines as the search needs (depthcut.importance.adaptive)."""
        from .importance.scorer import adaptive_importance, score_candidates

        self.reachable                                      # an unreachable target stops before the table
        if self.config.importance_mode == "adaptive":
            return adaptive_importance(self.original, self.analysis, self.rows.candidates, self.splits, self.config,
                                       self.rows.importance_store, self.cache_dir, self.resolved.chain_exclude)
        return score_candidates(self.original, self.analysis, self.rows.candidates, self.base_accuracy,
                                self.splits, self.config, self.rows.importance_store, self.resolved.chain_exclude)

    @cached_property
    def frontier(self):
        if self.config.importance_mode == "adaptive":
            return adaptive_search(self, self.rows, self.importance)
        return search(self, self.rows, self.importance)

    @cached_property
    def chosen(self) -> "Chosen":
        return land(self, self.rows, self.frontier)

    @cached_property
    def verified(self) -> dict[str, float]:
        from .cnn.intended import verify_for_deployment

        verified = verify_for_deployment(self.original, self.analysis, self.chosen.plan, self.input_shape)
        self.say(f"plan verified against the intended function: relative error {verified['structure']:.1e} "
                 f"(float64 rewrite), {verified['deployed']:.1e} (deployed {next(self.original.parameters()).dtype}; "
                 f"allowed {verified['allowed']:.1e}: its own float32 error is {verified['control']:.1e}); "
                 f"{verified['borders']:.1e} from the original padding at the borders")
        return verified

    @cached_property
    def recovered(self) -> tuple[nn.Module, nn.Module, dict[str, float]]:
        """(unmerged, merged, merge check): recovery runs on a verified plan only."""
        self.verified
        return recover(self, self.chosen.plan)

    @cached_property
    def final(self):
        return measure_final(self, self.recovered[1])

    @cached_property
    def report(self) -> dict[str, Any]:
        return make_report(self, self.rows, self.chosen, self.verified, self.recovered[1], self.recovered[2],
                           self.final)

    def result(self) -> CompressResult:
        """Every stage, as the deployable result."""
        unmerged, merged, _ = self.recovered
        result = CompressResult(merged, unmerged, self.chosen.plan, self.report,
                                [(s.latency_ms, s.importance) for s in self.frontier.pareto()], self.example,
                                int8_onnx=self.int8_onnx)
        r = self.report
        self.say(f"done in {r['seconds']:.0f} s: x{r['speedup']:.2f} [{r['speedup_low']:.2f}, "
                 f"{r['speedup_high']:.2f}] measured on {self.config.backend}, accuracy "
                 f"{r['accuracy_before']:.2f} -> {r['accuracy_after']:.2f}")
        return result


def compress(model: str | nn.Module, config: LayerMergeConfig | None = None, *,
             out: str | Path | None = None, splits=None) -> CompressResult:
    """Make ``model`` faster by ``config.speedup`` (or down to ``config.latency_ms``) on ``config.backend``.

    ``model`` is an nn.Module or a spec understood by :func:`depthcut.models.resolve_model`. ``splits`` may
    pass pre-built :class:`depthcut.data.DataSplits` (tests do); otherwise ``config.data`` is loaded.
    When ``out`` is given, the merged state dict, plan, ONNX file and reports are written there.
    The stages are those of :class:`Compression`; the method runs them (``Method.compress``).
    """
    compression = Compression(model, config, out=out, splits=splits)
    return compression.method.compress(compression, out)


def adapt_classifier(config: LayerMergeConfig, original: nn.Module, outputs: int, splits) -> dict[str, Any]:
    """A new head for the data's classes, trained alone (depthcut.train.head); the adapted network is the
    original from here on: compressed, timed and compared against."""
    from .train.head import adapt_head

    classes = _num_classes(splits)
    say(config, f"adapting the head: {outputs} outputs -> the data's {classes} classes, trained alone for "
                f"{config.adapt_epochs} epochs")
    adapted = adapt_head(original, outputs, classes, splits.train, splits.score, epochs=config.adapt_epochs,
                         seed=config.seed, progress=config.progress)
    say(config, f"head {adapted.module} adapted: {adapted.accuracy:.2f} % on the scoring split")
    return adapted.to_dict()


# -- stage 1: analysis ----------------------------------------------------------------------------------
def analyse(run: "Compression"):
    from .cnn.graph import analyze

    run.say(f"analysing {run.resolved.name} at input {run.input_shape}")
    analysis = analyze(run.original, run.input_shape, exclude=run.resolved.chain_exclude)
    run.say(f"chain: L={analysis.chain.length} positions, {len(analysis.blocks)} blocks, "
            f"{len(analysis.candidates)} candidates")
    return analysis


# -- stage 1b: a shard of the importance table (machines sharing a cache folder) ------------------------
def score_shard(run: "Compression", out=None) -> CompressResult:
    """Compute shard i of n of the importance entries into the shared cache and stop. Every candidate the
    method can use is scored (the latency rows that drop dominated ones belong to the deployment machine, not
    to this one), so the shards together cover whatever the final run needs."""
    from .importance import importance_store
    from .importance.scorer import importance_manifest, score_candidates
    from .registry import get_method

    config, analysis = run.config, run.analysis
    store = importance_store(importance_manifest(run.original, analysis, config), run.cache_dir)
    usable = [c for c in get_method(config.method).candidates(analysis.candidates, analysis.chain)
              if not is_trivial(c)]
    before = sum(c.key in store for c in usable)
    score_candidates(run.original, analysis, usable, run.base_accuracy, run.splits, config, store,
                     run.resolved.chain_exclude)
    present = sum(c.key in store for c in usable)
    report = {"shard": list(config.shard), "computed": present - before, "entries_present": present,
              "entries_needed": len(usable), "store": str(store.dir), "model": run.resolved.name,
              "config": config.to_dict(), "seconds": time.time() - run.t_start}
    run.say(f"shard {config.shard[0]}/{config.shard[1]} done: {present} of {len(usable)} entries in {store.dir}")
    if out is not None:
        from .cache import atomic_write_json

        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(out) / "shard_report.json", report)
    return CompressResult(None, None, None, report)


# -- stage 2: latency rows (SPEC A5) ----------------------------------------------------------------------
@dataclass
class LatencyRows:
    candidates: list[Candidate]       # the candidates left after dominated ones are dropped
    dominated: list[Any]
    latency_ms: dict[str, float]      # what the DP sees per candidate (in-network cost)
    model: Any                        # depthcut.latency.model.LatencyModel: rows -> DP costs, plans -> speed-ups
    importance_store: Any

    def body_ms(self) -> float:
        """The original network's body in the model: every block its own conv."""
        return sum(self.latency_ms[c.key] for c in self.candidates if is_trivial(c))


def latency_rows(run: "Compression") -> LatencyRows:
    """Time every candidate's merged conv (cached, resumable), fit the latency model on whole networks, and
    drop candidates no plan could ever pick before they are built in full or scored."""
    from .importance import check_entries, importance_store
    from .importance.scorer import ACCURACY_RANGE, importance_manifest
    from .latency import latency_table, original_spec
    from .latency.dominance import max_accuracy_importance, measure_bandwidth, prune_dominated
    from .registry import get_method

    config, analysis = run.config, run.analysis
    store = importance_store(importance_manifest(run.original, analysis, config), run.cache_dir)
    check_entries(store, ACCURACY_RANGE)   # damaged cache files fail before any timing
    run.say(f"latency table on {config.backend} (batch {config.batch_size})")

    # the original network, timed in the table's passes: the latency model's anchor at the table's pace
    reference = original_spec(run.original, tuple(run.example.shape))

    def time_rows(rows: list[Candidate], refresh: bool = False):
        return latency_table(rows, run.backend, batch_size=config.batch_size, cache_dir=run.cache_dir,
                             progress=config.progress, refresh=refresh, extra=[reference])

    # the largest importance any candidate can score follows from the original's accuracy
    usable = get_method(config.method).candidates(analysis.candidates, analysis.chain)
    run.say(f"method {config.method}: {len(usable)} of {len(analysis.candidates)} candidates usable")
    prune = partial(prune_dominated, time_rows=time_rows, max_importance=max_accuracy_importance(run.base_accuracy),
                    steps=config.dp_steps, batch_size=config.batch_size,
                    bandwidth=measure_bandwidth(run.device, megabytes=64))
    # the rows as timed first: a merge dominated there is dominated under any per-call correction (the
    # correction only favours fewer calls), so the model is fitted on candidates that can matter
    candidates, dominated, timed_ms = prune(usable)
    model = latency_model(run, candidates, timed_ms, time_rows,
                          original_ms=lambda: time_rows([])[reference.key].median_ms)
    if model.attempts > 1:      # the calibration re-timed the table: read what it measured
        retimed = time_rows(candidates)
        timed_ms = {c.key: retimed[c.key].median_ms for c in candidates}
    if model.kind == "per-call":
        candidates, more, _ = prune(candidates, in_network=model.row_ms)
        dominated += more
    latency_ms = {c.key: model.row_ms(c, timed_ms[c.key]) for c in candidates}
    if dominated:
        run.say(f"{len(dominated)} dominated candidates dropped (slower than the original convs they "
                f"replace), {len(candidates)} left")
    return LatencyRows(candidates, dominated, latency_ms, model, store)


def latency_model(run: "Compression", candidates: list[Candidate], timed_ms: dict[str, float], time_rows,
                  original_ms=None):
    """The config's latency model: the rows as timed ("additive"), or calibrated on whole networks
    ("per-call", depthcut.latency.model; "auto": the same, else the additive model), cached next to the rows so
    that the same caches give the same plan. ``time_rows(rows, refresh=True)`` times the table again when the
    calibration's sanity checks fail; ``original_ms()`` is the original as timed with the table (the anchor).

    "auto" falls back rather than refusing because a per-call model its networks contradict is frequent, and not
    repeatable, on a shared machine (MobileNetV2's widths in the joint method: uniform-0.25 held at x2.0 in one
    run and missed by -23 % in the next; OpenVINO int8 MobileNetV2 missed its fastest network by +27 %). The model
    only sets the budget a plan is chosen at: the landing's measured probes correct a poor one, at the cost of
    probes, never of a wrong speed-up. The report names the fallback and its reason."""
    from .cache import fingerprint
    from .cnn.build import is_trivial
    from .errors import CacheError
    from .latency import latency_store
    from .latency.model import (CHECKED_SPEEDUP, additive, calibrate, network_timer, problems, LatencyModel,
                                LatencyModelError)

    config = run.config
    if config.latency_model == "additive":
        return additive(config.batch_size)
    if all(is_trivial(c) for c in candidates):
        # nothing left to merge (DepthShrinker on ResNet-20: every merged block is slower than its convs): the
        # only plan is the original's convs, which one network cannot calibrate a per-call model on; the
        # reachability check that follows refuses any target beyond it, in one line
        run.say("no candidate merges anything faster than the convs it replaces: the original's convs are the only plan")
        return additive(config.batch_size)
    # the fit is checked on the calibration networks as fast as the target, with room for the landing to probe
    # beyond it (a latency target is not a ratio yet here: every network is checked)
    checked = max(CHECKED_SPEEDUP, 1.25 * config.speedup) if config.speedup else None
    store = latency_store(run.backend, config.batch_size, run.cache_dir)
    # "rows": models fitted on median-pass rows (before 2026-12-07) are not reused on fastest-pass rows;
    # "terms": nor models without the weights term (before 2026-12-08); "samples": nor models calibrated on
    # networks timed cold in their joint rounds (before compare.WARM_CALLS); "plans": nor models calibrated
    # without the random-worth plans (model.RANDOM_SERIES, before 2026-12-07)
    key = "latency-model:" + fingerprint({"network": repr(run.original), "input": list(run.input_shape),
                                          "candidates": sorted(c.key for c in candidates), "rows": "fastest pass",
                                          "terms": "calls, bytes, weights", "samples": "warm",
                                          "plans": "random series"})
    if key in store:
        try:
            model = LatencyModel.from_dict(store[key])
        except (KeyError, TypeError, ValueError):
            raise CacheError(f"cache file {store.path(key)} does not hold a latency model; delete it to "
                             f"recompute") from None
        if model.fallback and config.latency_model == "per-call":    # a strict run refuses what auto fell back on
            raise LatencyModelError(f"{model.fallback} (cached in {store.path(key)}; delete it to calibrate again)")
        if model.kind != "per-call" or not problems(model, checked):
            return model
        # a model checked for nearer targets than this one asks: calibrated again, checked up to this target
        run.say(f"the cached latency model was checked on networks up to x{model.checked_speedup:g} faster than its "
                f"identity network, this target needs {f'x{checked:g}' if checked else 'every network'}: "
                f"calibrating again")
    run.say(f"calibrating the per-call latency model on whole networks ({config.backend})")
    def retime_rows() -> dict[str, float]:
        return {k: t.median_ms for k, t in time_rows(candidates, refresh=True).items()}

    try:
        model = calibrate({c.key: (c, timed_ms[c.key]) for c in candidates}, run.analysis.chain.length,
                          batch_size=config.batch_size, say=run.say, retime_rows=retime_rows, original_ms=original_ms,
                          checked_speedup=checked,
                          time_networks=network_timer(run.analysis, run.backend, run.example, run.original,
                                                      sessions=config.timing_sessions))
    except LatencyModelError as e:
        if config.latency_model != "auto":
            raise
        run.say(f"the per-call latency model did not hold ({e}); the additive model instead: the landing's "
                f"measured probes correct it")
        model = additive(config.batch_size, fallback=str(e))
        model.attempts = 2                  # the calibration re-timed the table: the caller reads it again
    else:
        run.say(f"per-call cost {1e3 * model.call_ms:.1f} us (leave-one-out {1e3 * model.call_ms_range[0]:.1f}-"
                f"{1e3 * model.call_ms_range[1]:.1f}) + {1e9 * model.call_ms_per_byte:.1f} us/MB; "
                f"{1e9 * model.weight_ms_per_byte:.1f} us/MB of weights; outside the "
                f"body {model.other_ms:.3f} ms; largest error on its {len(model.calibration)} networks "
                f"{model.self_error:.1%}; " + (f"networks timed at x{model.calibration_pace:.2f} the table's pace"
                                               if model.anchor == "table" else "anchored on the networks' own timing"))
    store[key] = model.to_dict()
    return model


# -- stage 4: search (SPEC A7) ----------------------------------------------------------------------------
def search(run: "Compression", rows: LatencyRows, importance: dict[str, float]):
    """The method's search over the table (the LayerMerge DP: one solve, the whole frontier)."""
    from .registry import get_method
    from .search.tables import Row

    table = [Row(c.start, c.end, rows.latency_ms[c.key], importance[c.key], ref=c) for c in rows.candidates]
    return get_method(run.config.method).search(table, run.analysis.chain.length, run.config.dp_steps,
                                                rows.body_ms(), chain=run.analysis.chain)


# -- stage 5: land on the measured target -----------------------------------------------------------------
def adaptive_search(run: "Compression", rows: LatencyRows, adaptive):
    """The method's search with adaptive importance: an :class:`~depthcut.importance.adaptive.AdaptiveFrontier`
    that fine-tunes the entries each asked budget's answer depends on (``adaptive_tolerance`` points may be
    given away to stop earlier)."""
    from .importance import score
    from .importance.adaptive import AdaptiveFrontier
    from .registry import get_method
    from .search.tables import Row

    method, chain = get_method(run.config.method), run.analysis.chain
    table = [Row(c.start, c.end, rows.latency_ms[c.key], 1.0, ref=c) for c in rows.candidates]

    def solve(scored: list[Row]):
        return method.search(scored, chain.length, run.config.dp_steps, rows.body_ms(), chain=chain)
    return AdaptiveFrontier(table, solve, adaptive.bounds, lambda acc: score(acc, run.base_accuracy),
                            adaptive.refine, tolerance=run.config.adaptive_tolerance / 100, stats=adaptive.stats,
                            say=run.say)


def original_ms(run: "Compression") -> float:
    """The original's end-to-end latency (converts a latency target into a speed-up; seeds the model)."""
    from .latency import time_models

    return time_models({"original": run.original}, run.example, run.backend,
                       rounds=10, repeats=10)["original"].median_ms


RETIME_ROUNDS = 4                     # a retimed probe may run this many times the usual rounds


def probe_speed(run: "Compression", candidate: nn.Module, decided, patience: int = 1):
    """One probe: ``candidate`` against the original in paired rounds, stopping once the answer is clear
    (``patience`` times the usual rounds at most: a retime of an undecided probe, depthcut.search.target),
    timed again if the original ran slow in it (the run's pace, depthcut.latency.compare.Pace)."""
    from .latency.compare import compare_speed

    sessions = run.config.timing_sessions
    return run.pace.steady(lambda: compare_speed(
        run.original, candidate, run.example, run.backend, repeats=5, min_rounds=max(10, 3 * sessions),
        max_rounds=patience * max(run.config.timing_rounds, 3 * sessions), rel_width=0.02, decided=decided,
        sessions=sessions), say=run.say)


def target_speedup(run: "Compression", base_ms: float) -> float:
    c = run.config
    return c.speedup if not c.latency_ms else base_ms / c.latency_ms


@dataclass
class Chosen:
    plan: Plan
    modelled_ms: float                # the plan's modelled body latency
    target: float                     # the speed-up landed on (a latency target converted at the start)
    landing: Any                      # depthcut.search.target.Landing: every probe
    confirmation: Any = None          # the chosen plan timed again, alone, on fresh sessions
    relandings: int = 0               # landings redone because a confirmation contradicted its probe


def build_plan_network(run: "Compression", blocks) -> nn.Module:
    """The merged network of a plan given as its blocks (candidates), as every probe builds it."""
    from .cnn.build import build_merged, build_unmerged, plan_from_blocks

    chain = run.analysis.chain
    plan = plan_from_blocks(chain, list(blocks))
    return build_merged(build_unmerged(run.analysis.gm, chain, plan).eval(), chain, plan).eval()


def fastest_plan(run: "Compression", rows: LatencyRows):
    """The plan of least modelled latency the table allows (a DP solution; no importance needed)."""
    from .search.layermerge import solve
    from .search.tables import Row

    table = [Row(c.start, c.end, rows.latency_ms[c.key], 1.0, ref=c) for c in rows.candidates]
    return solve(table, run.analysis.chain.length, max_latency_ms=max(rows.body_ms(), 1e-9)).min_solution


def check_reachable(run: "Compression", rows: LatencyRows) -> Any:
    """Before the importance table: the fastest plan the latency table allows (no importance needed: the
    exact minimum-latency path) timed against the original. A target beyond it is refused at once, with the
    reachable maximum, instead of after the table's hours (Amdahl: what the table does not model stays)."""
    base_ms = original_ms(run)
    target = target_speedup(run, base_ms)
    fastest = fastest_plan(run, rows)
    estimate = probe_speed(run, build_plan_network(run, [r.ref for r in fastest.rows]),
                           decided=lambda e: e.high < target or e.low >= target)
    run.say(f"the fastest plan the table allows measures {estimate.describe()} (target x{target:.3f})")
    if estimate.high < target:
        modelled = rows.model.network_ms(rows.body_ms()) if rows.model.kind == "per-call" else base_ms
        raise InfeasibleBudgetError(
            f"x{target:.3f} is out of reach for {run.resolved.name} on {run.config.backend} (batch "
            f"{run.config.batch_size}): the fastest plan the latency table allows measures {estimate.describe()} "
            f"against the original's {base_ms:.3f} ms, of which the blocks depthcut can merge take "
            f"{rows.body_ms():.3f} ms in the model ({modelled:.3f} ms in all), the rest stays; ask for at most "
            f"x{estimate.high:.2f}", minimum=estimate.compressed_ms)
    return estimate


MAX_RELANDINGS = 2    # landings redone after a contradicting confirmation, before stopping


def land(run: "Compression", rows: LatencyRows, frontier) -> Chosen:
    """Probe plans end to end until one measures inside [target, target * (1 + tolerance)]
    (depthcut.search.target), then time the chosen plan again on fresh sessions: a confirmation whose
    interval misses the target contradicts the probe that accepted the plan, so the landing is redone with the
    confirmation standing for that plan; if that keeps happening, stop with one line."""
    config = run.config
    base_ms = original_ms(run)
    target = target_speedup(run, base_ms)
    known: dict = {}
    for attempt in range(MAX_RELANDINGS + 1):
        landing = land_once(run, rows, frontier, base_ms, target, known)
        network = build_plan_network(run, [r.ref for r in landing.plan.rows])
        confirmation = probe_speed(run, network, decided=None)
        accepted = landing.probe.estimate
        disjoint = confirmation.high < accepted.low or confirmation.low > accepted.high
        if confirmation.high >= target and not disjoint:
            run.say(f"confirmed: {confirmation.describe()} (the probe measured {accepted.describe()})")
            return Chosen(network_plan(run, landing), landing.probe.modelled, target, landing, confirmation,
                          attempt)
        key = tuple(r.ref.key for r in landing.plan.rows)
        known[key] = confirmation
        run.say(f"the confirmation {confirmation.describe()} contradicts the probe that accepted the plan "
                f"({accepted.describe()}): landing again with the confirmation standing for that plan")
    raise InfeasibleBudgetError(
        f"the timings on {config.backend} do not hold still enough to land on x{target:.3f}: {MAX_RELANDINGS + 1} "
        f"plans measured at or above it in one timing and below it when timed again (last: {accepted.describe()}, "
        f"then {confirmation.describe()}); time on a quieter machine, or with --timing-threads 1 or more "
        f"--timing-sessions", minimum=confirmation.compressed_ms)


def network_plan(run: "Compression", landing) -> Plan:
    from .cnn.build import plan_from_blocks

    return plan_from_blocks(run.analysis.chain, [r.ref for r in landing.plan.rows])


def land_once(run: "Compression", rows: LatencyRows, frontier, base_ms: float, target: float, known: dict):
    from .search.target import land_on_target

    config = run.config
    full = rows.body_ms()

    def choose(budget: float):
        solution = frontier.best(budget)
        return tuple(r.ref.key for r in solution.rows), solution.latency_ms, solution

    def measure(solution, decided, patience: int = 1):
        return probe_speed(run, build_plan_network(run, [r.ref for r in solution.rows]), decided, patience)

    run.say(f"landing on x{target:.3f} (band up to x{target * (1 + config.speed_tolerance):.3f}); original "
            f"{base_ms:.3f} ms, modelled body {full:.3f} ms")
    model = rows.model
    # the calibrated model knows the time outside the body; the plain sum takes it from the measured original
    other, factor = (model.other_ms, model.original_over_model(full)) if model.kind == "per-call" else (base_ms - full, 1.0)
    try:
        landing = land_on_target(choose, measure, target=target, full=full, floor=frontier.min_latency_ms,
                                 other=other, original_factor=factor, max_probes=config.max_resolves,
                                 tolerance=config.speed_tolerance, say=run.say, known=known,
                                 retime=lambda solution, decided: measure(solution, decided, RETIME_ROUNDS))
    except InfeasibleBudgetError as e:
        raise InfeasibleBudgetError(
            f"{e} end to end on {config.backend} (batch {config.batch_size}; target {base_ms / target:.3f} ms); "
            f"ask for a smaller speed-up or a larger latency", minimum=e.minimum) from None
    if landing.overshoot:
        run.say(f"no probed plan landed inside the band; taking the slowest one that meets the target "
                f"({landing.probe.estimate.describe()})")
    return landing


# -- stage 6: recovery (SPEC A10) -------------------------------------------------------------------------
def recover(run: "Compression", plan: Plan) -> tuple[nn.Module, nn.Module, dict[str, float]]:
    """Fine-tune the unmerged form (exactly the deployed function), merge, and check the merge."""
    from .cnn.build import build_merged, build_unmerged
    from .cnn.intended import VerificationError, allowed_error, float32_control, relative_error
    from .train.distributed import distributed_train

    config = run.config
    run.say(f"recovery fine-tune: {config.recovery_epochs} epochs"
            + (f", distilling from the original (kd weight {config.kd_weight})" if config.distill else "")
            + (f", data-parallel over {config.recovery_procs} processes" if config.recovery_procs > 1 else ""))
    unmerged = build_unmerged(run.analysis.gm, run.analysis.chain, plan)
    distributed_train(unmerged, run.splits.train, config.recovery_procs, epochs=config.recovery_epochs,
                      lr=config.recovery_lr, batch_size=config.recovery_batch_size,
                      teacher=run.teacher if config.distill else None, kd_weight=config.kd_weight,
                      progress=config.progress, seed=config.seed, **run.fit)
    unmerged.eval()
    merged = build_merged(unmerged, run.analysis.chain, plan).eval()
    merge_error = relative_error(unmerged, merged, torch.randn((4,) + tuple(run.input_shape[1:])))
    # the fine-tuned unmerged form is now the intended function; judged like the deployed network before it
    control = float32_control(unmerged, run.input_shape)
    allowed = allowed_error(unmerged, control)
    if not merge_error <= allowed:
        raise VerificationError(f"the merged network differs from its fine-tuned unmerged form (relative error "
                                f"{merge_error:.2e} in float64, above the {allowed:.1e} that float32 rounding "
                                f"explains: its own float32 error is {control:.1e}); this is a depthcut bug, "
                                f"please report it")
    return unmerged, merged, {"error": merge_error, "control": control, "allowed": allowed}


def recovery_fine_tune(run: "Compression", model: nn.Module, progress: bool = False) -> nn.Module:
    """``model`` (a rewrite of the original: channel-pruned, or the original itself as a control) fine-tuned in
    place with the run's recovery recipe, distilling from the original; returned in eval mode."""
    from .train import train

    config = run.config
    train(model, run.splits.train, epochs=config.recovery_epochs, lr=config.recovery_lr,
          batch_size=config.recovery_batch_size, teacher=run.original if config.distill else None,
          kd_weight=config.kd_weight, progress=progress, seed=config.seed, **run.fit)
    return model.eval()


# -- stage 7: the final, independent measurement ----------------------------------------------------------
def final_timing(config: LayerMergeConfig) -> dict[str, Any]:
    """How the final timing is taken (``compare_speed`` keywords; bench/timing_stability.py times it too)."""
    sessions = config.timing_sessions
    return {"repeats": 5, "min_rounds": max(20, 5 * sessions),
            "max_rounds": max(20, 5 * sessions, config.timing_rounds), "rel_width": 0.02, "sessions": sessions}


def measure_final(run: "Compression", merged: nn.Module):
    from .latency.compare import compare_speed

    return compare_speed(run.original, merged, run.example, run.backend, **final_timing(run.config))


def predicted_speedup(rows: LatencyRows, modelled_body_ms: float, original_ms: float) -> float:
    """What the latency model predicts for a plan of ``modelled_body_ms`` (the plain sum: with the time outside
    the body taken from the measured original)."""
    full = rows.body_ms()
    if rows.model.kind == "per-call":
        return rows.model.predicted_speedup(modelled_body_ms, full)
    other = original_ms - full
    return original_ms / (other + modelled_body_ms)


# -- stage 8: report --------------------------------------------------------------------------------------
def measured_fields(run: "Compression", final, deployed: nn.Module) -> dict[str, Any]:
    """What every method's report states alike: the final timing, and accuracy, parameters, MACs, convs and
    activations of the original and the deployed network."""
    from .cnn.build import count_layers
    from .train import evaluate

    acc_before, acc_after = evaluate(run.original, run.splits.test), evaluate(deployed, run.splits.test)
    before, after = count_layers(run.original, run.input_shape), count_layers(deployed, run.input_shape)
    int8 = {"int8": int8_fields(run, deployed)} if run.config.quantize else {}
    return {**int8, "latency_ms_before": final.original_ms, "latency_ms_after": final.compressed_ms,
            "speedup": final.ratio, "speedup_low": final.low, "speedup_high": final.high,
            "timing_rounds": final.rounds, "timing_outlier_rounds": final.outlier_rounds,
            "timing_sessions": final.sessions, "timing_session_ratios": list(final.session_ratios),
            "accuracy_before": acc_before, "accuracy_after": acc_after, "accuracy_drop": acc_before - acc_after,
            "test_images": len(run.splits.test), "test_limit": run.config.test_limit,
            **{f"{k}_before": before[k] for k in ("params", "macs", "convs", "activations")},
            **{f"{k}_after": after[k] for k in ("params", "macs", "convs", "activations")}}


def int8_fields(run: "Compression", deployed: nn.Module) -> dict[str, Any]:
    """int8 deployment (``quantize="int8"``): the original and the deployed network - the latter checked
    against its intended function in float before this - quantized on the same images of the scoring split,
    their accuracy on the test split run by the backend's runtime, how each follows its float network, and the
    four networks (float and int8, original and deployed) timed in the same rounds against the float original.
    The deployed file is kept for ``save_pretrained`` (``run.int8_onnx``)."""
    from .latency.compare import compare_many, interleaved_sessions, with_drift
    from .latency.quantize import Int8Deployment, agreement, calibration_batches, quantizer

    batches = calibration_batches(run.splits.score)
    run.say(f"int8: quantizing the original and the deployed network on {sum(map(len, batches))} images of "
            f"the scoring split")
    networks = {"original": copy.deepcopy(run.original).cpu().eval(), "deployed": copy.deepcopy(deployed).cpu().eval()}
    files = Int8Deployment(networks, run.example, batches)
    run.int8_onnx = files.files["deployed"].read_bytes()
    follows = {name: agreement(networks[name], run.backend.predictor(files.files[name]), run.splits.test)
               for name in networks}
    sessions = run.config.timing_sessions
    # each file as it is (the backend quantizes modules, never files), its batch fixed to the timing input's
    runners = interleaved_sessions(run.backend, {f"{kind} {name}": files.fixed(name, kind, run.example.shape[0])
                                                 for name in networks for kind in ("float", "int8")},
                                   run.example, sessions)
    run.say("int8: timing the float and int8 networks in the same rounds")
    timed = compare_many(runners, reference="float original", rounds=max(20, 5 * sessions))
    timed = {name: with_drift(e, run.backend.drift()) for name, e in timed.items()}
    return {"quantizer": quantizer(), "calibration_images": files.calibration_images,
            "accuracy_float_before": follows["original"]["accuracy_float"],
            "accuracy_float_after": follows["deployed"]["accuracy_float"],
            "accuracy_int8_before": follows["original"]["accuracy_int8"],
            "accuracy_int8_after": follows["deployed"]["accuracy_int8"],
            "top1_agreement_before": follows["original"]["top1_agreement"],
            "top1_agreement_after": follows["deployed"]["top1_agreement"],
            "relative_error_before": follows["original"]["relative_error"],
            "relative_error_after": follows["deployed"]["relative_error"],
            # against the float original, one joint timing; int8 deployed over int8 original is their quotient
            "speedups_over_float_original": {name: e.to_dict() for name, e in timed.items()},
            "speedup_int8_over_int8_original": timed["int8 deployed"].ratio / timed["int8 original"].ratio}


def _verification_fields(verified: dict[str, Any], merge_check: dict[str, Any]) -> dict[str, Any]:
    """The merge's and the built network's errors against the intended function, with their allowances."""
    return {"merge_relative_error": merge_check["error"], "merge_float32_control": merge_check["control"],
            "merge_error_allowed": merge_check["allowed"],
            "intended_relative_error": verified["deployed"], "intended_float32_control": verified["control"],
            "intended_error_allowed": verified["allowed"], "border_relative_error": verified["borders"],
            "intended_structure_error": verified["structure"]}


def _probe_fields(rows: LatencyRows, chosen: Chosen, final) -> dict[str, Any]:
    """Every landing probe with the latency model's prediction and error on it, and the largest error. Each
    probe names its plan's blocks, so that any probed plan can be rebuilt and timed again (e.g. next to other
    methods' networks in one joint timing)."""
    probes = chosen.landing.probes
    predictions = [predicted_speedup(rows, p.modelled, final.original_ms) for p in probes]
    return {"probes": [p.to_dict() | {"blocks": [r.ref.key for r in p.plan.rows], "predicted": predicted,
                                      "model_error": predicted / p.estimate.ratio - 1}
                       for p, predicted in zip(probes, predictions)],
            "model_error_largest": max((abs(v / p.estimate.ratio - 1) for p, v in zip(probes, predictions)),
                                       default=0.0)}


def make_report(run: "Compression", rows: LatencyRows, chosen: Chosen, verified, merged, merge_check, final
                ) -> dict[str, Any]:
    from .latency.backends import math_mode

    config, chain, analysis, plan = run.config, run.analysis.chain, run.analysis, chosen.plan
    target_ms = config.latency_ms if config.latency_ms else final.original_ms / config.speedup
    plan.meta.update({"model": run.resolved.name, "input_shape": list(run.input_shape), "backend": config.backend,
                      "exclude": list(run.resolved.chain_exclude)})
    upper = chosen.target * (1 + config.speed_tolerance)
    described = run.backend.describe()
    return {
        "model": run.resolved.name, "data": config.data, "backend": config.backend, "device": str(run.device),
        "device_name": described["device"], "timing_threads": described["threads"],
        "math_mode": math_mode(run.device),
        "compile": run.backend.compile_summary() if hasattr(run.backend, "compile_summary") else None,
        "batch_size": config.batch_size, "input_shape": list(run.input_shape),
        "data_preprocess": (run.splits.train.preprocess.to_dict() if hasattr(run.splits.train, "preprocess")
                            else "built-in data set: its own normalisation, in memory"),
        "classes": run.classes,
        "target_speedup": config.speedup, "target_latency_ms": target_ms,
        "target_speedup_effective": chosen.target, "speed_tolerance": config.speed_tolerance,
        **measured_fields(run, final, merged),
        # met: the final point estimate reaches the target; the probe that chose the plan had its whole 95%
        # interval at or above it
        "target_met": (final.compressed_ms <= target_ms if config.latency_ms else final.ratio >= chosen.target),
        "within_band": final.ratio <= upper, "landing_overshoot": chosen.landing.overshoot,
        # the fastest plan timed alone before the DP, and what the latency model predicted for it
        "reachable": run.reachable.to_dict(),
        "reachable_predicted": predicted_speedup(rows, fastest_plan(run, rows).latency_ms, final.original_ms),
        "confirmation": chosen.confirmation.to_dict() if chosen.confirmation is not None else None,
        "relandings": chosen.relandings,
        # the final timing (after recovery, same structure) inside the interval of the probe that accepted it
        "final_inside_probe_interval": chosen.landing.probe.estimate.low <= final.ratio
                                       <= chosen.landing.probe.estimate.high,
        "importance_base_accuracy": run.base_accuracy,
        "importance_mode": config.importance_mode,
        # the adaptive stage's cost: entries fine-tuned (sample + refinements), cheap only, margin, seconds
        **({"importance_adaptive": run.importance.stats.to_dict()} if config.importance_mode == "adaptive" else {}),
        **_verification_fields(verified, merge_check),
        "positions": chain.length, "blocks_valid": len(analysis.blocks), "candidates": len(analysis.candidates),
        "candidates_dominated": len(rows.dominated),
        "dominated": [d.to_dict() for d in rows.dominated],
        "method": config.method, "latency_model": config.latency_model,
        **({"latency_model_fallback": rows.model.fallback} if rows.model.fallback else {}),
        "call_overhead_ms": rows.model.call_ms, "call_overhead_ms_per_mb": rows.model.call_ms_per_byte * 2**20,
        "latency_model_fit": rows.model.to_dict(),
        "plan_blocks": [_block_row(c, chain) for c in plan.blocks],
        **_probe_fields(rows, chosen, final),
        "chosen_modelled_body_ms": chosen.modelled_ms,
        "modelled_body_ms_identity": rows.body_ms(),
        "config": config.to_dict(),
        "seconds": time.time() - run.t_start,
    }


def land_width(run: "Compression", target: float):
    """The least channel pruning (depthcut.cnn.channels: global and uniform plans, budgets in MACs) that
    measures at or above x``target`` over the original, landed like a depth plan (depthcut.search.target)."""
    from .cnn.channels import ChannelFrontier
    from .search.target import land_on_target

    config = run.config
    frontier = ChannelFrontier(copy.deepcopy(run.original).cpu(), run.example)

    def choose(budget_macs: float):
        plan = frontier.best(budget_macs)
        return (plan.scope, plan.ratio), plan.macs, plan

    def measure(plan, decided):
        return probe_speed(run, plan.model.to(run.device), decided)

    try:
        return land_on_target(choose, measure, target=target, full=frontier.full, floor=frontier.min_latency_ms,
                              other=0.0, max_probes=config.max_resolves, tolerance=config.speed_tolerance,
                              say=run.say)
    except InfeasibleBudgetError as e:
        raise InfeasibleBudgetError(f"{e} end to end on {config.backend} (batch {config.batch_size}; channel "
                                    f"pruning up to 90%)", minimum=e.minimum) from None


def compress_width(run: "Compression", out) -> CompressResult:
    """The ``channel`` method (depthcut.cnn.channels): the same landing on the measured target, recovery,
    final measurement and report, over channel-pruning ratios instead of depth plans (budgets in MACs)."""
    config = run.config
    run.say(f"channel pruning (Torch-Pruning, L1; global and uniform plans) of {run.resolved.name}")
    base_ms = original_ms(run)
    target = target_speedup(run, base_ms)
    landing = land_width(run, target)
    pruned = landing.plan.model.to(run.device)
    run.say(f"recovery fine-tune: {config.recovery_epochs} epochs at pruning ratio {landing.plan.ratio:.3f} "
            f"({landing.plan.scope})")
    recovery_fine_tune(run, pruned, progress=config.progress)
    final = measure_final(run, pruned)
    upper = target * (1 + config.speed_tolerance)
    report = {
        "model": run.resolved.name, "data": config.data, "backend": config.backend, "device": str(run.device),
        "method": config.method, "batch_size": config.batch_size, "input_shape": list(run.input_shape),
        "timing_threads": run.backend.describe()["threads"], "target_speedup": config.speedup,
        "target_latency_ms": config.latency_ms or final.original_ms / target,
        "target_speedup_effective": target, "speed_tolerance": config.speed_tolerance,
        **measured_fields(run, final, pruned),
        "target_met": (final.compressed_ms <= config.latency_ms if config.latency_ms else final.ratio >= target),
        "within_band": final.ratio <= upper, "landing_overshoot": landing.overshoot,
        "pruning_ratio": landing.plan.ratio, "channel_scope": landing.plan.scope,
        "probes": [p.to_dict() | {"pruning_ratio": p.plan.ratio, "channel_scope": p.plan.scope}
                   for p in landing.probes], "config": config.to_dict(),
        "seconds": time.time() - run.t_start,
    }
    result = CompressResult(pruned, pruned, None, report, [], run.example, int8_onnx=run.int8_onnx)
    if out is not None:
        result.save_pretrained(out)
    run.say(f"done in {report['seconds']:.0f} s: x{final.ratio:.2f} [{final.low:.2f}, {final.high:.2f}] at "
            f"channel ratio {landing.plan.ratio:.3f}, accuracy {report['accuracy_before']:.2f} -> "
            f"{report['accuracy_after']:.2f}")
    return result


def prepare(model: str | nn.Module, config: LayerMergeConfig, out: str | Path | None,
            splits=None) -> tuple[ResolvedModel, tuple[int, ...], str, tuple[str, list[int] | None, int]]:
    """Stage 0: resolve the model and check every input before anything expensive (depthcut.checks):
    the output folder is writable, the data set exists and fits the model's input (channels, size,
    classes), the device exists, and the model runs at the input shape. Returns the model, the (1, C, H, W)
    input shape, the device and how the model's outputs meet the data's classes (checks.class_policy, and
    the number of outputs)."""
    from .checks import check_data_fits, check_model_accepts, check_output_dir, class_policy, input_shape_for
    from .data import dataset_info

    device = resolve_device(config)
    if out is not None:
        check_output_dir(out)
    resolved = resolve_model(model)
    info = dataset_info(config.data) if splits is None else _splits_info(splits)
    data_name = config.data if splits is None else "(given splits)"
    input_shape = input_shape_for(config.input_shape, resolved.input_shape, info, data_name)
    check_data_fits(input_shape, info, data_name)
    outputs = check_model_accepts(resolved.model, input_shape, resolved.name, num_classes=info["num_classes"])
    policy, class_index = class_policy(outputs, info, resolved.name, config.adapt_head)
    return resolved, input_shape, device, (policy, class_index, outputs)


def _num_classes(splits) -> int:
    labels = torch.cat([ds.tensors[1] if hasattr(ds, "tensors") else torch.as_tensor(ds.labels)
                        for ds in (splits.train, splits.test)])
    return int(labels.max()) + 1


def _splits_info(splits) -> dict:
    x, _ = splits.test[0]
    return {"num_classes": _num_classes(splits), "in_chans": int(x.shape[0]), "image_size": int(x.shape[-1]),
            "folder": False}


def _block_row(c: Candidate, chain) -> dict[str, Any]:
    paths = [chain.conv(p).path for p in range(c.start + 1, c.end + 1)]
    return {"start": c.start, "end": c.end, "kernel": c.kernel, "stride": c.stride, "depthwise": c.depthwise,
            "convs": paths, "kept": [chain.conv(p).path for p in c.kept],
            "merged": c.end - c.start > 1, "activation": c.activation}
