"""Does adaptive importance give the full table's plan on the embedded DDPM? (issue 30)

``bench/ddpm_compress.py --importance-mode adaptive`` and ``--importance-mode full`` land separately: each
landing measures its own probes, so the two can deploy different plans for timing reasons alone. This check
isolates the importance: at every budget either landing probed, the DP's answer over the full table against
the adaptive frontier's (depthcut.diffusion.pipeline.adaptive_frontier), both on the same latency rows, and
how many rows the adaptive frontier had fine-tuned by then. Entries come from the importance cache the two
runs filled (a missing one is computed with the same recipe: same store, same seed).

    python bench/ddpm_adaptive_check.py [--adaptive bench/results/ddpm_adaptive] [--full bench/results/ddpm_adaptive/full]

Writes ``--adaptive``/dp_check.json and .md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from depthcut.cache import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adaptive", default=str(ROOT / "bench" / "results" / "ddpm_adaptive"))
    ap.add_argument("--full", default=str(ROOT / "bench" / "results" / "ddpm_adaptive" / "full"))
    ap.add_argument("--target", default="1.25")
    args = ap.parse_args()

    from depthcut.diffusion import pipeline as P
    from depthcut.diffusion import score as S
    from depthcut.diffusion.cli import images_for, load_unet
    from depthcut.diffusion.search import frontier
    from depthcut.diffusion.unet import enumerate_rows

    runs = {mode: json.loads((Path(folder) / "runs" / f"x{args.target}.json").read_text())
            for mode, folder in (("adaptive", args.adaptive), ("full", args.full))}
    config = P.GenerationConfig.from_dict({**runs["adaptive"]["config"], "progress": False})
    unet, scheduler = load_unet("ddpm_fmnist")
    images = images_for("fashion-mnist", unet)
    n_ft, n_sc = config.finetune_size, config.score_size
    finetune, held = images[:n_ft], images[n_ft:n_ft + n_sc]
    base = S.denoising_loss(unet, held, scheduler, seed=config.seed + 1)
    rows = enumerate_rows(unet, batch=config.batch)
    latency = S.latency_rows(unet, rows, config.backend, batch=config.batch, cache_dir=config.cache_dir)
    full = frontier(rows, latency, P.importance_table(unet, rows, finetune, held, scheduler, base, config),
                    steps=config.dp_steps)
    adaptive = P.adaptive_frontier(unet, rows, latency, finetune, held, scheduler, base, config)
    budgets = sorted({round(p["budget"], 6) for r in runs.values() for p in r["probes"]}, reverse=True)
    checks = []
    for budget in budgets:
        f, a = full.best(budget), adaptive.best(budget)
        checks.append({"budget_ms": budget, "same_plan": sorted(r.ref.key for r in f.rows) == sorted(
            r.ref.key for r in a.rows), "full_importance": f.importance, "adaptive_importance": a.importance,
            "finetuned_so_far": adaptive.stats.finetuned, "scored_rows": adaptive.stats.candidates})
    report = {"target": args.target, "checks": checks, "adaptive_stats": adaptive.stats.to_dict(),
              "landed": {mode: {"speedup": r["speedup"], "fd_ratio": r["quality"]["fd_ratio"],
                                "fd_compressed": r["quality"]["fd_compressed"], "plan": r["plan"]}
                         for mode, r in runs.items()}}
    out = Path(args.adaptive) / "dp_check"
    atomic_write_json(out.with_suffix(".json"), report)
    lines = [f"# Adaptive vs full importance on the embedded DDPM, x{args.target}: `python bench/ddpm_adaptive_check.py`",
             "", "The DP's answer at every budget either landing probed, over the same latency rows.", "",
             "| budget (ms) | same plan | importance full / adaptive | rows fine-tuned by then |",
             "|---|---|---|---|"]
    for c in checks:
        lines.append(f"| {c['budget_ms']:.3f} | {'yes' if c['same_plan'] else 'no'} | {c['full_importance']:.5f} / "
                     f"{c['adaptive_importance']:.5f} | {c['finetuned_so_far']} of {c['scored_rows']} |")
    lines += ["", "| landing | measured speed-up | Fréchet distance (ratio to the original's) |", "|---|---|---|"]
    for mode, r in report["landed"].items():
        lines.append(f"| {mode} | x{r['speedup']:.2f} | {r['fd_compressed']:.3f} ({r['fd_ratio']:.3f}) |")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
