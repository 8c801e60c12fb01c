"""The importance table at a fraction of its fine-tunes, with the same plans? (issue 30)

For each model and seed, ``depthcut.compress`` runs twice per target speed-up on the same latency table (the
adaptive run's cache starts from a copy of the full run's latency rows and latency model, so the two differ
in importance only):

* ``full``: every candidate fine-tuned (the importance table as LayerMerge computes it);
* ``adaptive``: ``importance_mode="adaptive"`` (depthcut.importance.adaptive): a cheap score for every
  candidate, a random sample and the candidates the DP's answers depend on fine-tuned. Its targets share one
  cache, so a later target fine-tunes only the candidates newly in contention.

Reported per (model, seed): fine-tunes used against the full table's entries, the importance stage's wall
time in each mode (the full table's as computed for the first target; the adaptive one summed over the
targets), and per target: the landed plan of each mode, its recovered accuracy and fresh measured speed-up,
and the DP's answer in each mode at the budget the full run landed on (the modelled body of its plan): the
same plan, or not.

    python bench/importance_adaptive.py [--models resnet20_fmnist mobilenet_v2_fmnist] [--targets 1.5 2.0]
                                        [--seeds 0 1 2] [--recovery-epochs 0.25] [--cache DIR]

Resumable: each (model, seed, mode, target) run is written to ``--out``/runs/ as it finishes and skipped
when present. Writes ``--out``.json and ``--out``.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from depthcut.cache import atomic_write_json, atomic_write_result
from depthcut.cnn.build import is_trivial
from depthcut.compression import Compression
from depthcut.config import LayerMergeConfig
from depthcut.importance import stored_cost

from cnn_frontier import per_model

ROOT = Path(__file__).resolve().parents[1]


def run_config(args, model: str, mode: str, target: float, seed: int, cache: Path) -> LayerMergeConfig:
    return LayerMergeConfig(speedup=target, data="fashion-mnist", seed=seed, importance_mode=mode,
                            importance_steps=int(per_model(args.importance_steps, model, "20")),
                            timing_threads=args.timing_threads,
                            adaptive_tolerance=args.adaptive_tolerance if mode == "adaptive" else 0.0,
                            recovery_epochs=args.recovery_epochs, channels_last=True, cache_dir=str(cache),
                            progress=not args.quiet)


def one_run(args, model: str, mode: str, target: float, seed: int, cache: Path) -> dict:
    compression = Compression(model, run_config(args, model, mode, target, seed, cache))
    t0 = time.time()
    compression.importance
    importance_s = time.time() - t0
    result = compression.result()
    r = result.report
    out = {"model": model, "mode": mode, "target": target, "seed": seed,
           "plan": [c.key for c in result.plan.blocks if not is_trivial(c)],
           "modelled_body_ms": r["chosen_modelled_body_ms"], "accuracy_before": r["accuracy_before"],
           "accuracy_after": r["accuracy_after"], "speedup": r["speedup"], "speedup_low": r["speedup_low"],
           "speedup_high": r["speedup_high"], "target_met": r["target_met"],
           "importance_seconds": importance_s, "candidates": r["candidates"] - r["candidates_dominated"]}
    cost = stored_cost(cache)
    out["finetuned_entries_after"] = cost.finetuned       # in this cache, over the targets so far
    out["entry_seconds_after"] = cost.seconds             # what they cost, whichever invocation ran them
    if mode == "adaptive":
        out["adaptive"] = r["importance_adaptive"]
        out["importance_seconds"] = r["importance_adaptive"]["seconds"]
    return out


def same_budget_plans(args, model: str, seed: int, mode: str, cache: Path, budgets: list[float]
                      ) -> list[list[str]]:
    """The DP's answers at ``budgets`` with ``mode``'s importance (adaptive: after its own runs, refining what
    these budgets need). The landings probe measured plans, so equal tables can land apart; the DP's answer
    at one budget is what the two importance stages must agree on."""
    compression = Compression(model, run_config(args, model, mode, args.targets[0], seed, cache))
    return [sorted(r.ref.key for r in compression.frontier.best(b).rows if not is_trivial(r.ref)) for b in budgets]


def stage_times(s: dict) -> str:
    """One seed's stage-time cells: the entries' compute time in each mode and the ratio ("-" for runs
    written before entries' times were kept), then the invocations' wall times."""
    if "full_wall_seconds" not in s:          # a report from before: its "seconds" were the wall times
        s = {**s, "full_wall_seconds": s["full_seconds"], "adaptive_wall_seconds": s["adaptive_seconds"],
             "full_seconds": None, "adaptive_seconds": None}
    full, adaptive = s["full_seconds"], s["adaptive_seconds"]
    computed = (f"{adaptive:.0f} s / {full:.0f} s | x{full / max(adaptive, 1e-9):.1f}" if full and adaptive
                else "- | -")
    wall_full, wall_adaptive = s["full_wall_seconds"], s["adaptive_wall_seconds"]
    wall = f"{wall_adaptive:.0f} s / {wall_full:.0f} s" if wall_full and wall_adaptive else "-"
    return f"{computed} | {wall}"


def markdown(report: dict) -> str:
    lines = [f"# Adaptive importance against the full table: `{report['command']}`", "",
             f"{report['machine']}. Each (model, seed): both modes on one latency table; recovery "
             f"{report['recovery_epochs']} epochs for both. Fine-tunes: entries fine-tuned over all targets of "
             f"the seed, against the full table's. Stage time: the compute time its entries (fine-tuned and cheap) "
             f"recorded when computed, whichever invocation computed them; the wall time of the invocations that "
             f"ran the stage is beside it (it omits what a killed invocation had already cached).", "",
             "| model | seed | fine-tunes (adaptive / full) | stage time adaptive / full | x shorter | "
             "wall time adaptive / full | margin (points) |", "|---|---|---|---|---|---|---|"]
    for s in report["seeds"]:
        lines.append(f"| {s['model']} | {s['seed']} | {s['finetuned']} / {s['full_entries']} "
                     f"({s['finetuned'] / s['full_entries']:.0%}) | {stage_times(s)} | {s['margin']:.2f} |")
    lines += ["", "| model | target | seed | same plan landed | same DP answer at the full run's budget | "
                  "accuracy full / adaptive | speed-up full / adaptive |", "|---|---|---|---|---|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['model']} | x{t['target']:g} | {t['seed']} | {'yes' if t['same_landed'] else 'no'} | "
                     f"{'yes' if t['same_at_budget'] else 'no'} | {t['full']['accuracy_after']:.2f} / "
                     f"{t['adaptive']['accuracy_after']:.2f} | x{t['full']['speedup']:.2f} / "
                     f"x{t['adaptive']['speedup']:.2f} |")
    lines += ["", "Mean over seeds:", "", "| model | target | accuracy full | accuracy adaptive | difference |",
              "|---|---|---|---|---|"]
    for model, target in dict.fromkeys((t["model"], t["target"]) for t in report["targets"]):
        rows = [t for t in report["targets"] if t["model"] == model and t["target"] == target]
        full = statistics.mean(t["full"]["accuracy_after"] for t in rows)
        adaptive = statistics.mean(t["adaptive"]["accuracy_after"] for t in rows)
        lines.append(f"| {model} | x{target:g} | {full:.2f} | {adaptive:.2f} | {adaptive - full:+.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet20_fmnist", "mobilenet_v2_fmnist"])
    ap.add_argument("--targets", nargs="+", type=float, default=[1.5, 2.0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--recovery-epochs", type=float, default=0.25)
    ap.add_argument("--importance-steps", nargs="+", default=["mobilenet_v2_fmnist=10"],
                    help="fine-tune steps per importance entry, MODEL=STEPS pairs (default 20; the frontier "
                         "benchmark's recipe)")
    ap.add_argument("--timing-threads", type=int, default=1,
                    help="threads of the latency timings (the frontier benchmark's 1: steadier on 2 cores)")
    ap.add_argument("--modes", nargs="+", default=["full", "adaptive"], choices=["full", "adaptive"],
                    help="run only these modes (the report is written when both have run)")
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "importance_adaptive"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "importance_adaptive"))
    ap.add_argument("--adaptive-tolerance", type=float, default=0.0,
                    help="accuracy points the adaptive plan may give away (its runs get their own cache)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    import platform

    import torch
    out, cache = Path(args.out), Path(args.cache)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    report = {"command": "python bench/importance_adaptive.py " + " ".join(
                  f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                  for k, v in vars(args).items()
                  if k in ("models", "targets", "seeds", "recovery_epochs", "importance_steps", "timing_threads",
                           "adaptive_tolerance")),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
              "recovery_epochs": args.recovery_epochs, "seeds": [], "targets": []}
    for model in args.models:
        for seed in args.seeds:
            tolerance = f"-tol{args.adaptive_tolerance:g}" if args.adaptive_tolerance else ""
            full_cache, adaptive_cache = cache / f"{model}-s{seed}-full", cache / f"{model}-s{seed}-adaptive{tolerance}"
            runs = {}
            for mode, where in (("full", full_cache), ("adaptive", adaptive_cache)):
                if mode not in args.modes:
                    continue
                if mode == "adaptive" and not (adaptive_cache / "latency").exists():
                    shutil.copytree(full_cache / "latency", adaptive_cache / "latency")   # the same latency table
                for target in args.targets:
                    path = out / "runs" / f"{model}-s{seed}-{mode}-x{target:g}.json"
                    if not path.exists():
                        run = one_run(args, model, mode, target, seed, where)
                        atomic_write_json(path, run)
                    runs[(mode, target)] = json.loads(path.read_text())
            if len(args.modes) < 2:
                continue
            finetuned = runs[("adaptive", args.targets[-1])]["finetuned_entries_after"]   # the runs' own, before ...
            budgets = [runs[("full", t)]["modelled_body_ms"] for t in args.targets]
            at_budget = same_budget_plans(args, model, seed, "adaptive", adaptive_cache, budgets)  # ... this adds its own
            full_at_budget = same_budget_plans(args, model, seed, "full", full_cache, budgets)
            report["seeds"].append({
                "model": model, "seed": seed, "full_entries": stored_cost(full_cache).finetuned,
                "finetuned": finetuned, "finetuned_with_comparison": stored_cost(adaptive_cache).finetuned,
                # the stage's time: its entries' own compute time (resume-invariant); the invocations' wall times
                # beside it undercount whatever a killed invocation had already computed
                "full_seconds": runs[("full", args.targets[0])].get("entry_seconds_after"),
                "adaptive_seconds": runs[("adaptive", args.targets[-1])].get("entry_seconds_after"),
                "full_wall_seconds": runs[("full", args.targets[0])]["importance_seconds"],
                "adaptive_wall_seconds": sum(runs[("adaptive", t)]["importance_seconds"] for t in args.targets),
                "margin": runs[("adaptive", args.targets[0])]["adaptive"]["margin"]})
            for target, plan, want in zip(args.targets, at_budget, full_at_budget):
                full, adaptive = runs[("full", target)], runs[("adaptive", target)]
                report["targets"].append({"model": model, "target": target, "seed": seed, "full": full,
                                          "adaptive": adaptive, "same_landed": full["plan"] == adaptive["plan"],
                                          "same_at_budget": plan == want, "budget_ms": full["modelled_body_ms"],
                                          "full_at_budget": want, "adaptive_at_budget": plan})
            atomic_write_result(out, report, markdown(report))        # after every seed: a partial report
    print(f"wrote {out}.md")


if __name__ == "__main__":
    main()
