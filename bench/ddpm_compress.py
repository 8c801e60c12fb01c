"""LayerMerge on the embedded Fashion-MNIST DDPM (issue 11): measured sampling speed-up and Fréchet distance.

For each target speed-up, ``depthcut.diffusion.pipeline.compress_unet`` runs the whole pipeline on the embedded
``ddpm_fmnist`` U-Net (scripts/train_ddpm.py): rows, latency rows, denoising-loss importance, the DP, landing on
the measured DDIM-loop speed-up (CPU eager, paired rounds), the intended-function check, the recovery
fine-tune, and the Fréchet distance of samples to held-out Fashion-MNIST images in the embedded classifier's
feature space (not Inception FID), against the test split. Each result is written atomically to ``--out``/runs/x<target>.json as it
finishes and skipped when present (resumable); ``--out``.md gets the table and the issue's bar (speed-up >= 1.25
with the Fréchet distance within 10% of the original's).

    python bench/ddpm_compress.py [--targets 1.25 1.4] [--recovery-steps 2000] [--fd-samples 512]

``--importance-mode adaptive`` (issue 30) fine-tunes only the rows that can change the plan; its runs go to
their own ``--out`` (bench/results/ddpm_adaptive), and the table states how many rows were fine-tuned.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from depthcut.cache import atomic_write_json, atomic_write_text  # noqa: E402

OUT = ROOT / "bench" / "results" / "ddpm_compress"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", type=float, default=[1.25, 1.4])
    ap.add_argument("--importance-steps", type=int, default=100)
    ap.add_argument("--recovery-steps", type=int, default=2000)
    ap.add_argument("--recovery-ema", type=float, default=0.999)
    ap.add_argument("--recovery-kd-weight", type=float, default=0.0)
    ap.add_argument("--importance-reference", default="finetuned", choices=["finetuned", "original"])
    ap.add_argument("--importance-mode", default="full", choices=["full", "adaptive"])
    ap.add_argument("--sampling-steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--fd-samples", type=int, default=512)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()

    from depthcut.diffusion.cli import ClassifierFeatures, images_for, load_unet
    from depthcut.diffusion.pipeline import GenerationConfig, compress_unet
    from depthcut.errors import InfeasibleBudgetError

    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    unet, scheduler = load_unet("ddpm_fmnist")
    images = images_for("fashion-mnist", unet)
    features = ClassifierFeatures()
    for target in args.targets:
        path = out / "runs" / f"x{target}.json"
        config = GenerationConfig(speedup=target, batch=args.batch, sampling_steps=args.sampling_steps,
                                  importance_steps=args.importance_steps, recovery_steps=args.recovery_steps,
                                  recovery_ema=args.recovery_ema, recovery_kd_weight=args.recovery_kd_weight,
                                  importance_reference=args.importance_reference, fd_samples=args.fd_samples,
                                  importance_mode=args.importance_mode)
        if path.exists():
            if same_recipe(json.loads(path.read_text()).get("config", {}), config.to_dict()):
                continue                                # done with this recipe
            supersede(out / "runs", target)             # another recipe: kept for the table, and redone
        try:
            result = compress_unet(unet, scheduler, images, config, features=features,
                                   real=images_for("fashion-mnist", unet, "test"))
            # the compressed U-Net and its pipeline (weights, ~17 MB) go to the cache; the results keep the
            # report and the sample grid
            saved = result.save_pretrained(ROOT / ".cache" / out.name / f"x{target}")
            for name in ("report.md", "samples.png"):
                shutil.copy(saved / name, out / "runs" / f"x{target}-{name}")
            atomic_write_json(path, result.report)
        except InfeasibleBudgetError as e:
            atomic_write_json(path, {"infeasible": str(e), "config": config.to_dict()})
    command = "python bench/ddpm_compress.py" + (f" --importance-mode {args.importance_mode} --out "
                                                 f"{Path(args.out).relative_to(ROOT) if Path(args.out).is_relative_to(ROOT) else args.out}"
                                                 if args.importance_mode != "full" else "")
    lines = [f"# LayerMerge on the embedded Fashion-MNIST DDPM (`{command}`)", "",
             "Sampling: DDIM, CPU eager, paired interleaved rounds (median ratio, 95% interval). Quality: Fréchet "
             "distance to held-out Fashion-MNIST images in the embedded classifier's feature space (not Inception "
             "FID).", "",
             "Per run: `runs/x<target>-report.md` (stages, probes, plan) and `runs/x<target>-samples.png` "
             "(original vs compressed).", "",
             "| target | recipe (importance reference; recovery) | importance | measured speed-up (95% CI) | "
             "merged blocks | identity up-samplers | FD original | FD compressed | ratio | bar met |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    runs = [(f"x{t}", out / "runs" / f"x{t}.json") for t in args.targets]
    runs += [(f"x{p.stem.split('-')[0][1:]} (superseded)", p)
             for p in sorted((out / "runs" / "superseded").glob("*.json"))]
    for label, run in runs:
        r = json.loads(run.read_text())
        if "infeasible" in r:
            lines.append(f"| {label} | {recipe(r['config'])} | | infeasible: {r['infeasible']} | | | | | | no |")
            continue
        q = r["quality"]
        met = r["speedup"] >= 1.25 and q["fd_ratio"] <= 1.10
        lines.append(f"| {label} | {recipe(r['config'])} | {importance_cell(r)} | x{r['speedup']:.2f} "
                     f"[{r['speedup_low']:.2f}, "
                     f"{r['speedup_high']:.2f}] | {r['merged_blocks']} | {r.get('identity_upsamplers', '')} | "
                     f"{q['fd_original']:.3f} | {q['fd_compressed']:.3f} | "
                     f"{q['fd_ratio']:.3f} | {'yes' if met else 'no'} |")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


def same_recipe(stored: dict, wanted: dict) -> bool:
    """A stored run answers for ``wanted`` when every field but the progress display agrees. Runs stored before
    a field existed ran without it: recovery without EMA or distillation."""
    from depthcut.diffusion.pipeline import GenerationConfig

    before = GenerationConfig().to_dict() | {"recovery_ema": 0.0, "recovery_kd_weight": 0.0,
                                             "importance_reference": "original"}
    return all({**before, **stored}.get(k) == v for k, v in wanted.items() if k != "progress")


def supersede(runs: Path, target: float) -> None:
    """Move a stored run of another recipe (its json, report and samples) to runs/superseded/, numbered."""
    old = runs / "superseded"
    old.mkdir(exist_ok=True)
    n = len(list(old.glob(f"x{target}-*.json"))) + 1
    for name in ("report.md", "samples.png"):
        if (runs / f"x{target}-{name}").exists():
            (runs / f"x{target}-{name}").replace(old / f"x{target}-{n}-{name}")
    (runs / f"x{target}.json").replace(old / f"x{target}-{n}.json")


def recipe(config: dict) -> str:
    out = f"importance vs {config.get('importance_reference', 'original')}; {config.get('recovery_steps')} steps"
    if config.get("recovery_ema"):
        out += f", EMA {config['recovery_ema']:g}"
    if config.get("recovery_kd_weight"):
        out += f", KD {config['recovery_kd_weight']:g}"
    return out


def importance_cell(report: dict) -> str:
    """How the importance was computed: the full table, or adaptive with its fine-tune count."""
    a = report.get("importance_adaptive")
    if not a:
        return "full table"
    return (f"adaptive: {a['finetuned']} of {a['candidates']} rows fine-tuned ({a['sampled']} sampled, "
            f"{a['refined']} refined), margin {a['margin']:.3f}, {a['seconds']:.0f} s")


if __name__ == "__main__":
    main()
