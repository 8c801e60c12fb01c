"""``depthcut compress --task generation``: the CLI layer over :func:`depthcut.diffusion.pipeline.compress_unet`.

``--model`` is a diffusers ``UNet2DModel`` folder (``config.json`` + weights; a ``scheduler_config.json`` beside
them, or a pipeline folder with ``unet/`` and ``scheduler/``) or ``ddpm_fmnist``, the embedded default trained by
``scripts/train_ddpm.py``. ``--data`` gives the images (scaled to [-1, 1]); the Fréchet distance uses the
embedded Fashion-MNIST classifier's features when the data is Fashion-MNIST.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from ..errors import DepthcutError

EMBEDDED = "ddpm_fmnist"
EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "zoo" / "checkpoints" / EMBEDDED


def load_unet(spec: str):
    """(UNet2DModel in float32, its DDPM scheduler) from a folder or the embedded name; one line otherwise."""
    from diffusers import DDPMScheduler, UNet2DModel

    folder = EMBEDDED_DIR if spec == EMBEDDED else Path(spec)
    if spec == EMBEDDED and not (folder / "config.json").exists():
        raise DepthcutError(f"the embedded {EMBEDDED} U-Net is not in {folder}: train it with "
                            f"`python scripts/train_ddpm.py`, or pass a diffusers UNet2DModel folder")
    if (folder / "unet" / "config.json").exists():            # a pipeline folder
        unet_dir, sched_dir = folder / "unet", folder / "scheduler"
    else:
        unet_dir, sched_dir = folder, folder
    if not (unet_dir / "config.json").exists():
        raise DepthcutError(f"--model {spec}: not a diffusers UNet2DModel folder (no config.json in {unet_dir}) "
                            f"and not {EMBEDDED!r}")
    try:
        unet = UNet2DModel.from_pretrained(unet_dir, torch_dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - a folder that diffusers cannot read: say which and why, once
        raise DepthcutError(f"cannot load a UNet2DModel from {unet_dir}: {str(e).splitlines()[0]}") from None
    scheduler = (DDPMScheduler.from_pretrained(sched_dir) if (sched_dir / "scheduler_config.json").exists()
                 else DDPMScheduler(num_train_timesteps=1000))
    return unet.eval(), scheduler


def images_for(data: str, unet, split: str = "train") -> torch.Tensor:
    """The data set's ``split`` images in [-1, 1] at the U-Net's size and channels (checked, one line)."""
    from ..data import load_dataset
    from ..data.datasets import BUILTIN, _canonical

    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    name = _canonical(str(data))
    ds = load_dataset(data, split, image_size=size)
    x = ds.tensors[0]
    if name in BUILTIN:                              # undo the classifier normalisation: pixels back to [-1, 1]
        info = BUILTIN[name]
        x = x * torch.tensor(info.std).view(1, -1, 1, 1) + torch.tensor(info.mean).view(1, -1, 1, 1)
        x = x * 2 - 1
    else:
        from ..data.datasets import IMAGENET_MEAN, IMAGENET_STD
        x = (x * torch.tensor(IMAGENET_STD).view(1, -1, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1)) * 2 - 1
    if tuple(x.shape[1:]) != (unet.config.in_channels, *size):
        raise DepthcutError(f"data {data} gives images {tuple(x.shape[1:])}, the U-Net takes "
                            f"{(unet.config.in_channels, *size)}")
    return x.clamp(-1, 1)


class ClassifierFeatures(nn.Module):
    """The embedded Fashion-MNIST classifier's penultimate features of [-1, 1] images (for the Fréchet
    distance): the input of its last Linear layer."""

    def __init__(self):
        super().__init__()
        from .. import zoo
        from ..data.datasets import BUILTIN

        self.net = zoo.load("resnet20_fmnist").eval()
        info = BUILTIN["fashion-mnist"]
        self.mean, self.std = info.mean[0], info.std[0]
        self.head = [m for m in self.net.modules() if isinstance(m, nn.Linear)][-1]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        seen = []
        hook = self.head.register_forward_hook(lambda m, args, out: seen.append(args[0]))
        try:
            self.net(((images + 1) / 2 - self.mean) / self.std)
        finally:
            hook.remove()
        return seen[0].flatten(1)


def compress_generation(args: argparse.Namespace) -> int:
    from .pipeline import GenerationConfig, compress_unet

    fields = {k: v for k, v in {
        "speedup": args.speedup, "batch": args.batch_size, "sampling_steps": args.sampling_steps,
        "importance_steps": args.importance_steps, "finetune_size": args.finetune_size,
        "score_size": args.score_size, "recovery_steps": args.recovery_steps, "seed": args.seed,
        "recovery_kd_weight": getattr(args, "recovery_kd_weight", None),
        "recovery_ema": getattr(args, "recovery_ema", None),
        "importance_reference": getattr(args, "importance_reference", None),
        "importance_mode": getattr(args, "importance_mode", None),
        "adaptive_tolerance": getattr(args, "adaptive_tolerance", None),
        "progress": not args.quiet, "fd_samples": args.fd_samples,
        "cache_dir": getattr(args, "cache_dir", None)}.items() if v is not None}
    config = GenerationConfig(**fields)                 # bad values: one line, before anything loads
    model = EMBEDDED if args.model in (None, "resnet20_fmnist") else args.model
    unet, scheduler = load_unet(model)
    images = images_for(args.data, unet)
    features = ClassifierFeatures() if str(args.data).replace("_", "-") in ("fashion-mnist", "fmnist") else None
    real = images_for(args.data, unet, "test") if features is not None else None
    result = compress_unet(unet, scheduler, images, config, features=features, real=real)
    result.save_pretrained(args.out)
    r = result.report
    fd = (f"; Fréchet distance {r['quality']['fd_original']:.3f} -> {r['quality']['fd_compressed']:.3f}"
          if r.get("quality") else "")
    print(f"sampling speed-up x{r['speedup']:.2f} [95% CI {r['speedup_low']:.2f}-{r['speedup_high']:.2f}] "
          f"({r['merged_blocks']} ResNet blocks merged){fd}; report in {args.out}/report.md")
    return 0
