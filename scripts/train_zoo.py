#!/usr/bin/env python
"""Train the embedded default checkpoints of the zoo (depthcut/zoo/checkpoints/<name>.pt).

    python scripts/train_zoo.py resnet20_fmnist --epochs 10
    python scripts/train_zoo.py resnet20_fmnist mobilenet_v2_fmnist --epochs 8
    python scripts/train_zoo.py mobilenet_v2_fmnist --time-epoch      # time 20 steps, estimate one epoch

Recipe: SGD (lr 0.1, momentum 0.9, nesterov, weight decay 5e-4), cosine to 0 per step, batch 128, random
crop with 2 px padding + horizontal flip, on the 60k Fashion-MNIST training images at 28x28; top-1 on the
10k test images. Saves ``{"state_dict", "meta"}`` (fp32) and records the recipe and accuracy in
checkpoints/README.md.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

from depthcut import zoo
from depthcut.cache import atomic_write_text
from depthcut.data import dataset_info, load_dataset, random_crop_flip
from depthcut.train import evaluate, train

README_HEAD = """# Embedded default checkpoints

Trained by `scripts/train_zoo.py` on CPU; each section below is rewritten by the script when it retrains that
model. Load with `depthcut.zoo.load(name)`. Files hold `{"state_dict": ..., "meta": {...}}` in fp32.
Reproduce (the wall-clock budget caps the epochs on a loaded machine; more epochs give higher accuracy):

    python scripts/train_zoo.py resnet20_fmnist --epochs 8 --budget-min 16 --threads 1
    python scripts/train_zoo.py mobilenet_v2_fmnist --epochs 8 --budget-min 45 --threads 2
"""


def update_readme(readme: Path, name: str, section: str) -> None:
    """Replace (or append) the ``## name`` section, keeping the other models' sections."""
    text = readme.read_text() if readme.exists() else README_HEAD
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write_text(readme, text.rstrip("\n") + "\n")
    readme.chmod(0o644)  # atomic writes go through a private (0600) temp file


def train_one(name: str, epochs: float, out: Path | None, lr: float, batch_size: int, weight_decay: float,
              seed: int, time_epoch: bool, budget_min: float | None = None) -> dict | None:
    entry = zoo.get(name)
    if entry.dataset is None:
        raise SystemExit(f"{name} has no training data set in the registry")
    torch.manual_seed(seed)
    # channels_last: 1.4x (ResNet-20) to 3.5x (MobileNetV2, depthwise) faster conv backward on CPU.
    model = entry.create().to(memory_format=torch.channels_last)
    data = load_dataset(entry.dataset, "train")
    test = load_dataset(entry.dataset, "test")
    info = dataset_info(entry.dataset)
    background = -info["mean"][0] / info["std"][0]  # normalised black: pad crops with background, not grey
    augment = random_crop_flip(pad=2, flip=True, fill=background)
    recipe = dict(lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True, batch_size=batch_size,
                  schedule="cosine", augment=augment, seed=seed)
    if time_epoch:
        hist = train(model, data, steps=20, **recipe, desc=f"{name} (timing)")
        per_epoch = hist["seconds"] / 20 * (len(data) // batch_size)
        print(f"{name}: {hist['seconds'] / 20 * 1000:.0f} ms/step -> ~{per_epoch / 60:.1f} min/epoch", flush=True)
        return None
    per_epoch = len(data) // batch_size
    # --budget-min: the cosine schedule runs on max(step, time) progress, so on a loaded machine the run
    # ends on time with a fully decayed learning rate after fewer steps; the epochs actually done are recorded.
    asked = epochs
    hist = train(model, data, epochs=epochs, **recipe, desc=name,
                 max_seconds=budget_min * 60 if budget_min else None)
    epochs = round(hist["steps"] / per_epoch, 2)
    if epochs < asked:
        print(f"{name}: time budget reached after {hist['steps']} steps = {epochs} epochs (asked {asked})",
              flush=True)
    acc = evaluate(model, test)
    train_acc = evaluate(model, torch.utils.data.TensorDataset(*(t[:2000] for t in data.tensors)))
    params = sum(p.numel() for p in model.parameters())
    meta = dict(test_accuracy=round(acc, 2), train_accuracy_2k=round(train_acc, 2), epochs=epochs, steps=hist["steps"],
                time_budget_min=budget_min,
                dataset=entry.dataset, image_size=info["image_size"], params=params,
                seconds=round(hist["seconds"]), final_loss=round(sum(hist["loss"][-50:]) / 50, 4),
                recipe={k: v for k, v in recipe.items() if k != "augment"} | {"augment": "crop pad 2 + hflip"},
                kwargs=entry.kwargs, torch=str(torch.__version__))
    path = out or entry.checkpoint
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "meta": meta}, tmp)
    tmp.replace(path)
    size_mb = path.stat().st_size / 2**20
    print(f"{name}: test top-1 {acc:.2f}% (train 2k {train_acc:.2f}%), {epochs} epochs in "
          f"{hist['seconds'] / 60:.1f} min, {params} params, {size_mb:.2f} MB -> {path}", flush=True)
    if out is None:
        section = (f"## {name}\n\n"
                   f"- architecture: `{entry.factory.__name__}(**{entry.kwargs})`, {params:,} parameters, "
                   f"{size_mb:.2f} MB fp32\n"
                   f"- data: {entry.dataset}, 60k training images at 28x28, random crop (pad 2) + horizontal "
                   f"flip\n"
                   f"- recipe: {epochs:g} epochs ({hist['steps']} steps), SGD lr {lr} cosine to 0 per step, "
                   f"momentum 0.9, nesterov, weight decay {weight_decay}, batch {batch_size}, seed {seed}\n"
                   f"- **test top-1: {acc:.2f}%** on the 10k test images (first 2k training images: "
                   f"{train_acc:.2f}%)\n"
                   f"- stored layout: standard contiguous fp32 (trained in channels_last for speed)\n"
                   f"- trained in {hist['seconds'] / 60:.1f} min on a shared 2-core CPU"
                   + (f" under a {budget_min:g}-minute budget (`--budget-min`)" if budget_min else "")
                   + f", torch {torch.__version__}\n")
        update_readme(path.parent / "README.md", name, section)
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="+", help="registered model names with a data set (e.g. resnet20_fmnist)")
    ap.add_argument("--epochs", type=float, default=10)
    ap.add_argument("--out", type=Path, default=None, help="checkpoint path (one model only); README untouched")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads; 1 is much faster when other jobs load the CPU (no OpenMP spinning)")
    ap.add_argument("--time-epoch", action="store_true", help="time 20 steps and estimate one epoch")
    ap.add_argument("--budget-min", type=float, default=None,
                    help="wall-clock cap: the cosine schedule follows max(step, time) progress and stops on time")
    args = ap.parse_args(argv)
    if args.out is not None and len(args.names) > 1:
        ap.error("--out takes one model name")
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.names:
        start = time.time()
        train_one(name, args.epochs, args.out, args.lr, args.batch_size, args.weight_decay, args.seed,
                  args.time_epoch, args.budget_min)
        print(f"{name}: done in {(time.time() - start) / 60:.1f} min", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
