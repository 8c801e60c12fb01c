"""Train the embedded diffusion default: a small DDPM U-Net on Fashion-MNIST, on this CPU (issue 11).

The recipe (the budget is the point: it must fit a CPU session, and the weights 5 MB):
  diffusers UNet2DModel, 28x28x1, block_out_channels (64, 64, 96), one ResNet block per level, no attention
  (a U-Net of ResNet blocks and resampling convs: every block has a postnorm with 32 groups of >= 2 channels,
  so merged blocks keep their time embedding), DDPM linear schedule with 1000 steps, epsilon prediction,
  AdamW lr 2e-4 (500 warm-up steps, cosine to 10%), batch 32, EMA 0.999 of the weights (the EMA is saved),
  random horizontal flips. Images scaled to [-1, 1].

Resumable: a checkpoint (model, EMA, optimiser, step, RNG) is written atomically every ``--save-every`` steps to
``--work``; rerunning continues. ``--minutes`` caps this run's wall time. At the end the EMA weights are saved
in float16 as a diffusers folder (``config.json``, ``diffusion_pytorch_model.safetensors``,
``scheduler_config.json``, ``training.json`` with the budget actually spent) under ``--out``.

    python scripts/train_ddpm.py --steps 20000 --minutes 45     # resumes from .cache/ddpm-train if present
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "depthcut" / "zoo" / "checkpoints" / "ddpm_fmnist"
CONFIG = dict(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(64, 64, 96), layers_per_block=1,
              down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=32, dropout=0.0)


def fashion_mnist_images() -> torch.Tensor:
    """The 60k training images in [-1, 1], [N, 1, 28, 28] (the Debian dataset-fashion-mnist files)."""
    from depthcut.data.datasets import _fashion_mnist_arrays

    images, _ = _fashion_mnist_arrays("train")
    return torch.tensor(images, dtype=torch.float32).div(127.5).sub(1.0).view(-1, 1, 28, 28)


def lr_at(step: int, total: int, base: float, warmup: int = 500) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def main() -> None:
    from depthcut.diffusion.score import ema_step

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--minutes", type=float, default=45.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--work", default=str(ROOT / ".cache" / "ddpm-train"))
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    from diffusers import DDPMScheduler, UNet2DModel

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "checkpoint.pt"
    torch.manual_seed(0)
    model = UNet2DModel(**CONFIG)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    step, seconds, gen = 0, 0.0, torch.Generator().manual_seed(0)
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"]); ema.load_state_dict(state["ema"]); opt.load_state_dict(state["opt"])
        step, seconds = state["step"], state["seconds"]
        gen.set_state(state["rng"])
        print(f"resuming at step {step} ({seconds / 60:.1f} min spent)", flush=True)
    images = fashion_mnist_images()
    start, running = time.time(), 0.0

    def save() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                    "seconds": seconds + time.time() - start, "rng": gen.get_state()}, tmp)
        os.replace(tmp, ckpt)

    model.train()
    while step < args.steps and time.time() - start < args.minutes * 60:
        idx = torch.randint(0, len(images), (args.batch,), generator=gen)
        x0 = images[idx]
        flip = torch.rand(args.batch, generator=gen) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (args.batch,), generator=gen)
        loss = F.mse_loss(model(scheduler.add_noise(x0, noise, t), t).sample, noise)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_step(list(ema.parameters()), model.parameters(), 0.999)     # depthcut.diffusion.score
        step += 1
        running = 0.98 * running + 0.02 * float(loss) if step > 1 else float(loss)
        if step % 50 == 0:
            print(f"step {step}/{args.steps} loss {running:.4f} ({(time.time() - start) / 60:.1f} min)", flush=True)
        if step % args.save_every == 0:
            save()
    save()
    spent = seconds + time.time() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.nn.Module.to(ema, torch.float16).save_pretrained(out)   # 5 MB limit: float16 on disk
    scheduler.save_pretrained(out)
    (out / "training.json").write_text(json.dumps({
        "steps": step, "target_steps": args.steps, "minutes": round(spent / 60, 1), "batch": args.batch,
        "lr": args.lr, "ema": 0.999, "config": CONFIG, "data": "Fashion-MNIST train (60k), [-1, 1], random flips",
        "machine": f"{torch.get_num_threads()} CPU threads", "loss_ema": running}, indent=1))
    print(f"saved {out} after {step} steps, {spent / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
