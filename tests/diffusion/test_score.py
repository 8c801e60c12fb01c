"""Diffusion importance, latency rows, sampling speed and the Fréchet distance (issue 11)."""
from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import DDPMScheduler, UNet2DModel  # noqa: E402

from depthcut.diffusion import score as S  # noqa: E402
from depthcut.diffusion.unet import enumerate_rows  # noqa: E402

from test_unet import SMALL  # noqa: E402


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DModel(**SMALL).eval()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(16, 1, 16, 16, generator=g) * 2 - 1


def test_held_out_loss_is_deterministic_and_tells_models_apart(unet, images):
    sched = DDPMScheduler(num_train_timesteps=100)
    a, b = S.denoising_loss(unet, images, sched, seed=3), S.denoising_loss(unet, images, sched, seed=3)
    assert a == b and a > 0
    other = UNet2DModel(**SMALL).eval()
    assert S.denoising_loss(other, images, sched, seed=3) != a
    assert S.importance(a, a) == 1.0 and S.importance(2 * a, a) == pytest.approx(torch.e ** -1)
    assert S.importance(a / 2, a) == 1.0                 # never above the original's own row


def test_the_finetuned_reference_is_the_original_through_the_rows_fine_tune(unet, images):
    """No row applied and no steps: the original's loss; with steps, the same fine-tune a row gets (seeded:
    the same value twice), and the caller's U-Net is untouched."""
    sched = DDPMScheduler(num_train_timesteps=100)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    base = S.denoising_loss(unet, images[8:], sched, seed=1)
    assert S.finetuned_loss(unet, [], images[:8], images[8:], sched, steps=0) == base
    tuned = S.finetuned_loss(unet, [], images[:8], images[8:], sched, steps=2)
    assert tuned != base and tuned == S.finetuned_loss(unet, [], images[:8], images[8:], sched, steps=2)
    assert all(torch.equal(v, unet.state_dict()[k]) for k, v in before.items())


def test_row_importance_is_one_for_an_original_conv_and_seeded_for_a_merge(unet, images):
    sched = DDPMScheduler(num_train_timesteps=100)
    rows = enumerate_rows(unet)
    base = S.denoising_loss(unet, images[8:], sched, seed=1)
    original = next(r for r in rows if r.span == "conv1")
    assert S.row_importance(unet, original, images[:8], images[8:], sched, base, steps=2) == 1.0
    merge = next(r for r in rows if r.kept == ("conv1", "conv2"))
    first = S.row_importance(unet, merge, images[:8], images[8:], sched, base, steps=2)
    assert first == S.row_importance(unet, merge, images[:8], images[8:], sched, base, steps=2) and first > 0


def test_latency_rows_cost_nothing_for_identities_and_time_the_rest(unet, tmp_path, monkeypatch):
    rows = enumerate_rows(unet)
    built = []
    real = S.row_module
    monkeypatch.setattr(S, "row_module", lambda u, r: built.append(r.key) or real(u, r))
    ms = S.latency_rows(unet, rows, "eager", cache_dir=tmp_path, repeats=2, passes=2)
    assert set(ms) == {r.key for r in rows}
    assert all((ms[r.key] == 0.0) == (not r.kept) for r in rows) and all(v >= 0 for v in ms.values())
    # timed through the latency cache (depthcut.latency.table.time_rows): rows that run the same conv on the
    # same input share one timing, and a second call times nothing
    distinct = {S._row_key(r, 1) for r in rows if r.kept}
    assert len(built) == 2 * len(distinct) < 2 * sum(r.kept != () for r in rows)
    assert S.latency_rows(unet, rows, "eager", cache_dir=tmp_path, repeats=2, passes=2) == ms
    assert len(built) == 2 * len(distinct)
    merged = next(r for r in rows if r.kept == ("conv1", "conv2"))
    module = S.row_module(unet, merged)
    assert module[0].kernel_size == (5, 5) and isinstance(module[1], torch.nn.GroupNorm)


def test_sampling_speed_pairs_whole_ddim_runs(unet):
    """Scripted clock: every original run takes 2 ms, every compressed one 1 ms, whatever the order."""
    sched = DDPMScheduler(num_train_timesteps=100)
    order = itertools.chain.from_iterable(("o", "c") if k % 2 == 0 else ("c", "o") for k in itertools.count())
    stamps = itertools.chain.from_iterable(_stamps(order))
    est = S.compare_sampling(unet, unet, sched, batch=1, steps=2, min_rounds=4, max_rounds=4,
                             clock=lambda: next(stamps))
    assert (est.ratio, est.low, est.high) == pytest.approx((2.0, 2.0, 2.0)) and est.rounds == 4


def _stamps(order):
    now = 0.0
    for who in order:
        yield (now, now + (0.002 if who == "o" else 0.001))
        now += 1.0


def test_ddim_samples_have_the_models_shape(unet):
    x = S.ddim_sample(unet, DDPMScheduler(num_train_timesteps=100), batch=2, steps=3)
    assert x.shape == (2, 1, 16, 16) and x.abs().max() <= 1


def test_frechet_distance_of_a_shift_is_its_squared_length():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 6, generator=g) @ torch.randn(6, 6, generator=g)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 1.0])
    assert S.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert S.frechet_distance(a, a + shift) == pytest.approx(float(shift.pow(2).sum()), rel=1e-6)
