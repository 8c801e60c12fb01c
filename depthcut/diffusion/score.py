"""What a diffusion U-Net's rows are worth, what they cost, and how good its samples are.

* **Importance** (LayerMerge's DDPM protocol): apply one row, fine-tune briefly on the noise-prediction loss, and
  score ``I = exp(-(L - L0) / L0)`` from the loss L on held-out images against a reference L0: by default the
  original put through the same fine-tune (see :func:`finetuned_loss`), so the score measures the row and not
  the fine-tune. The held-out loss uses fixed noise and timesteps (seeded), so models are compared on the same
  draws.
* **Latency rows**: the conv a row becomes (its postnorm included for merged rows) timed on its real input
  shape by a depthcut.latency backend; an identity row costs 0.
* **Sampling speed**: the whole DDIM loop (``steps`` U-Net calls at a batch), original and compressed in
  paired interleaved rounds: a speed-up with a 95% interval (depthcut.latency.compare).
* **Fréchet distance** between generated and real images in the feature space of a classifier (for
  Fashion-MNIST, the embedded one): ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2)``. It is the FID formula, but
  not Inception FID (whose network cannot be loaded offline here), so its numbers compare only with each other.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .unet import Row


def _noise_and_steps(n: int, shape: tuple[int, ...], num_steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g), torch.randint(0, num_steps, (n,), generator=g)


@torch.no_grad()
def denoising_loss(unet: nn.Module, images: torch.Tensor, scheduler, seed: int = 0, batch: int = 64) -> float:
    """Mean noise-prediction MSE on ``images`` (in [-1, 1]) with noise and timesteps drawn from ``seed``."""
    unet.eval()
    device = next(unet.parameters()).device
    noise, steps = _noise_and_steps(len(images), tuple(images.shape[1:]), scheduler.config.num_train_timesteps, seed)
    total = 0.0
    for i in range(0, len(images), batch):
        # noise is drawn on the CPU (seeded the same on every device); mix it there, wherever images live
        x0, eps, t = images[i:i + batch].cpu(), noise[i:i + batch], steps[i:i + batch]
        xt = scheduler.add_noise(x0, eps, t)
        pred = unet(xt.to(device), t.to(device)).sample
        total += float(F.mse_loss(pred.float(), eps.to(device), reduction="sum"))
    return total / images.numel()


def finetune(unet: nn.Module, images: torch.Tensor, scheduler, steps: int, lr: float = 2e-4, batch: int = 32,
             seed: int = 0, teacher: nn.Module | None = None, kd_weight: float = 0.0, ema: float = 0.0
             ) -> nn.Module:
    """``steps`` Adam steps of the DDPM noise-prediction loss on ``images`` (fresh noise and timesteps).

    With ``ema`` > 0 the U-Net ends with an exponential moving average of its weights over the steps (decay
    ``min(ema, (1 + k) / (10 + k))`` at step k, diffusers' warm-up, so the starting weights fade out early)
    instead of the last step's. DDPMs are sampled from such an average (the embedded one was trained with EMA
    0.999): the raw weights of a short Adam run are noisy, and a sampler's 20-1000 calls compound that noise.

    With a ``teacher`` (the original U-Net) and ``kd_weight`` w > 0 the target mixes the true noise with the
    teacher's prediction on the same noisy input: (1 - w) |e_s - e|^2 + w |e_s - e_t|^2. The teacher's
    prediction is a lower-variance target than the sampled noise (it is the original's estimate of the
    conditional mean), and it pulls the compressed U-Net toward the function the sampler was tuned on."""
    if steps <= 0:
        return unet
    g = torch.Generator().manual_seed(seed)
    device = next(unet.parameters()).device
    opt = torch.optim.Adam(unet.parameters(), lr=lr)
    distil = teacher is not None and kd_weight > 0
    if distil:
        teacher = teacher.eval()
    params = [p for p in unet.parameters() if p.requires_grad]
    shadow = [p.detach().clone() for p in params] if ema > 0 else None
    unet.train()
    for k in range(steps):
        idx = torch.randint(0, len(images), (min(batch, len(images)),), generator=g)
        x0 = images[idx].cpu()
        eps = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), generator=g)
        noisy, t, eps = scheduler.add_noise(x0, eps, t).to(device), t.to(device), eps.to(device)
        pred = unet(noisy, t).sample
        loss = F.mse_loss(pred, eps)
        if distil:
            with torch.no_grad():
                target = teacher(noisy, t).sample
            loss = (1 - kd_weight) * loss + kd_weight * F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if shadow is not None:
            ema_step(shadow, params, min(ema, (1 + k) / (10 + k)))
    if shadow is not None:
        ema_step(params, shadow, 0.0)                   # decay 0: the weights become the average
    return unet.eval()


@torch.no_grad()
def ema_step(average: list[torch.Tensor], current, decay: float) -> None:
    """average <- decay * average + (1 - decay) * current, tensor by tensor (the recovery above and
    scripts/train_ddpm.py keep their weight averages with it)."""
    for a, c in zip(average, current):
        a.lerp_(c.detach(), 1 - decay)


def importance(loss: float, base_loss: float) -> float:
    """LayerMerge's DDPM importance exp(-(L - L0) / L0), at most 1: a row cannot be worth more than the original's
    own row (which scores exactly 1). A loss below the reference is the noise of a 500-image estimate, and an
    importance above 1 would make the DP remove that row even with no latency to save."""
    return min(1.0, math.exp(-(loss - base_loss) / base_loss))


def finetuned_loss(unet: nn.Module, rows: list[Row], train_images: torch.Tensor, score_images: torch.Tensor,
                   scheduler, steps: int = 100, lr: float = 2e-4, seed: int = 0) -> float:
    """The held-out loss of ``unet`` (not modified) with ``rows`` applied, after ``steps`` fine-tune steps.

    With no rows it is the importance's reference: a short raw-Adam fine-tune moves even the original off its
    trained (EMA) weights - on the embedded DDPM, 100 steps take its loss from 0.0369 to 0.0406 - and scoring a
    row's fine-tuned loss against the untouched original's would charge every changed row that ~10% on top of
    what the row itself costs, biasing the DP toward keeping rows rather than toward the better ones."""
    from .merge import apply_plan_in_place

    torch.manual_seed(seed)
    model = apply_plan_in_place(copy.deepcopy(unet), list(rows))
    finetune(model, train_images, scheduler, steps, lr, seed=seed)
    return denoising_loss(model, score_images, scheduler, seed=seed + 1)


def takes_finetune(row: Row) -> bool:
    """Whether a row's importance takes a fine-tune: a merged block or a removed conv (an original single conv
    changes nothing and scores exactly 1)."""
    return row.span == "conv1+conv2" or not row.kept


def row_importance(unet: nn.Module, row: Row, train_images: torch.Tensor, score_images: torch.Tensor, scheduler,
                   base_loss: float, steps: int = 100, lr: float = 2e-4, seed: int = 0) -> float:
    """Importance of one row: only that row applied (the rest of the U-Net as it is), fine-tuned ``steps``
    steps, scored on ``score_images`` against ``base_loss``. An original single conv changes nothing and scores
    exp(0) = 1."""
    if not takes_finetune(row):
        return 1.0
    loss = finetuned_loss(unet, [row], train_images, score_images, scheduler, steps, lr, seed)
    return importance(loss, base_loss)


def row_module(unet: nn.Module, row: Row) -> nn.Module | None:
    """What a row costs at run time: its conv (and the postnorm of a merged row); None for an identity."""
    from .merge import postnorm_for

    if not row.kept:
        return None
    conv = nn.Conv2d(row.in_channels, row.out_channels, row.kernel, stride=row.stride, padding=row.kernel // 2)
    return nn.Sequential(conv, postnorm_for(row.out_channels)) if row.span == "conv1+conv2" else conv


def latency_rows(unet: nn.Module, rows: list[Row], backend="eager", batch: int = 1,
                 cache_dir: str | Path | None = None, progress: bool = False, **how) -> dict[str, float]:
    """Median ms of every row's run-time module on its input shape (batch ``batch``); identity rows 0 ms.
    Timed and cached as the CNN's rows are (depthcut.latency.table.time_rows: passes on fresh sessions, each
    pass cached, resumable; ``how`` its options), keyed by what is timed, so equal rows share one timing."""
    from ..latency.table import RowSpec, time_rows

    specs = {row.key: RowSpec(_row_key(row, batch), lambda row=row: row_module(unet, row),
                              (batch, *row.input_shape[1:])) for row in rows if row.kept}
    timed = time_rows(specs.values(), backend, batch_size=batch, cache_dir=cache_dir, progress=progress, **how)
    return {row.key: timed[specs[row.key].key].median_ms if row.kept else 0.0 for row in rows}


def _row_key(row: Row, batch: int) -> str:
    """What a U-Net row runs (row_module): its conv, the postnorm of a merged row, and its input shape."""
    shape = "x".join(map(str, (batch, *row.input_shape[1:])))
    return (f"unet-conv{row.in_channels}-{row.out_channels}-k{row.kernel}-s{row.stride}"
            f"{'-postnorm' if row.span == 'conv1+conv2' else ''}-in{shape}")


@torch.no_grad()
def ddim_sample(unet: nn.Module, scheduler, batch: int, steps: int, seed: int = 0) -> torch.Tensor:
    """``batch`` images in [-1, 1] from a DDIM loop of ``steps`` U-Net calls (eta 0, seeded start noise)."""
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(steps)
    device = next(unet.parameters()).device
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    x = torch.randn((batch, unet.config.in_channels, *size), generator=torch.Generator().manual_seed(seed)).to(device)
    for t in ddim.timesteps:
        x = ddim.step(unet(x, t).sample, t, x).prev_sample
    return x.clamp(-1, 1)


def compare_sampling(original: nn.Module, compressed: nn.Module, scheduler, batch: int = 8, steps: int = 20,
                     min_rounds: int = 5, max_rounds: int = 20, rel_width: float = 0.03,
                     clock: Callable[[], float] = time.perf_counter, decided=None):
    """The sampling loop's speed-up (original / compressed): one whole DDIM run of each per round, in
    alternating order (depthcut.latency.compare.paired_rounds), a median ratio with its 95% interval."""
    from ..latency.compare import paired_rounds

    models = {"original": original.eval(), "compressed": compressed.eval()}
    for m in models.values():
        ddim_sample(m, scheduler, batch, 1)                       # warm-up

    from ..latency.backends import _cuda_sync

    sync = _cuda_sync(next(original.parameters()).device)

    def one_run(name: str) -> list[float]:
        sync()                                   # CUDA runs asynchronously: time the kernels, not their launch
        start = clock()
        ddim_sample(models[name], scheduler, batch, steps)
        sync()
        return [(clock() - start) * 1e3]
    return paired_rounds(one_run, min_rounds=min_rounds, max_rounds=max_rounds, rel_width=rel_width,
                         decided=decided)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` and ``b`` ([n, d] each), in float64.

    tr sqrt(S1 S2) is the sum of the square roots of the eigenvalues of sqrt(S1) S2 sqrt(S1), a symmetric PSD
    matrix, so two symmetric eigendecompositions replace scipy's general sqrtm (no scipy needed, e.g. on a GPU
    image; equal to sqrtm to ~1e-13 on random features)."""
    a, b = a.double().cpu(), b.double().cpu()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(s1)
    root1 = v @ torch.diag(w.clamp(min=0).sqrt()) @ v.T
    inner = torch.linalg.eigvalsh(root1 @ s2 @ root1).clamp(min=0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * inner)
