"""Training, fine-tuning, evaluation and BatchNorm re-calibration.

One loop serves three uses: training the embedded checkpoints from scratch, the short fine-tunes that score
each candidate block (SPEC A6: SGD lr 0.1 cosine, momentum 0.9, wd 1e-5, nesterov), and the final fine-tune
of the selected network, optionally distilled from the original (SPEC A10: KL on logits, weight ~0.3).
Everything is deterministic given ``seed``: batch order, augmentation and dropout draw from RNGs seeded here,
and the caller's global RNG state is restored afterwards.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..data.datasets import loader
from ..errors import DepthcutError
from ..progress import progress as progress_bar


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


CPU_EVAL_BATCH = 64     # on a CPU larger batches are slower per image: a 512-image batch's activations leave the
                        # cache (MobileNetV2 on 28x28: 3.6 ms/image at 512, 0.9 at 64; ResNet-20 0.61 vs 0.49)
GPU_EVAL_BATCH = 512


@contextmanager
def batch_statistics(model: nn.Module):
    """Within it, every BatchNorm of ``model`` normalises each batch by that batch's own statistics, its running
    statistics left as they were: in train mode with ``track_running_stats`` off, BatchNorm neither reads nor
    writes them (nor the batch counter), so a batch whose statistics overflow cannot reach them either (a
    momentum of 0 would write 0 * inf = nan into them). The modes are restored after."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    states = [(bn.training, bn.track_running_stats) for bn in bns]
    for bn in bns:
        bn.train()
        bn.track_running_stats = False
    try:
        yield model
    finally:
        for bn, (training, tracking) in zip(bns, states):
            bn.train(training)
            bn.track_running_stats = tracking


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, batch_size: int | None = None, batch_statistics: bool = False) -> float:
    """Top-1 accuracy in percent, in eval mode; the model's train/eval mode is restored afterwards. The batch
    size changes the speed only (eval mode: no statistics are taken from the batch).

    ``batch_statistics``: every BatchNorm normalises each batch by that batch's own statistics instead (its
    running statistics left as they were), so the batch size is part of the measurement. It is what BatchNorm
    re-calibration on the evaluated images would give, in one pass instead of two."""
    was_training, device = model.training, _device(model)
    if batch_size is None:
        batch_size = CPU_EVAL_BATCH if device.type == "cpu" else GPU_EVAL_BATCH
    model.eval()
    correct = total = 0
    try:
        with (_batch_statistics(model) if batch_statistics else nullcontext()):
            for x, y in loader(data, batch_size):
                correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
                total += len(y)
    finally:
        model.train(was_training)
    return 100.0 * correct / max(total, 1)


_batch_statistics = batch_statistics     # (evaluate's argument of the same name hides it)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened logits, scaled by T^2 so its gradient magnitude does
    not shrink as T grows (Hinton et al. 2015)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1),
                    reduction="batchmean", log_target=True) * (t * t)


def cosine_lr(step: int, total: int, lr: float, warmup: int = 0) -> float:
    """Linear warm-up for ``warmup`` steps, then half a cosine from ``lr`` down to 0 at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


AMP_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _step_budget(steps: int | None, epochs: float | None, per_epoch: int) -> int:
    """Optimizer steps to take: ``steps``, else ``epochs`` (default 1) passes of ``per_epoch`` batches.
    epochs=0 means no training (a deployment without recovery); any positive budget takes a step at least."""
    if steps is not None:
        return steps
    epochs = 1.0 if epochs is None else epochs
    return max(1, round(epochs * per_epoch)) if epochs > 0 else 0


def _batch_loss(model: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
                label_smoothing: float, kd_weight: float, kd_temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, cross-entropy) of one batch: ``(1 - kd_weight) * CE + kd_weight * KL(teacher || student)`` with a
    teacher, the cross-entropy alone without one (logits in float32 under autocast)."""
    logits = model(x)
    ce = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    if teacher is None or kd_weight <= 0:
        return ce, ce
    with torch.no_grad():
        teacher_logits = teacher(x)
    return (1 - kd_weight) * ce + kd_weight * distillation_loss(logits.float(), teacher_logits.float(),
                                                                kd_temperature), ce


def _checked(value: float, desc: str, step: int, lr: float) -> float:
    """A step's loss, or one line naming the step and learning rate where training diverged."""
    if not math.isfinite(value):
        raise FloatingPointError(f"{desc}: loss became {value} at step {step} (lr {lr:g}); lower the learning rate")
    return value


def train(model: nn.Module, data: Dataset, *, epochs: float | None = None, steps: int | None = None,
          lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 1e-5, nesterov: bool = True,
          batch_size: int = 128, schedule: str = "cosine", warmup_steps: int = 0,
          teacher: nn.Module | None = None, kd_weight: float = 0.3, kd_temperature: float = 1.0,
          augment: Callable | None = None, label_smoothing: float = 0.0, max_seconds: float | None = None,
          progress: bool = True, seed: int = 0, desc: str = "train", amp: str | None = None,
          channels_last: bool = False) -> dict:
    """Train ``model`` in place with SGD; return the history.

    Length: ``steps`` optimizer steps, or ``epochs`` passes over ``data`` (fractions allowed), default one
    epoch. ``schedule`` is ``"cosine"`` (per step, to 0) or ``"constant"``. With a ``teacher`` the loss is
    ``(1 - kd_weight) * CE + kd_weight * KL(teacher || student)``. ``augment(x, generator)`` transforms each
    training batch. ``max_seconds`` caps the wall-clock time: the schedule then advances by
    ``max(step / steps, elapsed / max_seconds)`` and training stops when either reaches 1, so the learning
    rate still decays to 0 on a loaded machine (the number of steps taken is then load-dependent, not
    deterministic). The progress bar goes to stderr (``progress=False`` or ``DEPTHCUT_PROGRESS=0`` hides it).
    Batches go to the model's device. ``amp`` ("bf16" or "fp16") runs forward passes under autocast (fp16
    with a gradient scaler); ``channels_last`` trains in that memory format (faster convs on GPUs).

    Returns ``{"loss": per-step losses, "ce": per-step cross-entropy, "lr": per-step lr, "epoch_loss": mean
    loss per (started) epoch, "steps": int, "seconds": float}``.
    """
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown schedule {schedule!r}; use 'cosine' or 'constant'")
    if amp not in AMP_DTYPES:
        raise ValueError(f"unknown amp {amp!r}; use one of {', '.join(map(str, AMP_DTYPES))}")
    device = _device(model)
    autocast_dtype = AMP_DTYPES[amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model.to(memory_format=torch.channels_last)
    batches = loader(data, batch_size, shuffle=True, seed=seed, drop_last=len(data) > batch_size)
    steps = _step_budget(steps, epochs, per_epoch=max(1, len(batches)))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                                nesterov=nesterov and momentum > 0)
    aug_gen = torch.Generator().manual_seed(seed + 1)
    if teacher is not None:
        teacher.eval()
    history = {"loss": [], "ce": [], "lr": [], "epoch_loss": [], "steps": steps}
    start = time.perf_counter()
    if steps == 0:
        model.eval()                # as after training
        history["seconds"] = 0.0
        return history
    model.train()
    # fork_rng: dropout etc. draw from a seeded global RNG without disturbing the caller's stream.
    with torch.random.fork_rng(devices=[]), progress_bar(total=steps, desc=desc, enabled=progress,
                                                          unit="step") as bar:
        torch.manual_seed(seed)
        step, epoch_losses = 0, []
        rank, world = _rank_and_world()
        while _position(step, steps, start, max_seconds, world) < 1.0:
            for x, y in batches:
                fraction = _position(step, steps, start, max_seconds, world)
                if fraction >= 1.0:
                    break
                step_lr = lr
                if schedule == "cosine":  # schedule position in steps; a time budget can only move it forward
                    step_lr = cosine_lr(max(step, round(fraction * steps)), steps, lr, warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = step_lr
                x, y = _batch(x, y, augment, aug_gen, rank, world, device, memory_format)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    loss, ce = _batch_loss(model, teacher, x, y, label_smoothing, kd_weight, kd_temperature)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                value = _checked(loss.item(), desc, step, step_lr)
                history["loss"].append(value)
                history["ce"].append(ce.item())
                history["lr"].append(step_lr)
                epoch_losses.append(value)
                step += 1
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{sum(history['loss'][-20:]) / 20:.3f}")
            if epoch_losses:
                history["epoch_loss"].append(sum(epoch_losses) / len(epoch_losses))
            epoch_losses = []
    model.eval()
    history["steps"] = step
    history["seconds"] = time.perf_counter() - start
    return history


def _position(step: int, steps: int, start: float, max_seconds: float | None, world: int) -> float:
    """How far through the schedule training is, in [0, 1]: steps taken, or the time spent when that is
    further (``max_seconds``)."""
    fraction = step / steps
    if max_seconds is not None:
        fraction = max(fraction, (time.perf_counter() - start) / max_seconds)
        if world > 1:     # every rank takes the same number of steps, or the all-reduce waits forever
            agreed = torch.tensor([fraction], dtype=torch.float64)
            torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
            fraction = float(agreed)
    return fraction


def _batch(x: torch.Tensor, y: torch.Tensor, augment: Callable | None, generator: torch.Generator, rank: int,
           world: int, device: torch.device, memory_format: torch.memory_format) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch, augmented, this rank's share of it, on the model's device."""
    if augment is not None:
        x = augment(x, generator)
    if world > 1:         # data parallel: this rank's share of the same global batch
        x, y = x[rank::world], y[rank::world]
    return x.to(device, non_blocking=True).contiguous(memory_format=memory_format), y.to(device)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: Dataset, batches: int = 50, batch_size: int = 128,
                   seed: int = 0) -> nn.Module:
    """Re-estimate every BatchNorm's running mean/var from ``batches`` shuffled batches of ``data``.

    Removing an activation or a layer shifts the statistics that later BNs see; recomputing them is the
    cheapest repair and a fine-tune-free importance proxy. Returns the model, in eval mode.
    """
    return recalibrate_bn_on(model, loader(data, batch_size, shuffle=True, seed=seed), num_batches=batches)


def recalibrate_bn_on(model: nn.Module, batches, num_batches: int | None = None) -> nn.Module:
    """Reset every BatchNorm's running statistics and recompute them as the exact average (``momentum=None``)
    over ``num_batches`` of ``batches`` (tensors or (x, ...) tuples), without gradients. Only the BN layers
    switch to train mode, so dropout stays off; momenta are restored and the model is left in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return model.eval()
    momenta = [bn.momentum for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None      # cumulative average: the order and number of batches do not bias the stats
        bn.train()
    device, seen = _device(model), 0
    try:
        with torch.no_grad():
            for batch in batches:
                if num_batches is not None and seen >= num_batches:
                    break
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(x.to(device))
                seen += 1
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.eval()
    if seen == 0:
        raise DepthcutError("BatchNorm recalibration got no batches: the calibration data is empty")
    return model
