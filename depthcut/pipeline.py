"""``depthcut.compress``: the LayerMerge pipeline end to end.

analyse -> latency table -> importance table -> DP frontier -> pick the plan for the budget, verify it by an
end-to-end timing (tighten and re-solve while it misses) -> recover (fine-tune the unmerged, padding-shifted
network, optionally distilling from the original) -> merge -> check merged == unmerged -> export + report.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .cache import DEFAULT_CACHE_DIR, state_fingerprint
from .cnn.build import is_trivial   # a single-conv block keeping its conv: the original network
from .cnn.chain import Candidate, Plan
from .config import LayerMergeConfig, resolve_device
from .errors import DepthcutError, InfeasibleBudgetError
from .models import ResolvedModel, resolve_model

PROBE_MARGIN = 1.02   # a probe plan must beat the target by 2% to be accepted (timing noise)


@dataclass
class CompressResult:
    model: nn.Module                  # merged, deployable network
    unmerged: nn.Module               # the same function in its trainable, padding-shifted form
    plan: Plan
    report: dict[str, Any]
    frontier: list[tuple[float, float]] = field(default_factory=list)  # (modelled body ms, importance)


def say(config: LayerMergeConfig, msg: str) -> None:
    if config.progress:
        import sys

        print(f"[depthcut] {msg}", file=sys.stderr, flush=True)


def compress(model: str | nn.Module, config: LayerMergeConfig | None = None, *,
             out: str | Path | None = None, splits=None) -> CompressResult:
    """Make ``model`` faster by ``config.speedup`` (or down to ``config.latency_ms``) on ``config.backend``.

    ``model`` is an nn.Module or a spec understood by :func:`depthcut.models.resolve_model`. ``splits`` may
    pass pre-built :class:`depthcut.data.DataSplits` (tests do); otherwise ``config.data`` is loaded.
    When ``out`` is given, the merged state dict, plan, ONNX file and reports are written there.
    """
    from .cnn.build import build_merged, build_unmerged, count_layers, plan_from_blocks
    from .cnn.graph import analyze
    from .data import make_splits
    from .latency import get_backend, latency_table, speedup as speedup_of, time_models
    from .latency.dominance import max_accuracy_importance, measure_bandwidth, prune_dominated
    from .latency.backends import math_mode
    from .train import evaluate, train

    config = config or LayerMergeConfig()
    t_start = time.time()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    resolved, input_shape, device = prepare(model, config, out, splits)
    # the caller's model is never moved or changed: everything runs on a copy on the chosen device
    original = copy.deepcopy(resolved.model).to(device).eval()
    backend = get_backend(config.backend, device=device,
                          memory_format="channels_last" if config.channels_last else "contiguous")
    fit = {"amp": config.amp, "channels_last": config.channels_last}
    if splits is None:
        splits = make_splits(config.data, config.finetune_size, config.score_size, seed=config.seed,
                             train_limit=config.train_limit, image_size=tuple(input_shape[2:]))
    cache_dir = Path(config.cache_dir) if config.cache_dir else DEFAULT_CACHE_DIR

    # 1. analysis ---------------------------------------------------------------------------------
    say(config, f"analysing {resolved.name} at input {input_shape}")
    analysis = analyze(original, input_shape, exclude=resolved.chain_exclude)
    chain, candidates = analysis.chain, analysis.candidates
    say(config, f"chain: L={chain.length} positions, {len(analysis.blocks)} blocks, {len(candidates)} candidates")

    # 2. latency table (SPEC A5) ------------------------------------------------------------------
    from .importance import check_entries, importance_store
    importance_cache = importance_store(importance_manifest(original, analysis, config), cache_dir)
    check_entries(importance_cache, ACCURACY_RANGE)   # damaged cache files fail before any timing
    say(config, f"latency table on {config.backend} (batch {config.batch_size})")
    base_acc = evaluate(original, splits.score)

    def time_rows(rows: list[Candidate]) -> dict[str, float]:
        table = latency_table(rows, backend, batch_size=config.batch_size, cache_dir=cache_dir,
                              progress=config.progress)
        return {key: timing.median_ms for key, timing in table.items()}

    # candidates no plan could ever pick (slower than the convs they replace) are never built or scored
    candidates, dominated, latency_ms = prune_dominated(
        candidates, time_rows, max_importance=max_accuracy_importance(base_acc), steps=config.dp_steps,
        batch_size=config.batch_size, bandwidth=measure_bandwidth(device, megabytes=64))
    if dominated:
        say(config, f"{len(dominated)} dominated candidates dropped (slower than the original convs they "
                    f"replace), {len(candidates)} left")

    # 3. importance table (SPEC A6) ---------------------------------------------------------------
    importance = score_candidates(original, analysis, candidates, base_acc, splits, config, importance_cache)

    # 4. search (SPEC A7): one solve gives the whole frontier --------------------------------------
    from .search.layermerge import solve
    from .search.tables import Row

    rows = [Row(c.start, c.end, latency_ms[c.key], importance[c.key], ref=c) for c in candidates]
    identity_body_ms = sum(latency_ms[c.key] for c in candidates if is_trivial(c))
    frontier = solve(rows, chain.length, steps=config.dp_steps, max_latency_ms=identity_body_ms)

    # 5. pick the plan for the budget; verify it by an end-to-end timing ----------------------------
    example = torch.randn((config.batch_size,) + tuple(input_shape[1:]))

    def measure(solution) -> tuple[Plan, dict]:
        """Build the solution's merged network and time it against the original, interleaved."""
        plan = plan_from_blocks(chain, [r.ref for r in solution.rows])
        merged = build_merged(build_unmerged(analysis.gm, chain, plan).eval(), chain, plan).eval()
        return plan, time_models({"original": original, "compressed": merged}, example, backend,
                                 rounds=config.timing_rounds, repeats=10)

    base_ms = time_models({"original": original}, example, backend,
                          rounds=config.timing_rounds, repeats=10)["original"].median_ms
    target_ms = config.latency_ms if config.latency_ms else base_ms / config.speedup
    body_budget = identity_body_ms * min(1.0, target_ms / base_ms)
    attempts: list[dict[str, Any]] = []

    def attempt(solution, budget: float) -> tuple[Plan, bool]:
        plan, timings = measure(solution)
        after, before = timings["compressed"].median_ms, timings["original"].median_ms
        achieved = speedup_of(timings["original"], timings["compressed"])
        attempts.append({"body_budget_ms": budget, "modelled_body_ms": solution.latency_ms,
                         "measured_ms": after, "original_ms": before, "speedup": achieved})
        # Accept with a small margin: the final, independent timing must not fall back under the target.
        ok = after * PROBE_MARGIN <= goal_ms(before)
        say(config, f"plan {len(attempts)}: modelled body {solution.latency_ms:.3f} ms, measured {after:.3f} ms "
                    f"vs original {before:.3f} ms (x{achieved:.2f}) -> {'meets' if ok else 'misses'} the target")
        return plan, ok

    def goal_ms(original_ms: float) -> float:
        return config.latency_ms if config.latency_ms else original_ms / config.speedup

    plan, ok = None, False
    for _ in range(config.max_resolves - 1):
        try:
            solution = frontier.best(body_budget)
        except InfeasibleBudgetError:
            break                                   # even the fastest plan's model misses: try it for real
        plan, ok = attempt(solution, body_budget)
        if ok:
            break
        # The additive table is a model, not the truth: tighten the budget by the miss and re-solve.
        last = attempts[-1]
        body_budget = min(body_budget * 0.97, body_budget * goal_ms(last["original_ms"])
                          / (last["measured_ms"] * PROBE_MARGIN))
    if not ok:                                      # last resort: the fastest plan there is
        plan, ok = attempt(frontier.best(frontier.min_latency_ms), frontier.min_latency_ms)
        if not ok:
            last = attempts[-1]
            raise InfeasibleBudgetError(
                f"no plan reaches {target_ms:.3f} ms end to end on {config.backend} (batch {config.batch_size}): "
                f"the fastest plan measures {last['measured_ms']:.3f} ms vs {last['original_ms']:.3f} ms for the "
                f"original (x{last['speedup']:.2f} at most); ask for a smaller speed-up or a larger latency",
                minimum=last["measured_ms"])

    # 5b. the chosen plan deploys exactly the intended function (SPEC A4), checked independently of the
    #     rewrite, in float64: a wrong merge is an error, never a report
    verified = verify_chosen_plan(original, analysis, plan, input_shape)
    say(config, f"plan verified against the intended function: relative error {verified['structure']:.1e} "
                f"(float64 rewrite), {verified['deployed']:.1e} (deployed {next(original.parameters()).dtype})")

    # 6. recovery (SPEC A10): fine-tune the unmerged form, which is exactly the deployed function ----
    say(config, f"recovery fine-tune: {config.recovery_epochs} epochs"
                + (f", distilling from the original (kd weight {config.kd_weight})" if config.distill else ""))
    unmerged = build_unmerged(analysis.gm, chain, plan)
    train(unmerged, splits.train, epochs=config.recovery_epochs, lr=config.recovery_lr,
          batch_size=config.recovery_batch_size,
          teacher=original if config.distill else None, kd_weight=config.kd_weight, progress=config.progress,
          seed=config.seed, **fit)
    unmerged.eval()
    merged = build_merged(unmerged, chain, plan).eval()
    merge_error = relative_error(unmerged, merged, torch.randn((4,) + tuple(input_shape[1:])))
    if not merge_error <= MERGE_TOLERANCE:
        raise VerificationError(f"the merged network differs from its fine-tuned unmerged form (relative error "
                                f"{merge_error:.2e} in float64); this is a depthcut bug, please report it")

    # 7. final measurement, one interleaved run ---------------------------------------------------
    timings = time_models({"original": original, "compressed": merged}, example, backend,
                          rounds=config.timing_rounds, repeats=10)
    final_speedup = speedup_of(timings["original"], timings["compressed"])
    acc_before = evaluate(original, splits.test)
    acc_after = evaluate(merged, splits.test)
    stats_before = count_layers(original, input_shape)
    stats_after = count_layers(merged, input_shape)
    plan.meta.update({"model": resolved.name, "input_shape": list(input_shape), "backend": config.backend,
                      "exclude": list(resolved.chain_exclude)})
    report = {
        "model": resolved.name, "data": config.data, "backend": config.backend, "device": str(device),
        "device_name": backend.describe()["device"], "math_mode": math_mode(device),
        "batch_size": config.batch_size, "input_shape": list(input_shape),
        "target_speedup": config.speedup, "target_latency_ms": target_ms,
        "latency_ms_before": timings["original"].median_ms, "latency_ms_after": timings["compressed"].median_ms,
        "latency_stdev_ms_before": timings["original"].stdev_ms,
        "latency_stdev_ms_after": timings["compressed"].stdev_ms,
        "speedup": final_speedup,
        "target_met": (timings["compressed"].median_ms <= target_ms if config.latency_ms else
                       final_speedup >= config.speedup),
        "accuracy_before": acc_before, "accuracy_after": acc_after, "accuracy_drop": acc_before - acc_after,
        "importance_base_accuracy": base_acc,
        "params_before": stats_before["params"], "params_after": stats_after["params"],
        "macs_before": stats_before["macs"], "macs_after": stats_after["macs"],
        "convs_before": stats_before["convs"], "convs_after": stats_after["convs"],
        "activations_before": stats_before["activations"], "activations_after": stats_after["activations"],
        "merge_relative_error": merge_error,
        "intended_relative_error": verified["deployed"],
        "intended_structure_error": verified["structure"],
        "positions": chain.length, "blocks_valid": len(analysis.blocks), "candidates": len(analysis.candidates),
        "candidates_dominated": len(dominated),
        "dominated_examples": [f"{d.key}: {d.reason}" for d in dominated[:10]],
        "plan_blocks": [_block_row(c, chain) for c in plan.blocks],
        "resolve_attempts": attempts,
        "modelled_body_ms_identity": identity_body_ms,
        "config": config.to_dict(),
        "seconds": time.time() - t_start,
    }
    frontier_points = [(s.latency_ms, s.importance) for s in frontier.pareto()]
    result = CompressResult(merged, unmerged, plan, report, frontier_points)
    if out is not None:
        from .report import write_outputs

        write_outputs(result, Path(out), example)
    say(config, f"done in {report['seconds']:.0f} s: x{report['speedup']:.2f} measured on {config.backend}, "
                f"accuracy {acc_before:.2f} -> {acc_after:.2f}")
    return result


ACCURACY_RANGE = (0.0, 100.0)   # importance entries are accuracies in %


def importance_manifest(original: nn.Module, analysis, config: LayerMergeConfig) -> dict[str, Any]:
    """Everything that changes an importance entry's value: another checkpoint, split or recipe must never
    reuse it."""
    return {"model": state_fingerprint(original), "data": config.data, "train_limit": config.train_limit,
            "finetune_size": config.finetune_size, "score_size": config.score_size,
            "proxy": config.importance, "steps": config.importance_steps, "lr": config.importance_lr,
            "batch_size": config.importance_batch_size, "seed": config.seed,
            "input_shape": list(analysis.input_shape), "conv_paths": [c.path for c in analysis.chain.convs]}


def score_candidates(original: nn.Module, analysis, candidates: list[Candidate], base_acc: float, splits,
                     config: LayerMergeConfig, store) -> dict[str, float]:
    """I = exp(Δacc/100) per candidate (SPEC A6), cached per entry in ``store`` (resumable after a kill)."""
    from .cnn.build import build_unmerged, single_block_plan
    from .importance import importance_table, score
    from .train import evaluate, recalibrate_bn, train

    chain = analysis.chain
    todo = [c for c in candidates if not is_trivial(c)]

    def accuracy_of(candidate: Candidate) -> float:
        torch.manual_seed(config.seed)
        model = build_unmerged(analysis.gm, chain, single_block_plan(chain, candidate))
        if config.importance == "finetune":
            train(model, splits.finetune, steps=config.importance_steps, lr=config.importance_lr,
                  batch_size=config.importance_batch_size, progress=False, seed=config.seed,
                  amp=config.amp, channels_last=config.channels_last)
        elif config.importance == "bn-recalibration":
            recalibrate_bn(model, splits.finetune)
        return evaluate(model.eval(), splits.score)

    say(config, f"importance table: {len(todo)} candidates to score ({config.importance}, "
                f"{config.importance_steps} steps), {sum(c.key in store for c in todo)} already cached")
    accs = importance_table(todo, accuracy_of, store=store, progress=config.progress, metric_range=ACCURACY_RANGE)
    scores = {c.key: 1.0 for c in candidates}        # exp(0): the original network itself
    for c in todo:
        scores[c.key] = score(accs[c.key], base_acc)
    return scores


MERGE_TOLERANCE = 1e-5   # float64 evaluation of float32 weights composed in float64 (~1e-7 when right)


class VerificationError(DepthcutError):
    """The network about to be deployed is not the function the plan intends (a depthcut bug)."""


def relative_error(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """||a(x) - b(x)|| / ||a(x)|| evaluated in float64 on copies: no math mode (TF32 on GPUs, reduced
    precision reductions) can make a correct merge look wrong or a wrong one look right."""
    import copy

    a64, b64 = copy.deepcopy(a).double().eval(), copy.deepcopy(b).double().eval()
    x64 = x.double().to(next((p.device for p in a64.parameters()), x.device))
    with torch.no_grad():
        ya, yb = a64(x64), b64(x64)
    return float((ya - yb).norm() / ya.norm().clamp_min(1e-300))


def verify_chosen_plan(original: nn.Module, analysis, plan: Plan, input_shape) -> dict[str, float]:
    """The plan's rewrite against the intended function (depthcut.cnn.intended), in float64 end to end: every
    block exact and the whole network within what rounding explains, else VerificationError. Also returns
    the error of the network that will be deployed (its kernels rounded to the model's dtype; reported)."""
    from .cnn.build import build_merged, build_unmerged
    from .cnn.intended import plan_structure_errors, structure_ok, verify_plan

    errors = plan_structure_errors(original, analysis.gm, analysis.chain, plan, input_shape)
    if not structure_ok(errors):
        blocks = ", ".join(b.key for b in plan.blocks if not is_trivial(b))
        raise VerificationError(
            f"the chosen plan ({blocks}) is not the intended function: largest block error {errors['blocks']:.2e}, "
            f"whole network {max(errors['merged'], errors['unmerged']):.2e} (rounding explains "
            f"{errors['allowed']:.1e}), in float64; refusing to deploy it. This is a depthcut bug: please report "
            f"it with the model")
    deployed = build_merged(build_unmerged(analysis.gm, analysis.chain, plan).eval(), analysis.chain, plan)
    return {"structure": max(errors["merged"], errors["unmerged"]), "blocks": errors["blocks"],
            "deployed": verify_plan(deployed, original, analysis.chain, plan, input_shape)}


def prepare(model: str | nn.Module, config: LayerMergeConfig, out: str | Path | None,
            splits=None) -> tuple[ResolvedModel, tuple[int, ...], str]:
    """Stage 0: resolve the model and check every input before anything expensive (depthcut.checks):
    the output folder is writable, the data set exists and fits the model's input (channels, size,
    classes), the device exists, and the model runs at the input shape. Returns the model, the (1, C, H, W)
    input shape and the device."""
    from .checks import check_data_fits, check_model_accepts, check_output_dir, input_shape_for
    from .data import dataset_info

    device = resolve_device(config)
    if out is not None:
        check_output_dir(out)
    resolved = resolve_model(model)
    info = dataset_info(config.data) if splits is None else _splits_info(splits)
    data_name = config.data if splits is None else "(given splits)"
    input_shape = input_shape_for(config.input_shape, resolved.input_shape, info, data_name)
    check_data_fits(input_shape, info, data_name)
    check_model_accepts(resolved.model, input_shape, resolved.name, num_classes=info["num_classes"])
    return resolved, input_shape, device


def _splits_info(splits) -> dict:
    x, _ = splits.test[0]
    labels = torch.cat([ds.tensors[1] for ds in (splits.train, splits.test)])
    return {"num_classes": int(labels.max()) + 1, "in_chans": int(x.shape[0]), "image_size": int(x.shape[-1]),
            "folder": False}


def _block_row(c: Candidate, chain) -> dict[str, Any]:
    paths = [chain.conv(p).path for p in range(c.start + 1, c.end + 1)]
    return {"start": c.start, "end": c.end, "kernel": c.kernel, "stride": c.stride, "depthwise": c.depthwise,
            "convs": paths, "kept": [chain.conv(p).path for p in c.kept],
            "merged": c.end - c.start > 1, "activation": c.activation}
