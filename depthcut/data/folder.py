"""Image folders at scale: streamed from disk through a DataLoader with workers, never all in memory.

A folder holds one sub-folder per class (``<root>/<class>/<image>``, or ``<root>/train/...`` and
``<root>/test/...``). Only the file list lives in memory; each image is decoded when a batch needs it, in
``workers`` DataLoader processes, with the standard classification transforms at the model's resolution:

* train (recovery and importance fine-tunes): random resized crop (scale 0.08-1, aspect 3/4-4/3), horizontal
  flip, normalisation;
* eval (importance scoring, test): resize the shorter side to ``size / crop_pct``, centre crop ``size``,
  normalisation.

The normalisation statistics and ``crop_pct`` are the model's (:class:`Preprocess`: torchvision's weight
transforms, timm's ``pretrained_cfg``), ImageNet's when the model does not say. Each sample's random view comes from a seed that
the loader's seeded sampler (:class:`SeededIndices`) draws with the order, so a run repeats exactly for a given
seed, whatever the number of workers.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How a model expects its images: per-channel mean/std of [0, 1] pixels and the eval crop fraction."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875
    source: str = "ImageNet defaults"

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "crop_pct": self.crop_pct, "source": self.source}


def default_workers() -> int:
    """DataLoader worker processes for image folders: the cores this process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(0, min(8, cores))


class ImageFolderData(Dataset):
    """``(image tensor, label)`` per file, decoded and transformed on access (see the module doc)."""

    def __init__(self, files: list[Path], labels: list[int], size: tuple[int, int], train: bool,
                 preprocess: Preprocess = Preprocess(), workers: int | None = None, classes: list[str] = ()):
        if len(files) != len(labels):
            raise ValueError("one label per file")
        self.files, self.labels, self.size, self.train = list(files), list(labels), tuple(size), train
        self.preprocess, self.classes = preprocess, list(classes)
        self.workers = default_workers() if workers is None else workers
        self._mean = torch.tensor(preprocess.mean).view(-1, 1, 1)
        self._std = torch.tensor(preprocess.std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, indices, train: bool | None = None) -> "ImageFolderData":
        """The same images at ``indices`` (a tensor or list), optionally with the other transform."""
        idx = [int(i) for i in indices]
        return ImageFolderData([self.files[i] for i in idx], [self.labels[i] for i in idx], self.size,
                               self.train if train is None else train, self.preprocess, self.workers, self.classes)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """``index``, or ``(index, seed)`` from :class:`SeededIndices`: the training view's randomness then
        comes from ``seed`` alone, so batches do not depend on the number of workers."""
        from PIL import Image

        index, seed = index if isinstance(index, tuple) else (index, index)
        path = self.files[index]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                if self.train:
                    image = self._train_view(image, torch.Generator().manual_seed(seed))
                else:
                    image = self._eval_view(image)
        except OSError as e:
            raise DataError(f"cannot read image {path}: {e}") from None
        x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(image.height, image.width, 3)
        x = x.permute(2, 0, 1).float().div_(255)
        return (x - self._mean) / self._std, self.labels[index]

    def _eval_view(self, image):
        from PIL import Image

        h, w = self.size
        short = min(h, w) / self.preprocess.crop_pct
        scale = short / min(image.width, image.height)
        resized = image.resize((max(w, round(image.width * scale)), max(h, round(image.height * scale))),
                               Image.BILINEAR)
        left, top = (resized.width - w) // 2, (resized.height - h) // 2
        return resized.crop((left, top, left + w, top + h))

    def _train_view(self, image, g: torch.Generator):
        """Random resized crop (Inception-style, as torchvision's RandomResizedCrop) and a horizontal flip."""
        from PIL import Image

        h, w = self.size
        area = image.width * image.height
        box = (0, 0, image.width, image.height)
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(0.08, 1.0, generator=g))
            ratio = math.exp(float(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g)))
            cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < cw <= image.width and 0 < ch <= image.height:
                left = int(torch.randint(0, image.width - cw + 1, (1,), generator=g))
                top = int(torch.randint(0, image.height - ch + 1, (1,), generator=g))
                box = (left, top, left + cw, top + ch)
                break
        view = image.resize((w, h), Image.BILINEAR, box=box)
        if float(torch.rand(1, generator=g)) < 0.5:
            view = view.transpose(Image.FLIP_LEFT_RIGHT)
        return view


class SeededIndices(torch.utils.data.Sampler):
    """Yields ``(index, seed)``: the (shuffled) order and one seed per sample, both from the loader's seeded
    generator, advanced every pass (so each epoch has new crops, and a run repeats exactly)."""

    def __init__(self, n: int, shuffle: bool, generator: torch.Generator):
        self.n, self.shuffle, self.generator = n, shuffle, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        seeds = torch.randint(0, 2**62, (self.n,), generator=self.generator)
        return iter([(int(i), int(s)) for i, s in zip(order, seeds)])
