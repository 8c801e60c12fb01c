"""Data sets: built-in loading, deterministic splits, disjoint held-out subsets, image folders, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from depthcut.data import datasets as ds_mod
from depthcut.data import dataset_info, load_dataset, loader, make_splits, random_crop_flip
from depthcut.errors import DataError


def test_digits_shapes_dtypes_and_normalisation():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    x, y = train.tensors
    assert x.shape == (1437, 1, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    assert len(test) == 360 and test.tensors[0].shape[1:] == (1, 8, 8)
    # the documented constants normalise the training set to roughly zero mean, unit std
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05
    assert dataset_info("digits") == dict(num_classes=10, in_chans=1, image_size=8,
                                          mean=(0.3053,), std=(0.3760,), folder=False)


def test_digits_train_test_split_is_fixed_and_disjoint():
    a, b = load_dataset("digits", "train"), load_dataset("digits", "train")
    assert torch.equal(a.tensors[0], b.tensors[0])
    test = load_dataset("digits", "test")
    # every digits image is distinct except a handful of duplicates, so compare rows as bytes
    train_rows = {r.numpy().tobytes() for r in a.tensors[0].flatten(1)}
    test_rows = [r.numpy().tobytes() for r in test.tensors[0].flatten(1)]
    overlap = sum(r in train_rows for r in test_rows)
    assert overlap <= 5, f"{overlap} test images also in train"


def test_mnist_4000_1000():
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    assert train.tensors[0].shape == (4000, 1, 28, 28) and len(test) == 1000
    # the source is sorted by class; a fixed permutation must spread every class over both splits
    assert torch.bincount(test.tensors[1], minlength=10).min() > 50
    assert dataset_info("mnist")["image_size"] == 28


@pytest.mark.skipif(not (ds_mod.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(),
                    reason="Fashion-MNIST not installed (sudo apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_test_split():
    test = load_dataset("fashion-mnist", "test")
    x, y = test.tensors
    assert x.shape == (10000, 1, 28, 28) and torch.bincount(y).tolist() == [1000] * 10
    assert load_dataset("fmnist", "test").tensors[0].shape == x.shape  # alias


def test_missing_fashion_mnist_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(ds_mod, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    ds_mod._fashion_mnist_arrays.cache_clear()
    try:
        with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as e:
            load_dataset("fashion-mnist", "test")
        assert "make data" in str(e.value) and "nowhere" in str(e.value)
    finally:
        ds_mod._fashion_mnist_arrays.cache_clear()


def test_unknown_name_and_bad_split():
    with pytest.raises(DataError, match="no-such-set.*fashion-mnist"):
        load_dataset("no-such-set")
    with pytest.raises(DataError, match="no-such-set"):
        dataset_info("no-such-set")
    with pytest.raises(DataError, match="validation"):
        load_dataset("digits", "validation")


@pytest.mark.parametrize("seed", [0, 3])
def test_make_splits_disjoint_subsets_of_train(seed):
    s = make_splits("digits", finetune_size=200, score_size=150, seed=seed)
    fi, si = set(s.finetune_indices.tolist()), set(s.score_indices.tolist())
    assert len(fi) == 200 and len(si) == 150 and not fi & si
    assert len(s.train) == 1437 and len(s.test) == 360  # train keeps everything by default
    full = load_dataset("digits", "train").tensors
    assert torch.equal(s.finetune.tensors[0], full[0][s.finetune_indices])
    assert torch.equal(s.score.tensors[1], full[1][s.score_indices])


def test_make_splits_seed_limit_and_exclusion():
    a = make_splits("digits", 100, 100, seed=0)
    b = make_splits("digits", 100, 100, seed=0)
    c = make_splits("digits", 100, 100, seed=1)
    assert torch.equal(a.finetune_indices, b.finetune_indices)
    assert not torch.equal(a.finetune_indices, c.finetune_indices)
    ex = make_splits("digits", 100, 100, seed=0, train_limit=500, exclude_from_train=True)
    train_idx = set(ex.train_indices.tolist())
    assert len(ex.train) == 300 and max(train_idx | set(ex.score_indices.tolist())) < 500
    assert not train_idx & (set(ex.finetune_indices.tolist()) | set(ex.score_indices.tolist()))
    with pytest.raises(DataError, match="exceeds the 500 training images"):
        make_splits("digits", 300, 300, train_limit=500)


def test_loader_covers_each_sample_once_and_is_seeded():
    data = torch.utils.data.TensorDataset(torch.arange(10).float()[:, None], torch.arange(10))
    batches = loader(data, 4, shuffle=True, seed=5)
    assert len(batches) == 3
    epoch1 = torch.cat([y for _, y in batches])
    epoch2 = torch.cat([y for _, y in batches])
    assert sorted(epoch1.tolist()) == list(range(10)) and not torch.equal(epoch1, epoch2)
    again = loader(data, 4, shuffle=True, seed=5)
    assert torch.equal(torch.cat([y for _, y in again]), epoch1)
    assert [len(y) for _, y in loader(data, 4, drop_last=True)] == [4, 4]


def test_random_crop_flip():
    x = torch.randn(16, 3, 8, 8)
    assert torch.equal(random_crop_flip(pad=0, flip=False)(x), x)
    out = random_crop_flip(pad=2, fill=-7.0)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.equal(out, x)
    assert (out == -7.0).any()  # some crops reach into the padding
    flipped = random_crop_flip(pad=0, flip=True)(x, torch.Generator().manual_seed(0))
    for a, b in zip(flipped, x):  # each image is either itself or its mirror
        assert torch.equal(a, b) or torch.equal(a, b.flip(2))


def _write_folder(root, classes=("cat", "dog"), per_class=5, size=(10, 12)):
    from PIL import Image
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            colour = (250 * c, 40 * i, 100)
            Image.new("RGB", size, colour).save(root / name / f"{i:02d}.png")
        (root / name / "notes.txt").write_text("not an image")


def test_image_folder_loading(tmp_path):
    _write_folder(tmp_path / "pets")
    train = load_dataset(tmp_path / "pets", "train", image_size=16)
    test = load_dataset(str(tmp_path / "pets"), "test", image_size=16)
    assert train.tensors[0].shape == (8, 3, 16, 16) and len(test) == 2
    assert train.tensors[1].tolist() == [0] * 4 + [1] * 4 and test.tensors[1].tolist() == [0, 1]
    # red channel of class 1 (value 250) is far above class 0 (value 0) after normalisation
    assert train.tensors[0][4:, 0].mean() > train.tensors[0][:4, 0].mean() + 3
    info = dataset_info(tmp_path / "pets", image_size=16)
    assert info["num_classes"] == 2 and info["in_chans"] == 3 and info["image_size"] == 16


def test_image_folder_with_train_test_subfolders(tmp_path):
    _write_folder(tmp_path / "d" / "train", per_class=3)
    _write_folder(tmp_path / "d" / "test", per_class=2)
    assert len(load_dataset(tmp_path / "d", "train", image_size=8)) == 6
    assert len(load_dataset(tmp_path / "d", "test", image_size=8)) == 4
    assert dataset_info(tmp_path / "d")["num_classes"] == 2


def test_image_folder_errors_name_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty.*no class sub-folders"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "b").mkdir(parents=True)
    with pytest.raises(DataError, match="noimg.*no images"):
        load_dataset(tmp_path / "noimg")
    (tmp_path / "bad" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "b").mkdir(parents=True)
    (tmp_path / "bad" / "a" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="x.png"):
        load_dataset(tmp_path / "bad", "train")
    with pytest.raises(DataError, match="missing-folder"):
        load_dataset(tmp_path / "missing-folder")


def test_image_folder_with_one_class_is_refused(tmp_path):
    _write_folder(tmp_path / "d")
    import shutil
    shutil.rmtree(tmp_path / "d" / sorted(p.name for p in (tmp_path / "d").iterdir())[1])
    for call in (lambda: load_dataset(tmp_path / "d"), lambda: dataset_info(tmp_path / "d")):
        with pytest.raises(DataError, match="one class sub-folder.*at least two"):
            call()


def test_image_folder_is_resized_to_the_requested_height_and_width(tmp_path):
    _write_folder(tmp_path / "pets")
    x = load_dataset(tmp_path / "pets", "train", image_size=(12, 20)).tensors[0]
    assert x.shape[1:] == (3, 12, 20)


# ---------------------------------------------------------------------------- streamed image folders (issue 8)
def test_folder_splits_stream_from_disk_with_the_models_preprocessing(tmp_path, monkeypatch):
    from PIL import Image

    from depthcut.data.folder import ImageFolderData, Preprocess

    _write_folder(tmp_path / "pets", per_class=10, size=(30, 20))
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    prep = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0), crop_pct=0.5, source="test")
    s = make_splits(tmp_path / "pets", finetune_size=4, score_size=4, seed=1, image_size=(8, 12), preprocess=prep)
    assert opened == []                                         # nothing is decoded until a batch needs it
    assert all(isinstance(d, ImageFolderData) for d in (s.train, s.finetune, s.score, s.test))
    assert not set(s.finetune_indices.tolist()) & set(s.score_indices.tolist())
    assert s.train.train and s.finetune.train and not s.score.train and not s.test.train
    x, y = s.score[0]
    assert x.shape == (3, 8, 12) and len(opened) == 1
    # a uniform image: every pixel is (value/255 - mean) / std per channel, whatever the crop
    colour = (250 * y, 40 * int(s.score.files[0].stem), 100)
    want = torch.tensor([(c / 255 - 0.5) / sd for c, sd in zip(colour, prep.std)])
    assert torch.allclose(x.mean((1, 2)), want, atol=1e-5) and torch.allclose(x.std((1, 2)), torch.zeros(3), atol=1e-5)


def test_folder_transforms_are_seeded_and_eval_is_deterministic_across_workers(tmp_path):
    from PIL import Image

    root = tmp_path / "grad"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(6):   # gradients, so that crops and flips change the pixels
            across = np.tile(np.linspace(0, 255, 40), (30, 1)).astype(np.uint8)
            down = np.tile(np.linspace(0, 255, 30)[:, None], (1, 40)).astype(np.uint8)
            Image.fromarray(np.stack([across, down, np.full_like(across, 20 * i)], -1)).save(root / c / f"{i}.png")
    s = make_splits(root, finetune_size=2, score_size=2, seed=0, image_size=16, workers=0)
    first = [b[0] for b in loader(s.train, 4, shuffle=True, seed=3)]
    again = [b[0] for b in loader(s.train, 4, shuffle=True, seed=3)]
    other = [b[0] for b in loader(s.train, 4, shuffle=True, seed=4)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    inline = torch.cat([b[0] for b in loader(s.test, 3)])
    s.test.workers = s.train.workers = 2                        # decoded by two DataLoader processes
    assert torch.equal(torch.cat([b[0] for b in loader(s.test, 3)]), inline)
    assert all(torch.equal(a, b[0]) for a, b in zip(first, loader(s.train, 4, shuffle=True, seed=3)))


def test_a_folder_train_limit_samples_every_class(tmp_path):
    _write_folder(tmp_path / "pets", classes=("a", "b", "c"), per_class=10)
    s = make_splits(tmp_path / "pets", finetune_size=2, score_size=2, seed=0, image_size=8, train_limit=9)
    assert len(s.train) == 9 and set(s.train.labels) == {0, 1, 2}


def test_a_test_limit_is_one_fixed_sample_of_the_test_split(tmp_path):
    full = make_splits("digits", 100, 100, seed=0).test
    a = make_splits("digits", 100, 100, seed=0, test_limit=50).test
    b = make_splits("digits", 100, 100, seed=3, test_limit=50).test
    assert len(a) == 50 and torch.equal(a.tensors[0], b.tensors[0])        # the run's seed does not move it
    rows = {tuple(x.flatten().tolist()) for x in full.tensors[0]}
    assert all(tuple(x.flatten().tolist()) in rows for x in a.tensors[0])  # images of the test split
    assert len(set(a.tensors[1].tolist())) > 5                              # drawn, not the first 50
    assert make_splits("digits", 100, 100, test_limit=10 ** 6).test is not None
    _write_folder(tmp_path / "pets", classes=("a", "b", "c"), per_class=10)
    s = make_splits(tmp_path / "pets", finetune_size=2, score_size=2, seed=0, image_size=8, test_limit=4)
    assert len(s.test) == 4 and not s.test.train
