"""``compress_unet``: LayerMerge on a diffusion U-Net, as a sequence of named stages (the classifier pipeline's
shape, with the generation importance and metric).

rows (depthcut.diffusion.unet) -> latency rows (per U-Net call at the sampling batch) -> importance
(denoising loss after a short fine-tune, per row) -> the LayerMerge DP -> land on the measured *sampling*
speed-up (whole DDIM loops, paired rounds; depthcut.search.target) -> the compressed U-Net, checked against the
intended function -> recovery fine-tune -> Fréchet distance of samples (original and compressed) -> report.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..configbase import ConfigBase, at_least
from ..errors import DepthcutError
from ..log import Stages
from .unet import Row

CONFIG_VERSION = 1
REFERENCES = ("finetuned", "original")
IMPORTANCE_MODES = ("full", "adaptive")


@dataclass
class GenerationConfig(ConfigBase):
    """What decides a U-Net compression (JSON round-trips)."""

    speedup: float = 1.25                # measured speed-up of the DDIM sampling loop
    backend: str = "eager"               # latency rows and the sampling loop run in PyTorch on ``device``
    batch: int = 8                       # sampling batch (rows are timed at it)
    sampling_steps: int = 20             # DDIM steps per timed sampling run
    importance_steps: int = 100          # LayerMerge: 100 Adam steps on 500 images, scored on 500 others
    importance_lr: float = 2e-4
    # what a row's fine-tuned loss is scored against: "finetuned", the original through the same fine-tune
    # (score.finetuned_loss: the score measures the row, not the fine-tune), or "original", its loss untouched
    importance_reference: str = "finetuned"
    # "full": every row fine-tuned; "adaptive": a cheap score for every row (its loss with no fine-tune), a
    # fine-tuned random sample bounding the rest, and only the rows that can change the DP's plan fine-tuned
    # (depthcut.importance.adaptive, as for classifiers)
    importance_mode: str = "full"
    adaptive_tolerance: float = 0.0      # importance the adaptive plan may give away to stop refining earlier
    finetune_size: int = 500
    score_size: int = 500
    recovery_steps: int = 500
    recovery_lr: float = 1e-4
    # recovery target: (1 - w) true noise + w the original U-Net's prediction. 0 by default: on the embedded
    # DDPM's x1.33 plan, w = 0.5 / 1 gave FD x1.39 / x1.61 vs x1.34 at w = 0 (bench/results/ddpm_recovery_study.md)
    recovery_kd_weight: float = 0.0
    # the recovered U-Net is the exponential moving average of its weights over the recovery (0: the last
    # step's weights; see score.finetune). 0.999, as the embedded DDPM was trained: on its x1.33 plan, FD x1.11 of
    # the original's vs x1.32 with the last step's weights (bench/results/ddpm_recovery_study_cpu.md)
    recovery_ema: float = 0.999
    dp_steps: int = 2000
    max_probes: int = 6
    speed_tolerance: float = 0.10
    fd_samples: int = 256                # generated images per Fréchet distance
    seed: int = 0
    cache_dir: str | None = None         # importance entries (None: $DEPTHCUT_CACHE or ~/.cache/depthcut)
    progress: bool = True
    version: int = CONFIG_VERSION

    KIND: ClassVar[str] = "generation config"

    def __post_init__(self) -> None:
        self.check_types()
        at_least("speedup", self.speedup, 1.0, inclusive=False)
        for name in ("batch", "sampling_steps", "finetune_size", "score_size", "dp_steps", "max_probes",
                     "fd_samples"):
            at_least(name, getattr(self, name), 1)
        for name in ("importance_steps", "recovery_steps"):
            at_least(name, getattr(self, name), 0)
        at_least("recovery_kd_weight", self.recovery_kd_weight, 0.0)
        if self.recovery_kd_weight > 1:
            raise DepthcutError(f"config field 'recovery_kd_weight' must be <= 1, got {self.recovery_kd_weight}")
        if self.importance_reference not in REFERENCES:
            raise DepthcutError(f"config field 'importance_reference' must be one of {', '.join(REFERENCES)}, got "
                                f"{self.importance_reference!r}")
        if self.importance_mode not in IMPORTANCE_MODES:
            raise DepthcutError(f"config field 'importance_mode' must be one of {', '.join(IMPORTANCE_MODES)}, got "
                                f"{self.importance_mode!r}")
        at_least("adaptive_tolerance", self.adaptive_tolerance, 0.0)
        if not 0 <= self.recovery_ema < 1:
            raise DepthcutError(f"config field 'recovery_ema' must be in [0, 1), got {self.recovery_ema}")


@dataclass
class GenerationResult:
    model: nn.Module                     # DepthcutUNet2DModel (a diffusers UNet2DModel)
    plan: list[Row]
    report: dict[str, Any]
    scheduler: Any = None
    samples: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def save_pretrained(self, out: str | Path) -> Path:
        """``unet/`` (from_pretrained), ``pipeline/`` (a DDIMPipeline that samples), report.json/.md, and
        ``samples.png`` (original vs compressed) when samples were drawn."""
        from diffusers import DDIMPipeline, DDIMScheduler

        from ..cache import atomic_write_json, atomic_write_text

        out = Path(out)
        self.model.save_pretrained(out / "unet")
        if self.scheduler is not None:
            DDIMPipeline(unet=self.model, scheduler=DDIMScheduler.from_config(self.scheduler.config)).save_pretrained(
                out / "pipeline")
        atomic_write_json(out / "report.json", self.report)
        atomic_write_text(out / "report.md", report_markdown(self.report))
        if self.samples:
            save_grid(self.samples, out / "samples.png")
        return out


def _recover(model: nn.Module, unet: nn.Module, scheduler, data: torch.Tensor, held: torch.Tensor,
             config: GenerationConfig, stages: Stages) -> float:
    """The recovery fine-tune of the compressed U-Net (distilled from the original, with an EMA of the
    weights, as configured); returns its denoising loss on the held-out images."""
    from . import score as S

    stages.start("recovery", f"recovery fine-tune: {config.recovery_steps} steps"
                             + (f", distilling from the original (weight {config.recovery_kd_weight})"
                                if config.recovery_kd_weight else "")
                             + (f", EMA {config.recovery_ema} of the weights" if config.recovery_ema else ""))
    S.finetune(model, data, scheduler, config.recovery_steps, config.recovery_lr,
               seed=config.seed, teacher=unet, kd_weight=config.recovery_kd_weight, ema=config.recovery_ema)
    return S.denoising_loss(model, held, scheduler, seed=config.seed + 1)

def compress_unet(unet: nn.Module, scheduler, images: torch.Tensor, config: GenerationConfig | None = None,
                  features: nn.Module | None = None, real: torch.Tensor | None = None, *,
                  out: str | Path | None = None) -> GenerationResult:
    """Compress ``unet`` (a diffusers UNet2DModel; not modified) to ``config.speedup`` measured sampling speed-up.

    ``images`` ([N, C, H, W] in [-1, 1]) give the fine-tune, scoring and recovery data (disjoint, in that order);
    ``features`` (a module mapping images to feature vectors, e.g. a classifier's penultimate layer) enables
    the Fréchet distance of samples against ``real`` (default: the images after the fine-tune and scoring ones;
    pass a test split)."""
    from . import score as S
    from .model import DepthcutUNet2DModel
    from .unet import enumerate_rows

    config = config or GenerationConfig()
    stages = Stages("compress generation", enabled=config.progress)
    t0 = time.time()
    n_ft, n_sc = config.finetune_size, config.score_size
    if len(images) < n_ft + n_sc + 1:
        raise DepthcutError(f"{len(images)} images: need more than finetune_size + score_size = {n_ft + n_sc}")
    finetune, held, rest = images[:n_ft], images[n_ft:n_ft + n_sc], images[n_ft + n_sc:]
    unet = unet.eval()

    stages.start("rows", "reading the U-Net's (block, option) rows")
    rows = enumerate_rows(unet, batch=config.batch)
    stages.say(f"{len(rows)} rows over {sum(r.kind == 'resnet' for r in rows) // 4} ResNet blocks")

    stages.start("latency", f"latency rows on {config.backend} (batch {config.batch})")
    latency = S.latency_rows(unet, rows, config.backend, batch=config.batch, cache_dir=config.cache_dir,
                             progress=config.progress)

    front, base_loss, reference = _importance_frontier(unet, rows, latency, finetune, held, scheduler, config,
                                                       stages)

    stages.start("search", "LayerMerge DP over the rows, then landing on the measured sampling speed-up")
    landing, full = _land(unet, scheduler, rows, latency, front, config, stages)
    plan = [r.ref for r in landing.plan.rows]
    model = DepthcutUNet2DModel.from_unet(unet, plan)
    error = _check_intended(unet, plan, model)
    stages.say(f"compressed U-Net equals the plan's intended function: relative error {error['structure']:.1e} "
               f"(float64 rewrite), {error['deployed']:.1e} (deployed, {model.dtype})")

    loss_after = _recover(model, unet, scheduler, rest if len(rest) else finetune, held, config, stages)

    stages.start("measure", "final sampling speed-up")
    final = S.compare_sampling(unet, model, scheduler, config.batch, config.sampling_steps)
    samples, quality = {}, None
    if features is not None:
        stages.start("quality", f"Fréchet distance of {config.fd_samples} samples each")
        samples, quality = _quality(unet, model, scheduler, real if real is not None else rest, features, config)
    stages.end()
    losses = {"loss_before": base_loss, "importance_reference_loss": reference, "loss_after_recovery": loss_after}
    report = _report(config, rows, plan, error, landing, full, final, losses, quality, stages, t0)
    if config.importance_mode == "adaptive":    # entries fine-tuned (sample + refinements), cheap only, seconds
        report["importance_adaptive"] = front.stats.to_dict()
    result = GenerationResult(model, plan, report, scheduler, samples)
    if out is not None:
        result.save_pretrained(out)
    return result


def _importance_frontier(unet: nn.Module, rows, latency, finetune, held, scheduler, config: GenerationConfig,
                         stages):
    """The importance stage: each row's denoising loss after a short fine-tune (all rows, or adaptively a
    sample and the contenders), and the frontier of plans over it. Also the original's loss and the
    reference the scores are taken against."""
    from . import score as S
    from .search import frontier

    stages.start("importance", f"importance: {config.importance_steps} fine-tune steps per row, loss on "
                               f"{config.score_size} held-out images")
    base_loss = S.denoising_loss(unet, held, scheduler, seed=config.seed + 1)
    reference = importance_reference(unet, finetune, held, scheduler, base_loss, config)
    stages.say(f"reference loss {reference:.5f} ({config.importance_reference}; the original's {base_loss:.5f})")
    if config.importance_mode == "adaptive":
        front = adaptive_frontier(unet, rows, latency, finetune, held, scheduler, base_loss, config, stages.say)
    else:
        front = frontier(rows, latency, importance_table(unet, rows, finetune, held, scheduler, base_loss, config),
                         steps=config.dp_steps)
    return front, base_loss, reference


def _report(config: GenerationConfig, rows, plan, error, landing, full: float, final, losses: dict[str, float],
            quality, stages, t0: float) -> dict[str, Any]:
    """report.json of a compressed U-Net: the plan, its checks, the landing, the final timing, the losses."""
    return {
        "version": CONFIG_VERSION, "config": config.to_dict(), "rows": len(rows),
        "plan": [r.key for r in plan], "merged_blocks": sum(r.span == "conv1+conv2" for r in plan),
        # of those, the blocks left with one 3x3 conv (the other pruned) rather than one 5x5 merge
        "one_conv_blocks": sum(r.span == "conv1+conv2" and len(r.kept) == 1 for r in plan),
        "identity_upsamplers": sum(r.kind == "upsample" and not r.kept for r in plan),
        "intended_structure_error": error["structure"], "intended_relative_error": error["deployed"],
        "modelled_ms_per_call": landing.plan.latency_ms, "original_modelled_ms_per_call": full,
        "probes": [p.to_dict() for p in landing.probes], "landing_overshoot": landing.overshoot,
        "speedup": final.ratio, "speedup_low": final.low, "speedup_high": final.high,
        "sampling_ms_before": final.original_ms, "sampling_ms_after": final.compressed_ms,
        "sampling_protocol": f"DDIM, {config.sampling_steps} steps, batch {config.batch}, {config.backend}, paired "
                             f"interleaved rounds (median ratio, 95% interval)",
        **losses,
        "quality": quality,
        "timings_s": dict(stages.timings), "seconds": time.time() - t0,
    }


def _importance_store(unet, finetune: torch.Tensor, held: torch.Tensor, scheduler, config: GenerationConfig,
                      cheap: bool = False):
    """The cache of one importance table: the manifest pins everything the scores depend on (weights, data,
    scheduler, recipe, reference, seed). ``cheap``: the adaptive mode's cheap scores (no fine-tune, against the
    original's loss), in their own store."""
    from ..cache import DEFAULT_CACHE_DIR, EntryStore, fingerprint, state_fingerprint

    manifest = {"table": "diffusion-importance", "format": 2, "unet": state_fingerprint(unet),
                "images": state_fingerprint({"finetune": finetune, "held": held}),
                "scheduler": {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")},
                "steps": 0 if cheap else config.importance_steps, "lr": config.importance_lr,
                "reference": "original" if cheap else config.importance_reference, "seed": config.seed}
    root = Path(config.cache_dir) if config.cache_dir is not None else DEFAULT_CACHE_DIR
    return EntryStore(root / "importance" / fingerprint(manifest), manifest)


REFERENCE_KEY = "__reference__"                  # not a row key (those are module paths with a span)


def importance_reference(unet, finetune: torch.Tensor, held: torch.Tensor, scheduler, base_loss: float,
                         config: GenerationConfig, store=None) -> float:
    """The loss the rows are scored against: ``base_loss`` (the original's), or, for the "finetuned" reference,
    the original after the rows' own fine-tune (one fine-tune, cached with the table's entries in ``store``,
    opened here when not given)."""
    from . import score as S

    if config.importance_reference == "original":
        return base_loss
    store = store if store is not None else _importance_store(unet, finetune, held, scheduler, config)
    if REFERENCE_KEY not in store:
        store[REFERENCE_KEY] = S.finetuned_loss(unet, [], finetune, held, scheduler, config.importance_steps,
                                                config.importance_lr, config.seed)
    return float(store[REFERENCE_KEY])


def importance_table(unet, rows, finetune: torch.Tensor, held: torch.Tensor, scheduler, base_loss: float,
                     config: GenerationConfig) -> dict[str, float]:
    """Every row's importance, each entry written atomically to the cache as it finishes: the table is the
    expensive stage (one short fine-tune per merged row), so a killed run resumes where it stopped."""
    store = _importance_store(unet, finetune, held, scheduler, config)
    reference = importance_reference(unet, finetune, held, scheduler, base_loss, config, store)
    return _scored_into(store, rows, "importance", unet, finetune, held, scheduler, reference, config)


def _scored_into(store, rows, desc: str, unet, finetune: torch.Tensor, held: torch.Tensor, scheduler,
                 reference: float, config: GenerationConfig, steps: int | None = None) -> dict[str, float]:
    """Each row's importance (``steps`` fine-tune steps, default the config's), computed into ``store`` where
    it is missing, each entry written atomically as it finishes, so a killed run resumes where it stopped."""
    from ..progress import progress
    from . import score as S

    steps = config.importance_steps if steps is None else steps
    for row in progress([r for r in rows if r.key not in store], desc=desc, enabled=config.progress, unit="row"):
        store[row.key] = S.row_importance(unet, row, finetune, held, scheduler, reference, steps,
                                          config.importance_lr, config.seed)
    return {r.key: float(store[r.key]) for r in rows}


def scored_rows(rows) -> list:
    """The rows whose importance takes a fine-tune (depthcut.diffusion.score.takes_finetune)."""
    from .score import takes_finetune

    return [r for r in rows if takes_finetune(r)]


def adaptive_frontier(unet, rows, latency, finetune: torch.Tensor, held: torch.Tensor, scheduler, base_loss: float,
                      config: GenerationConfig, say=lambda s: None):
    """The DP's frontier with the adaptive importance stage (depthcut.importance.adaptive): every scored row's
    cheap score (its loss with the row applied and no fine-tune, against the original's), a seeded random
    sample fine-tuned with the full recipe to bound the rest, then only the rows of the contending plans
    fine-tuned as the landing asks for budgets. A fine-tuned entry is the full table's (same store, same
    recipe, same seed), so a killed run resumes and a later full run reuses it."""
    from ..importance.adaptive import AdaptiveFrontier, Refinement, calibrate_bounds, sample_keys
    from ..search.layermerge import solve
    from .search import search_rows

    store = _importance_store(unet, finetune, held, scheduler, config)
    cheap_store = _importance_store(unet, finetune, held, scheduler, config, cheap=True)
    reference = importance_reference(unet, finetune, held, scheduler, base_loss, config, store)
    scored = scored_rows(rows)

    def refine(todo) -> dict[str, float]:
        return _scored_into(store, todo, "importance (fine-tuned)", unet, finetune, held, scheduler, reference,
                            config)

    t0 = time.perf_counter()
    cheap = _scored_into(cheap_store, scored, "importance (cheap)", unet, finetune, held, scheduler, base_loss,
                         config, steps=0)
    by_key = {r.key: r for r in scored}
    sample = refine([by_key[k] for k in sample_keys(list(by_key), config.seed)])
    bounds = calibrate_bounds(cheap, sample)
    stats = Refinement(candidates=len(scored), sampled=len(sample), margin=bounds.margin,
                       seconds=time.perf_counter() - t0)
    say(f"adaptive importance: {len(scored)} rows scored cheaply, {len(sample)} fine-tuned at random; "
        f"margin {bounds.margin:.4f} importance")
    point = {r.key: bounds.point(r.key) if r.key in by_key else 1.0 for r in rows}
    table, length = search_rows(rows, latency, point)
    return AdaptiveFrontier(table, lambda t: solve(t, length, steps=config.dp_steps), bounds,
                            to_importance=lambda v: min(1.0, v), refine=refine,
                            tolerance=config.adaptive_tolerance, stats=stats, say=say)


def _land(unet, scheduler, rows, latency, front, config: GenerationConfig, stages: Stages):
    """Land on the measured sampling speed-up over ``front`` (the DP's frontier, or the adaptive one)."""
    from ..latency.compare import Pace
    from ..search.target import land_on_target
    from . import score as S
    from .model import DepthcutUNet2DModel

    full = sum(latency[r.key] for r in rows if r.span in ("conv1", "conv2", "conv") and r.kept)
    fastest = min((s.latency_ms for s in front.pareto()), default=full)

    def choose(budget: float):
        solution = front.best(budget)
        return tuple(sorted(r.ref.key for r in solution.rows)), solution.latency_ms, solution

    pace = Pace()                   # a probe timed in a slow phase of the machine is timed again

    def measure(solution, decided, patience: int = 1):
        model = DepthcutUNet2DModel.from_unet(unet, [r.ref for r in solution.rows])
        longer = {} if patience == 1 else {"max_rounds": 20 * patience, "decided": decided}   # 1: a probe, in full
        return pace.steady(lambda: S.compare_sampling(unet, model, scheduler, config.batch, config.sampling_steps,
                                                      **longer), say=stages.say)

    landing = land_on_target(choose, measure, target=config.speedup, full=full, floor=fastest, other=0.0,
                             max_probes=config.max_probes, tolerance=config.speed_tolerance, say=stages.say,
                             retime=lambda solution, decided: measure(solution, decided, patience=4))
    return landing, full


def _check_intended(unet, plan, model) -> dict[str, float]:
    """The compressed U-Net against the plan's intended function (original modules, the plan's changes), in
    float64 on a random batch at three timesteps: the rewrite done in float64 (``structure``, must be ~1e-15)
    and the deployed model (``deployed``: its merged weights rounded to their dtype). A wrong merge is an
    error, never a report."""
    import copy

    from .merge import intended_unet
    from .model import DepthcutUNet2DModel

    original = copy.deepcopy(unet).double().eval()
    rewrite = DepthcutUNet2DModel.from_unet(original, plan)
    deployed = copy.deepcopy(model).double().eval()
    # the postnorms are new (nothing in the original to check them against): share the deployed ones
    for name, m in deployed.named_modules():
        if hasattr(m, "postnorm"):
            rewrite.get_submodule(name).postnorm.load_state_dict(m.postnorm.state_dict())
    reference = intended_unet(original, plan, rewrite).eval()
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    x = torch.randn(2, unet.config.in_channels, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    errors = {"structure": 0.0, "deployed": 0.0}
    with torch.no_grad():
        for t in (0, 500, 999):
            steps = torch.tensor([t, t])
            want = reference(x, steps).sample
            for name, candidate in (("structure", rewrite), ("deployed", deployed)):
                err = float((candidate(x, steps).sample - want).norm() / want.norm())
                errors[name] = max(errors[name], err)
    if not (errors["structure"] < 1e-9 and errors["deployed"] < 1e-5):
        raise DepthcutError(f"the compressed U-Net differs from the plan's intended function: relative error "
                            f"{errors['structure']:.1e} (float64 rewrite), {errors['deployed']:.1e} (deployed) "
                            f"(a depthcut bug: please report it)")
    return errors


def _quality(unet, model, scheduler, real, features, config: GenerationConfig):
    from . import score as S

    n = min(config.fd_samples, len(real))
    samples, fds = {}, {}
    with torch.no_grad():
        real_features = features(real[:n])
        for name, m in (("original", unet), ("compressed", model)):
            images = torch.cat([S.ddim_sample(m, scheduler, config.batch, config.sampling_steps, seed=1000 + k)
                                for k in range(-(-n // config.batch))])[:n]
            samples[name] = images[:16]
            fds[name] = S.frechet_distance(features(images), real_features)
    return samples, {"fd_original": fds["original"], "fd_compressed": fds["compressed"],
                     "fd_ratio": fds["compressed"] / fds["original"], "samples": n,
                     "metric": "Fréchet distance in the given feature space (not Inception FID)"}


def save_grid(samples: dict[str, torch.Tensor], path: Path) -> None:
    """One row of images per model (16 each), [-1, 1] -> 8-bit grey/RGB PNG."""
    from PIL import Image

    rows = []
    for images in samples.values():
        x = ((images.clamp(-1, 1) + 1) * 127.5).round().byte()
        rows.append(torch.cat(list(x), dim=2))                   # C, H, W*n
    grid = torch.cat(rows, dim=1)                                 # C, H*models, W*n
    array = grid.permute(1, 2, 0).squeeze(-1).numpy()
    Image.fromarray(array).save(path)


def report_markdown(r: dict[str, Any]) -> str:
    q = r.get("quality")
    lines = ["# depthcut report: diffusion U-Net (LayerMerge)", "",
             f"**Sampling speed-up x{r['speedup']:.2f}** [{r['speedup_low']:.2f}, {r['speedup_high']:.2f}] "
             f"({r['sampling_protocol']}): {r['sampling_ms_before']:.1f} -> {r['sampling_ms_after']:.1f} ms.", "",
             f"Plan: {r['merged_blocks']} ResNet blocks merged (GroupNorm + SiLU between their convs removed; "
             f"{r.get('one_conv_blocks', 0)} of them left with one 3x3 conv, the other pruned), "
             f"{r['identity_upsamplers']} up-sampling convs removed "
             f"({r['rows']} rows); intended-function error {r['intended_relative_error']:.1e}.",
             f"Denoising loss {r['loss_before']:.4f} (original) -> {r['loss_after_recovery']:.4f} (after recovery)"
             + (f"; rows scored against {r['importance_reference_loss']:.4f}, the original after the importance "
                f"fine-tune." if r.get("importance_reference_loss", r["loss_before"]) != r["loss_before"] else ".")]
    if q:
        lines.append(f"Fréchet distance ({q['metric']}, {q['samples']} samples): {q['fd_original']:.3f} (original) "
                     f"-> {q['fd_compressed']:.3f} (compressed), ratio {q['fd_ratio']:.3f}.")
    lines += ["", "Probes: " + json.dumps(r["probes"])]
    return "\n".join(lines) + "\n"
