"""The paper's claim, measured (issue 9 §5): every method at the same measured speed-up targets.

For each model, target speed-up, method (depthcut.methods registry) and seed, ``depthcut.compress`` runs the
whole pipeline - the same analysis, latency rows, importance table, landing on the measured target (here within
``--band``, default +3%, so that methods compare at nearly equal latency), verification, recovery budget and
final timing - and the result is stored. The control the reader asks first is there too: the original network
fine-tuned with the same recovery budget (speed-up x1).

Equal latency is judged by one *joint* timing per (model, target, seed): every method's deployed network
(``model.onnx``, kept under ``--models-dir``) and the original, timed in the same interleaved rounds
(``depthcut.latency.compare.compare_many``). Separate measurements minutes apart differ by several percent on
this shared machine (bench/results/timing_stability.md), more than the differences being judged.

Resumable: each run's result is written atomically to ``--out``/runs/<model>-<method>-x<target>-s<seed>.json as
it finishes and skipped when present; the latency rows and importance entries are shared through the cache
across methods and targets (importance entries depend on the seed). Writes ``--out``.md (tables: accuracy and
measured speed-up, mean +/- std over seeds, where LayerMerge does not win) and ``--out``.png.

    python bench/cnn_frontier.py [--models resnet20_fmnist mobilenet_v2_fmnist] [--targets 1.25 1.5 2.0]
                                 [--seeds 0 1 2] [--recovery-epochs 1.0]

Within 2 hours on this 2-core machine (issue 9), from an empty cache: share what does not depend on the seed and
give every network exactly one recovery, at a budget sized to fit (stated in the report, with the wall time the
benchmark took, per phase, summed over resumed invocations in ``--out``/clock.json):

    python bench/cnn_frontier.py --matched --timing-threads 1 --channels-last --recover-chosen-only \
        --share-networks --importance-seed 0 --importance-steps mobilenet_v2_fmnist=10 \
        --recovery-epochs resnet20_fmnist=0.25 mobilenet_v2_fmnist=0.1 --cache .cache/depthcut-2h \
        --out bench/results/cnn_frontier_2h --models-dir .cache/cnn_frontier_models_2h

``--share-networks``: the networks of a seed follow from its importance table and the timings, not from its
recovery seed, so seeds sharing a table share them - one landing and matching, each seed recovering them.
``--recover-chosen-only``: landing runs are not recovered; the networks chosen at matched latency are, once.
``--channels-last``: fine-tunes in channels_last (1.2x-1.7x on this CPU; ONNX Runtime timings unchanged).

``--importance-only`` scores the importance tables the runs will need into the cache and stops. It times
nothing, so it may run on another machine sharing ``--cache`` or next to other work, unlike the runs themselves.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from depthcut.cache import atomic_write_json, atomic_write_text  # noqa: E402
from depthcut.config import LayerMergeConfig  # noqa: E402
from depthcut.errors import InfeasibleBudgetError  # noqa: E402
from depthcut.cnn.channels import DEFAULT_SCOPE as CHANNEL_SCOPE  # noqa: E402
from depthcut.methods import get_method, method_names  # noqa: E402

OUT = ROOT / "bench" / "results" / "cnn_frontier"
MODELS_DIR = ROOT / ".cache" / "cnn_frontier_models"     # each run's deployable result (git-ignored)
KEYS = ("speedup", "speedup_low", "speedup_high", "accuracy_before", "accuracy_after", "convs_after",
        "activations_after", "within_band", "landing_overshoot", "seconds")


def frontier_config(model: str, method: str, target: float, seed: int, args, landing: bool = False
                    ) -> LayerMergeConfig:
    """One run's configuration: the budgets every method shares. ``landing``: the configuration of the landing
    run itself, which with ``--recover-chosen-only`` is not recovered (its network is recovered only if matching
    chooses it, with the budget the other configurations carry)."""
    deferred = landing and args.recover_chosen_only
    return LayerMergeConfig(speedup=target, method=method, seed=seed,
                            recovery_epochs=0.0 if deferred else recovery(args, model),
                            importance_seed=importance_seed(args, model), speed_tolerance=args.band,
                            max_resolves=10, cache_dir=args.cache, executor=args.executor,
                            # progress bars on a terminal (a run scoring MobileNetV2's importance table is silent
                            # for a quarter of an hour otherwise); a log file gets the per-run lines only
                            progress=sys.stderr.isatty(),
                            workers=args.workers, timing_threads=args.timing_threads,
                            channels_last=args.channels_last, importance_steps=importance_steps(args, model))


def control_config(model: str, seed: int, args) -> LayerMergeConfig:
    """The control's recipe: the recovery every method's network gets."""
    return LayerMergeConfig(seed=seed, recovery_epochs=recovery(args, model), importance_seed=importance_seed(args, model),
                            timing_threads=args.timing_threads, channels_last=args.channels_last,
                            importance_steps=importance_steps(args, model))


def run_one(model: str, method: str, target: float, seed: int, args) -> dict:
    from depthcut.compression import compress

    cfg = frontier_config(model, method, target, seed, args, landing=True)
    t0 = time.time()
    try:
        r = compress(model, cfg, out=artifact(args, model, method, target, seed)).report
    except InfeasibleBudgetError as e:
        return {"infeasible": str(e), "fastest_ms": e.minimum, "seconds": time.time() - t0, **version(method, cfg)}
    landing = [{k: p.get(k) for k in ("budget", "modelled", "meets", "lands", "measured_ratio", "measured_low",
                                      "measured_high")} for p in r["probes"]]
    return {k: r[k] for k in KEYS} | {"probes": len(r["probes"]), "landing": landing,
                                      "timings_s": r.get("timings_s"), **version(method, cfg)}


def fill_importance(args) -> None:
    """``--importance-only``: every importance entry the depth methods' runs will read, computed into the
    shared cache (compress's ``shard`` 0/1: entries present are skipped, each written atomically, so a kill
    loses at most the entry being scored). The entries depend on the model and the scoring seed, not on the
    method, target or timing, so one pass per (model, scoring seed) serves every run."""
    from depthcut.compression import compress

    depth = [m for m in args.methods if get_method(m).kind == "plan"]
    for model in args.models:
        shared = importance_seed(args, model)
        for seed in sorted({s if shared is None else shared for s in args.seeds}):
            for method in depth:   # their candidate sets differ; the entries they share are scored once
                cfg = dataclasses.replace(frontier_config(model, method, args.targets[0], seed, args),
                                          shard=(0, 1), progress=True)
                r = compress(model, cfg).report
                print(f"{model} scoring seed {seed} {method}: {r['entries_present']} of {r['entries_needed']} "
                      f"entries ({r['computed']} computed now) in {r['store']}", flush=True)


def artifact(args, model: str, method: str, target: float, seed: int) -> Path:
    """Where a run's deployable result (``model.onnx``, state dicts, plan) is kept for the joint timing."""
    return Path(args.models_dir) / f"{model}-{method}-x{target}-s{seed}"


def joint_timing(model: str, files: dict[str, Path], args) -> dict:
    """Every method's deployed network (``files``: method -> model.onnx) and the original, in the same rounds."""
    from depthcut.config import LayerMergeConfig
    from depthcut.latency import get_backend
    from depthcut.latency.compare import time_jointly
    from depthcut.models import resolve_model

    sessions = LayerMergeConfig().timing_sessions
    resolved = resolve_model(model)
    x = torch.randn((1,) + tuple(resolved.input_shape[1:]), generator=torch.Generator().manual_seed(0))
    t0 = time.time()
    est = time_jointly(resolved.model.eval(), dict(files), x, get_backend("onnxruntime", threads=args.timing_threads),
                       sessions=sessions, rounds=args.joint_rounds, drift=0.0)
    ratios = [e.ratio for e in est.values()]
    return {"methods": sorted(files), "rounds": args.joint_rounds, "sessions": sessions,
            "seconds": time.time() - t0, "speedups": {m: e.to_dict() for m, e in est.items()},
            "spread": max(ratios) / min(ratios) - 1}


def control(model: str, seed: int, args) -> dict:
    """The original, fine-tuned with the same recovery recipe (distillation from itself included)."""
    import copy

    from depthcut.data import make_splits
    from depthcut.models import resolve_model
    from depthcut.train import evaluate, train

    cfg = control_config(model, seed, args)
    torch.manual_seed(seed)
    resolved = resolve_model(model)
    original = resolved.model.eval()
    # the same splits as the compress runs of this seed (they follow the importance seed)
    splits = make_splits(cfg.data, cfg.finetune_size, cfg.score_size, seed=cfg.scoring_seed,
                         train_limit=cfg.train_limit, image_size=tuple(resolved.input_shape[2:]))
    tuned = copy.deepcopy(original)
    t0 = time.time()
    train(tuned, splits.train, epochs=cfg.recovery_epochs, lr=cfg.recovery_lr, batch_size=cfg.recovery_batch_size,
          teacher=original if cfg.distill else None, kd_weight=cfg.kd_weight, progress=False, seed=seed,
          channels_last=cfg.channels_last)
    return {"speedup": 1.0, "speedup_low": 1.0, "speedup_high": 1.0, "accuracy_before": evaluate(original, splits.test),
            "accuracy_after": evaluate(tuned.eval(), splits.test), "seconds": time.time() - t0,
            **version("control", cfg)}


def version(method: str, cfg: LayerMergeConfig) -> dict:
    """What a stored run must share with this one to be reused."""
    out = {"recovery_epochs": cfg.recovery_epochs, "importance_seed": cfg.scoring_seed,
           "channels_last": cfg.channels_last, "importance_steps": cfg.importance_steps}
    if cfg.timing_threads:                          # runs stored before the option timed with torch's threads
        out["timing_threads"] = cfg.timing_threads
    if method == "channel":
        out["channel_scope"] = CHANNEL_SCOPE
    return out


def reusable(stored: dict, method: str, cfg: LayerMergeConfig) -> bool:
    """``cfg``: the configuration the run would have now (the landing run's, or the control's)."""
    # runs stored before a field existed had its old value: 1 epoch, the run's own seed, uniform channels,
    # torch's timing threads, contiguous fine-tunes of 20 importance steps
    have = {"recovery_epochs": 1.0, "importance_seed": cfg.seed, "channel_scope": "uniform", "timing_threads": None,
            "channels_last": False, "importance_steps": 20, **stored}
    return all(have[k] == v for k, v in version(method, cfg).items())


def per_model(values: list[str], model: str) -> str | None:
    """``MODEL=VALUE`` pairs and at most one plain ``VALUE`` (for every other model): ``model``'s value."""
    pairs = dict(v.split("=") for v in values if "=" in v)
    plain = [v for v in values if "=" not in v]
    return pairs.get(model, plain[0] if plain else None)


def importance_seed(args, model: str) -> int | None:
    """``--importance-seed mobilenet_v2_fmnist=0``: every seed of that model shares the seed-0 importance table
    (its seeds then vary the recovery only); None (the default): each seed scores its own table."""
    value = per_model(args.importance_seed, model)
    return None if value is None else int(value)


def importance_steps(args, model: str) -> int:
    """``--importance-steps mobilenet_v2_fmnist=10``: the short fine-tune of each importance entry (default 20)."""
    value = per_model(args.importance_steps, model)
    return LayerMergeConfig().importance_steps if value is None else int(value)


def network_seed(args, model: str) -> int | None:
    """With ``--share-networks``, the seed whose landing and matching choose ``model``'s networks for every seed
    (its shared importance seed); None: each seed chooses its own."""
    return importance_seed(args, model) if args.share_networks else None


def recovery(args, model: str) -> float:
    """The recovery budget for ``model``: ``--recovery-epochs 1.0`` for every model, or per model
    (``resnet20_fmnist=1.0 mobilenet_v2_fmnist=0.25``) so that the whole benchmark fits its time."""
    value = per_model(args.recovery_epochs, model)
    return 1.0 if value is None else float(value)


def missed(run: dict, target: float) -> bool:
    """The final timing says the run is slower than its target (its whole 95% interval below it)."""
    return run.get("speedup_high", run["speedup"]) < target


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def command(args, models, seeds) -> str:
    """The command line that continues this benchmark with the same shared settings (without --report-only)."""
    out = f"python bench/cnn_frontier.py --models {' '.join(models)} --seeds {' '.join(map(str, seeds))}"
    out += " --recovery-epochs " + " ".join(f"{m}={recovery(args, m):g}" for m in models)
    pinned = [f"{m}={importance_seed(args, m)}" for m in models if importance_seed(args, m) is not None]
    out += (" --importance-seed " + " ".join(pinned)) if pinned else ""
    steps = [f"{m}={importance_steps(args, m)}" for m in models
             if importance_steps(args, m) != LayerMergeConfig().importance_steps]
    out += (" --importance-steps " + " ".join(steps)) if steps else ""
    out += " --channels-last" if args.channels_last else ""
    out += " --matched" if args.matched else ""
    out += " --recover-chosen-only" if args.recover_chosen_only else ""
    out += " --share-networks" if args.share_networks else ""
    return out + (f" --timing-threads {args.timing_threads}" if args.timing_threads else "")


def summarise(results: dict, models, targets, methods, seeds, args, joint: dict | None = None,
              matched: dict | None = None, clock: dict | None = None) -> str:
    joint, matched = joint or {}, matched or {}
    lines = ["# Every method at the same measured speed-up: `python bench/cnn_frontier.py`", "",
             f"Fashion-MNIST, ONNX Runtime CPU, batch 1, {args.timing_threads or torch.get_num_threads()} timing "
             f"thread(s). Recovery budget (epochs): "
             f"{', '.join(f'{m} {recovery(args, m):g}' for m in models)} "
             f"(distillation weight 0.3{', channels_last' if args.channels_last else ''}), the same for every "
             f"method and for the control. Importance: {', '.join(f'{m} {importance_steps(args, m)}' for m in models)} "
             f"fine-tune steps per entry. Landing band: target to "
             f"+{100 * args.band:.0f}%. Seeds: {', '.join(map(str, seeds))} (mean ± std where more than one). "
             f"Accuracy on the 10,000 test images; speed-up = median of paired interleaved rounds.", "",
             f"To reproduce or complete (stored runs are kept): `{command(args, models, seeds)}`", ""]
    if args.recover_chosen_only:
        lines += ["`--recover-chosen-only`: the landing runs are not recovered (their accuracy below is before "
                  "recovery, and they are not compared on it); each network chosen at matched latency is recovered "
                  "once, with the budget above.", ""]
    if args.share_networks:
        lines += ["`--share-networks`: seeds that share an importance table share their networks - the networks' "
                  "structure follows from the importance table and the timings, not from the recovery seed - so "
                  "the importance seed's runs land and match, and every seed recovers the chosen networks with its "
                  "own seed and times them afresh.", ""]
    if clock:
        lines += [f"Wall time of this benchmark on this machine: **{clock_line(clock)}**.", ""]
    for model in models:
        ctrl = [results.get(("control", model, 1.0, s)) for s in seeds]
        ctrl = [c for c in ctrl if c]
        lines += [f"## {model}", ""]
        have = sorted({s for (m, mo, _, s), r in results.items() if mo == model and m != "control"})
        total = len(methods) * len(targets) * (1 if network_seed(args, model) is not None else len(seeds))
        done_n = sum(1 for (m, mo, _, _) in results if mo == model and m != "control")
        if done_n < total:
            lines += [f"Partial: {done_n} of {total} runs so far (seeds {', '.join(map(str, have)) or 'none'}); "
                      f"cells average the runs done.", ""]
        if ctrl:
            lines.append(f"Original: {mean_std([c['accuracy_before'] for c in ctrl])}%; control (original + the same "
                         f"recovery fine-tune): {mean_std([c['accuracy_after'] for c in ctrl])}%.")
            lines.append("")
        lines += ["| method | " + " | ".join(f"x{t}: accuracy % | speed-up" for t in targets) + " |",
                  "|---|" + "---|---|" * len(targets)]
        best_at: dict[float, float] = {}
        for method in methods:
            cells = []
            for t in targets:
                runs = [r for s in seeds if (r := results.get((method, model, t, s)))]
                done = [r for r in runs if "infeasible" not in r]
                if runs and not done:
                    fastest = re.search(r"\((x[0-9.]+ \[[0-9.]+, [0-9.]+\]) over", runs[0]["infeasible"])
                    cells.append("unreachable | " + (fastest.group(1) if fastest else "-"))
                    continue
                acc = [r["accuracy_after"] for r in done]
                spd = [r["speedup"] for r in done]
                if method == "layermerge" and acc:
                    best_at[t] = statistics.mean(acc)
                short = sum(missed(r, t) for r in done)
                mark = f" (missed x{t} in {short} of {len(done)})" if short else ""
                cells.append(f"{mean_std(acc)} | x{mean_std(spd)}{mark}" if done else "- | -")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
        losses = []
        for method in methods:
            if method == "layermerge":
                continue
            for t in targets:
                done = [r for s in seeds if (r := results.get((method, model, t, s))) and "infeasible" not in r
                        and not missed(r, t)]        # a run slower than its target does not compete at it
                if done and t in best_at and statistics.mean(r["accuracy_after"] for r in done) > best_at[t]:
                    losses.append(f"{method} at x{t} (+{statistics.mean(r['accuracy_after'] for r in done) - best_at[t]:.2f} points)")
        if not args.recover_chosen_only:          # unrecovered accuracies do not compare
            lines.append("Where LayerMerge does not have the best mean accuracy: "
                         + (", ".join(losses) if losses else "nowhere") + ".")
        spreads = []
        for t in targets:
            spd = [statistics.mean(r["speedup"] for r in done) for method in methods
                   if (done := [r for s in seeds if (r := results.get((method, model, t, s))) and "infeasible" not in r])]
            if len(spd) > 1:
                spreads.append(f"x{t}: {100 * (max(spd) / min(spd) - 1):.0f}%")
        if spreads:
            lines.append("Not all at equal latency: the measured speed-ups of the methods that reached a target "
                         "differ by " + ", ".join(spreads) + " (fastest / slowest); a method whose frontier has no "
                         "plan inside the band lands above it.")
        lines.append("")
        joint_lines = joint_section(joint, model, targets, methods, seeds, args)
        if joint_lines:
            lines += joint_lines + landing_gaps(results, model, targets, methods, seeds)
        lines += matched_section(matched, model, targets, methods, seeds, args.recover_chosen_only)
    return "\n".join(lines)


def matched_section(matched: dict, model: str, targets, methods, seeds, deferred: bool = False) -> list[str]:
    """Matched latency (bench/matched_latency.py): one network per method at the common point of a joint
    timing, recovered with the same recipe; each network's median over fresh joint timings minutes apart."""
    from matched_latency import reported

    done = {(t, s): r for (mo, t, s), r in matched.items() if mo == model and r}
    if not done:
        return []
    said = {k: reported(r) for k, r in done.items()}
    used = sorted({s for (_, s) in done})
    coarse = sorted({s for (_, s), r in done.items() if r.get("version", 1) < 2})
    replicas = sorted({s for (_, s), r in done.items() if "replica_of" in r})
    sources = sorted({r["replica_of"] for r in done.values() if "replica_of" in r})
    fresh = sorted({d["timings"] for d in said.values()})
    lines = [f"**Matched latency** (seeds {', '.join(map(str, used))}; `--matched`, bench/matched_latency.py): "
             f"every method's landed network and the plans its own search picks around it (depth: its landing "
             f"probes near the target and its DP at budgets for x1.0-1.25 the target; channel: ratios around its "
             f"landed one, both families) are timed in the same rounds; one network per method is taken at the "
             f"common point - all at or above the target, first within +10 % of it, spread <= 2 % where possible "
             f"(else <= 3 %: a 2 % aim leaves a margin for the drift between timings), nearest the target - chosen "
             f"again on timings of each method's candidates nearest that point taken the way the report times "
             f"(4 sessions; up to 3 times, until within 2 % there; where none gets there, new plans are filled in "
             f"between each method's candidates that bracket the others' chosen speed-ups - depth budgets, "
             f"channel ratios, and channel plans mixed group by group between its nearest distinct speed levels, "
             f"since its latency steps with the ratio - and the point is chosen again, up to 3 more times; then "
             f"confirmed by a timing of the chosen networks alone, re-chosen locally if that is not within 2 %, up "
             f"to 3 times), and recovered with the same recipe when it is not the landed plan (marked *). "
             f"Speed-up: each chosen network's median over "
             f"{f'{fresh[0]}-{fresh[-1]}' if len(fresh) > 1 else fresh[0]} fresh joint timing(s) of the "
             f"chosen networks and the original ({next(iter(done.values()))['rounds']} rounds each, minutes "
             f"apart: at 2 ONNX Runtime threads the ratio of the same two networks moves 3-6 % between timings on "
             f"this shared machine, at 1 thread about 1 %), "
             f"reported whatever they say; *spread* is that of the medians, *single timings* the range of each "
             f"timing's own spread."
             + (f" {'Seeds' if len(coarse) > 1 else 'Seed'} {', '.join(map(str, coarse))} "
                f"{'were' if len(coarse) > 1 else 'was'} chosen on the coarse timing alone (before the refinement "
                f"existed)." if coarse else "")
             + (f" {'Seeds' if len(replicas) > 1 else 'Seed'} {', '.join(map(str, replicas))} "
                f"{'use' if len(replicas) > 1 else 'uses'} seed {sources[0]}'s networks (`--share-networks`), "
                f"recovered with {'their' if len(replicas) > 1 else 'its'} own seed and timed afresh."
                if replicas else "")
             + (" With `--recover-chosen-only` every chosen network is recovered here, the landed ones too."
                if deferred else ""), "",
             "| method | " + " | ".join(f"x{t}: accuracy % | speed-up" for t in targets) + " |",
             "|---|" + "---|---|" * len(targets)]
    for method in methods:
        cells = []
        for t in targets:
            picks = [(r["chosen"][method], said[(t, s)]["speedups"][method]) for s in seeds
                     if (r := done.get((t, s))) and method in r["chosen"] and "accuracy" in r["chosen"][method]]
            if not picks:
                cells.append("- | -")
                continue
            star = "*" if any(not p["landed"] for p, _ in picks) else ""
            cells.append(f"{mean_std([p['accuracy'] for p, _ in picks])}{star} | x{mean_std([v for _, v in picks])}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    cells = spread_cells(said, targets, seeds)
    single = []
    for t in targets:
        sp = [100 * v for s in seeds if (d := said.get((t, s))) for v in d["spreads"]]
        single.append(f"{min(sp):.1f}-{max(sp):.1f}%" if sp else "-")
    lines += ["| **spread** (fastest / slowest) | " + " | ".join(f"| {c}" for c in cells) + " |",
              "| single timings' spreads | " + " | ".join(f"| {c}" for c in single) + " |", ""]
    losses = []
    for t in targets:
        rs = [r for s in seeds if (r := done.get((t, s)))]
        lm = [r["chosen"]["layermerge"]["accuracy"] for r in rs if "accuracy" in r["chosen"].get("layermerge", {})]
        for method in methods:
            acc = [r["chosen"][method]["accuracy"] for r in rs if "accuracy" in r["chosen"].get(method, {})]
            if method != "layermerge" and acc and lm and statistics.mean(acc) > statistics.mean(lm):
                losses.append(f"{method} at x{t} (+{statistics.mean(acc) - statistics.mean(lm):.2f} points)")
    lines += ["At matched latency, where LayerMerge does not have the best mean accuracy: "
              + (", ".join(losses) if losses else "nowhere") + ".", ""]
    return lines


def spread_cells(timings: dict, targets, seeds) -> list[str]:
    """Per target: the mean and largest spread (fastest / slowest) of the joint timings {(target, seed): ...}."""
    cells = []
    for t in targets:
        sp = [100 * j["spread"] for s in seeds if (j := timings.get((t, s))) and len(j["speedups"]) > 1]
        cells.append(f"{statistics.mean(sp):.1f}% (max {max(sp):.1f}%)" if sp else "-")
    return cells


def joint_section(joint: dict, model: str, targets, methods, seeds, args) -> list[str]:
    """The equal-latency check: per target, every method's speed-up from the joint timing (mean over the seeds
    timed jointly) and the spread fastest / slowest within each seed's joint timing."""
    timed = {(t, s): j for (mo, t, s), j in joint.items() if mo == model and j}
    if not timed:
        return []
    used = sorted({s for (_, s) in timed})
    lines = [f"Equal latency, timed jointly (seeds {', '.join(map(str, used))}): each seed's deployed networks of "
             f"every method and the original in the same {args.joint_rounds} interleaved rounds "
             f"(ONNX Runtime, {next(iter(timed.values()))['sessions']} sessions each). Spread: fastest / slowest "
             f"within one joint timing (issue 9 asks for <= 3 %).", "",
             "| method | " + " | ".join(f"x{t}" for t in targets) + " |", "|---|" + "---|" * len(targets)]
    for method in methods:
        cells = []
        for t in targets:
            vals = [j["speedups"][method]["ratio"] for s in seeds if (j := timed.get((t, s)))
                    and method in j["speedups"]]
            cells.append(f"x{mean_std(vals)}" if vals else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["| **spread** | " + " | ".join(spread_cells(timed, targets, seeds)) + " |", ""]
    return lines


def landing_gaps(results: dict, model: str, targets, methods, seeds) -> list[str]:
    """Where each method's landing probes fell around the target: the fastest probe that missed and the
    slowest that met (separate timings). A method with nothing measured between them and the band cannot
    land inside it - a gap in its plans, not in the timing."""
    lines = ["Landing probes around each target (seed by seed: the fastest plan probed below the target -> the "
             "slowest at or above it, each a separate timing; no plan of the method measured in between):", "",
             "| method | " + " | ".join(f"x{t}" for t in targets) + " |", "|---|" + "---|" * len(targets)]
    for method in methods:
        cells = []
        for t in targets:
            seen = []
            for s in seeds:
                r = results.get((method, model, t, s))
                if not r or "infeasible" in r or not r.get("landing"):
                    continue
                below = [p["measured_ratio"] for p in r["landing"] if not p["meets"]]
                above = [p["measured_ratio"] for p in r["landing"] if p["meets"]]
                seen.append((f"x{max(below):.2f}" if below else "-") + " -> "
                            + (f"x{min(above):.2f}" if above else "-"))
            cells.append("; ".join(seen) or "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines + [""]


def joint_timings(results: dict, args, folder: Path) -> dict:
    """The joint timing of every (model, target, seed) with stored runs: reused when it covered the same
    methods, else (and unless --report-only) taken now and stored atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    joint = {}
    for model, target, seed in sorted({(mo, t, s) for (m, mo, t, s) in results if m != "control"}):
        path = folder / f"{model}-x{target}-s{seed}.json"
        files = {m: f for m in args.methods if (f := artifact(args, model, m, target, seed) / "model.onnx").exists()}
        have = sorted(files)
        stored = json.loads(path.read_text()) if path.exists() else None
        if stored and (stored["methods"] == have or args.report_only or not have):
            joint[(model, target, seed)] = stored
            continue
        if args.report_only or not have:
            continue
        print(f"joint timing: {model} x{target} seed {seed}: {', '.join(have)}", flush=True)
        j = joint_timing(model, files, args)
        atomic_write_json(path, j)
        joint[(model, target, seed)] = j
    return joint


def matched_results(results: dict, args, folder: Path, clock: "Clock | None" = None) -> dict:
    """The matched-latency result of every (model, target, seed) whose LayerMerge run landed (stored, reused),
    then its further fresh timings, in passes over all of them so that one network's timings lie minutes
    apart. With ``--share-networks`` the other seeds of a model replicate its network seed's choice (their own
    recoveries and fresh timings of the same networks)."""
    from matched_latency import FRESH, matched, replicate, retime, search_cache

    landed = sorted({(mo, t, s) for (m, mo, t, s) in results if m == "layermerge"})
    source = {k: k for k in landed}             # the key whose landing runs and choice a key's networks are
    for mo, t, s in landed:
        if network_seed(args, mo) == s:
            source |= {(mo, t, other): (mo, t, s) for other in args.seeds if other != s}
    keys = sorted(source)
    path = {k: folder / f"{k[0]}-x{k[1]}-s{k[2]}.json" for k in keys}
    if args.report_only:
        return {k: json.loads(path[k].read_text()) if path[k].exists() else None for k in keys}
    sessions = LayerMergeConfig().timing_sessions
    # bound per key now: these are called again in the later passes (the networks are the source's)
    files = {k: functools.partial(artifact, args, k[0], target=k[1], seed=source[k][2]) for k in keys}
    # a method's search (latency rows, importance, DP, recovery recipe) depends on the model and seed, not on
    # the target: one per (model, seed), built on demand
    per_seed = {(mo, s): search_cache(mo, functools.partial(frontier_config, mo, target=args.targets[0], seed=s,
                                                            args=args)) for mo, _, s in keys}
    searches = {k: per_seed[(k[0], k[2])] for k in keys}
    clock = clock or Clock(None)
    out = {}
    for k in sorted(keys, key=lambda k: (source[k] != k, k)):      # every source before its replicas
        with clock.phase("matching (timing, recovery)"):
            if source[k] == k:
                out[k] = matched(*k, args.methods, files[k], folder, args.joint_rounds, sessions, searches[k],
                                 args.timing_threads, recover_landed=args.recover_chosen_only)
            else:
                out[k] = replicate(*k, out.get(source[k]), source[k][2], folder, files[k], searches[k],
                                   args.joint_rounds, sessions, args.timing_threads)
    for upto in range(2, FRESH + 1):
        for k in keys:
            if out[k]:
                with clock.phase("fresh timings"):
                    out[k] = retime(k[0], path[k], files[k], searches[k], args.joint_rounds, sessions, upto,
                                    args.timing_threads)
    return out


class Clock:
    """Wall time spent on this benchmark's work, per phase, summed over every invocation (a resumed run adds
    to it), kept in ``<out>/clock.json`` and written after each step, so a kill loses at most the step under
    way. ``Clock(None)`` keeps nothing; ``record=False`` reads the stored clock and adds nothing (--report-only)."""

    def __init__(self, path: Path | None, record: bool = True):
        self.path, self.record = path, record
        self.data = json.loads(path.read_text()) if path and path.exists() else {"phases": {}}

    @contextlib.contextmanager
    def phase(self, name: str):
        if not self.record:
            yield
            return
        t0 = time.time()
        try:
            yield
        finally:
            self.data["phases"][name] = self.data["phases"].get(name, 0.0) + time.time() - t0
            if self.path:
                atomic_write_json(self.path, self.data)


PHASES = ("importance (--importance-only)", "landing runs and controls (importance tables included)",
          "joint timings of the landed networks", "matching (timing, recovery)", "fresh timings")


def clock_line(clock: dict) -> str:
    stored = clock.get("phases", {})
    phases = {p: stored[p] for p in sorted(stored, key=lambda p: (PHASES.index(p) if p in PHASES else len(PHASES), p))}
    return (f"{sum(phases.values()) / 60:.0f} min (" + ", ".join(f"{name} {sec / 60:.1f} min" for name, sec in
                                                                phases.items()) + ")")


def plot(results: dict, models, methods, path: Path, matched: dict | None = None, deferred: bool = False) -> None:
    """Accuracy vs measured speed-up of every landed run; with matched-latency results, a second row per model
    shows the networks chosen at each common point (mean and std over the seeds, speed-up from the fresh joint
    timing), where the methods' speed-ups are within a few percent of each other and their accuracies compare."""
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matched_latency import reported

    matched = {k: r for k, r in (matched or {}).items() if r}
    rows = 2 if matched else 1
    fig, axes = plt.subplots(rows, len(models), figsize=(6 * len(models), 4.2 * rows), dpi=110, squeeze=False)
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    for ax, model in zip(axes[0], models):
        for method in methods + ["control"]:
            pts = [(r["speedup"], r["accuracy_after"]) for (m, mo, _, _), r in results.items()
                   if m == method and mo == model and "infeasible" not in r]
            if pts:
                xs, ys = zip(*sorted(pts))
                ax.plot(xs, ys, "o-" if method != "control" else "*", label=method, color=colours.get(method, "k"))
        ax.set_title(f"{model}: each method landed on the target" + (", not recovered" if deferred else ""))
        ax.set_xlabel("measured speed-up (ONNX Runtime CPU, batch 1)")
        ax.set_ylabel("test accuracy %" + (" before recovery (the control: after)" if deferred else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax, model in zip(axes[1] if matched else [], models):
        for method in methods:
            pts = []
            for target in sorted({t for (mo, t, _) in matched if mo == model}):
                picks = [(reported(r)["speedups"][method], r["chosen"][method]["accuracy"])
                         for (mo, t, _), r in matched.items()
                         if mo == model and t == target and "accuracy" in r["chosen"].get(method, {})]
                if picks:
                    xs, ys = zip(*picks)
                    pts.append((statistics.mean(xs), statistics.mean(ys),
                                statistics.stdev(xs) if len(xs) > 1 else 0.0,
                                statistics.stdev(ys) if len(ys) > 1 else 0.0))
            if pts:
                x, y, xe, ye = zip(*pts)
                ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="s-", capsize=3, label=method, color=colours[method])
        seeds = sorted({s for (mo, _, s) in matched if mo == model})
        if not seeds:
            ax.axis("off")
            continue
        ax.set_title(f"{model}: matched latency (seeds {', '.join(map(str, seeds))})")
        ax.set_xlabel("speed-up, median of the fresh joint timings (ONNX Runtime CPU, batch 1)")
        ax.set_ylabel("test accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def jobs_of(args) -> list[tuple[str, str, float, int]]:
    """(method, model, target, seed) of every run: the controls, then the landing runs seed by seed (with
    shared networks only their seed lands)."""
    jobs = [("control", m, 1.0, s) for m in args.models for s in args.seeds]
    return jobs + [(meth, m, t, s) for s in args.seeds for m in args.models for t in args.targets
                   for meth in args.methods if network_seed(args, m) in (None, s)]


def check_args(args) -> None:
    """Inconsistent options: one line naming the problem, before any work."""
    def fail(msg: str):
        raise SystemExit(f"cnn_frontier: {msg}")
    if (args.recover_chosen_only or args.share_networks) and not args.matched:
        fail("--recover-chosen-only and --share-networks compare at matched latency: add --matched")
    for model in args.models if args.share_networks else []:
        seed = importance_seed(args, model)
        if seed is None:
            fail(f"--share-networks: {model} has no shared importance table (add --importance-seed {model}=SEED)")
        if seed not in args.seeds:
            fail(f"--share-networks: {model}'s networks come from seed {seed}, which is not in --seeds "
                 f"{' '.join(map(str, args.seeds))}")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet20_fmnist", "mobilenet_v2_fmnist"])
    ap.add_argument("--targets", nargs="+", type=float, default=[1.25, 1.5, 2.0])
    ap.add_argument("--methods", nargs="+", default=method_names())
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--recovery-epochs", nargs="+", default=["1.0"],
                    help="epochs for every model, or MODEL=EPOCHS pairs")
    ap.add_argument("--importance-seed", nargs="+", default=[],
                    help="MODEL=SEED (or SEED for all): share that seed's importance table across the seeds")
    ap.add_argument("--band", type=float, default=0.03)
    ap.add_argument("--timing-threads", type=int, default=None,
                    help="ONNX Runtime's threads for every timing (default: torch's, 2 here); training keeps torch's")
    ap.add_argument("--cache", default=None, help="depthcut cache (default: the user's)")
    ap.add_argument("--executor", default="local", help="importance entries: local, process or ray (same scores)")
    ap.add_argument("--workers", type=int, default=2, help="processes for --executor process")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--models-dir", default=str(MODELS_DIR),
                    help="where each run's deployable result is kept for the joint timing")
    ap.add_argument("--joint-rounds", type=int, default=200,
                    help="interleaved rounds of each joint timing (every method's network and the original)")
    ap.add_argument("--matched", action="store_true",
                    help="also compare at matched latency: every baseline's plan nearest LayerMerge's network in a "
                         "joint timing, recovered the same way (bench/matched_latency.py; stored in <out>/matched/)")
    ap.add_argument("--recover-chosen-only", action="store_true",
                    help="with --matched: do not recover the landing runs; recover each network chosen at matched "
                         "latency once (every chosen network gets the recovery budget, none gets it twice)")
    ap.add_argument("--share-networks", action="store_true",
                    help="with --matched and --importance-seed: the importance seed's runs land and match, and every "
                         "seed recovers those networks with its own seed (they do not depend on it)")
    ap.add_argument("--channels-last", action="store_true",
                    help="every fine-tune (importance, recovery, control) in channels_last: 1.2x (ResNet-20) to 1.7x "
                         "(MobileNetV2) faster on this CPU; the timings are ONNX Runtime's either way")
    ap.add_argument("--importance-steps", nargs="+", default=[],
                    help="MODEL=STEPS (or STEPS for all): each importance entry's fine-tune (default 20)")
    ap.add_argument("--importance-only", action="store_true",
                    help="score the importance tables the runs need into --cache and stop (times nothing)")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the table and plot from the stored runs; run nothing")
    return ap


def main() -> None:
    args = parser().parse_args()
    check_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clock = Clock(out / "clock.json", record=not args.report_only)
    if args.importance_only:
        with clock.phase("importance (--importance-only)"):
            return fill_importance(args)
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    jobs = jobs_of(args)
    started = time.time()
    for k, (method, model, target, seed) in enumerate(jobs, 1):
        path = runs / f"{model}-{method}-x{target}-s{seed}.json"
        cfg = (control_config(model, seed, args) if method == "control"
               else frontier_config(model, method, target, seed, args, landing=True))
        if path.exists():
            stored = json.loads(path.read_text())
            if reusable(stored, method, cfg):
                results[(method, model, target, seed)] = stored
                continue
            # a run with another recovery budget, importance seed or channel scope does not compare: redo it
        if args.report_only:
            continue
        print(f"[{k}/{len(jobs)}, {time.time() - started:.0f} s] {model} {method} x{target} seed {seed}", flush=True)
        with clock.phase("landing runs and controls (importance tables included)"):
            r = control(model, seed, args) if method == "control" else run_one(model, method, target, seed, args)
        atomic_write_json(path, r)
        results[(method, model, target, seed)] = r
        text = summarise(results, args.models, args.targets, args.methods, args.seeds, args, clock=clock.data)
        atomic_write_text(out.with_suffix(".md"), text)
    with clock.phase("joint timings of the landed networks"):
        joint = joint_timings(results, args, out / "joint")
    matched = matched_results(results, args, out / "matched", clock) if args.matched else {}
    text = summarise(results, args.models, args.targets, args.methods, args.seeds, args, joint, matched, clock.data)
    atomic_write_text(out.with_suffix(".md"), text + f"\n![accuracy vs speed-up]({out.name}.png)\n")
    plot(results, args.models, args.methods, out.with_suffix(".png"), matched, args.recover_chosen_only)
    print(text)


if __name__ == "__main__":
    main()
