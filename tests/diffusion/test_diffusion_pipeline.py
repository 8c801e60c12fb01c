"""compress_unet end to end on a small random U-Net (issue 11): the stages run, the plan lands on the measured
sampling speed-up (scripted here, and the rows timed on a simulated clock: timing is a bench's job), the result
saves as a diffusers model and pipeline."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import DDIMPipeline, DDPMScheduler, UNet2DModel  # noqa: E402

from depthcut.diffusion import pipeline as P  # noqa: E402
from depthcut.diffusion import score as S  # noqa: E402
from depthcut.diffusion.merge import MergedResnetBlock  # noqa: E402
from depthcut.diffusion.unet import enumerate_rows  # noqa: E402
from depthcut.latency.compare import SpeedupEstimate  # noqa: E402

from test_unet import SMALL  # noqa: E402

# The rows' latency on the simulated clock (tests/simulated_backend.py: every conv costs the same): these tests
# check the stages and the landing, not a real backend's row timings (tests/latency time those).
SIMULATED = "sleepy"


def scripted_speed(monkeypatch, per_merge: float = 0.06):
    """Each merged ResNet block makes sampling per_merge faster (relative), measured exactly."""
    def compare(original, compressed, *args, **kwargs):
        merged = sum(isinstance(m, MergedResnetBlock) for m in compressed.modules())
        ratio = 1 + per_merge * merged
        return SpeedupEstimate(ratio, ratio * 0.995, ratio * 1.005, 5, 0, 10.0, 10.0 / ratio, 10.0 / ratio)
    monkeypatch.setattr(S, "compare_sampling", compare)


def test_compress_unet_lands_checks_and_saves(monkeypatch, tmp_path):
    scripted_speed(monkeypatch)
    torch.manual_seed(0)
    unet = UNet2DModel(**SMALL).eval()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    images = torch.rand(40, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    config = P.GenerationConfig(speedup=1.15, batch=2, sampling_steps=2, importance_steps=1, finetune_size=8,
                                score_size=8, recovery_steps=1, fd_samples=8, progress=False,
                                cache_dir=str(tmp_path / "cache"), backend=SIMULATED)
    features = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 6))
    result = P.compress_unet(unet, DDPMScheduler(num_train_timesteps=50), images, config, features=features)
    r = result.report
    assert r["speedup_low"] >= 1.15 and r["speedup"] <= 1.15 * 1.10 and not r["landing_overshoot"]
    # 3 merges (x1.18) or 4 (x1.24) land in [1.15, 1.265]; which blocks depends on the measured rows
    assert r["merged_blocks"] in (3, 4) and r["speedup"] == pytest.approx(1 + 0.06 * r["merged_blocks"])
    assert r["intended_structure_error"] < 1e-12 and r["intended_relative_error"] < 1e-5
    assert r["quality"]["fd_original"] > 0 and r["quality"]["samples"] == 8
    assert all(torch.equal(v, unet.state_dict()[k]) for k, v in before.items())   # the caller's U-Net
    out = result.save_pretrained(tmp_path / "out")
    assert json.loads((out / "report.json").read_text())["merged_blocks"] == r["merged_blocks"]
    assert (out / "samples.png").exists() and "Sampling speed-up" in (out / "report.md").read_text()
    pipe = DDIMPipeline.from_pretrained(out / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    assert pipe(batch_size=1, num_inference_steps=2, output_type="np").images.shape == (1, 16, 16, 1)


def test_bad_generation_config_is_one_line():
    from depthcut.errors import DepthcutError

    with pytest.raises(DepthcutError, match="speedup"):
        P.GenerationConfig(speedup=1.0)
    with pytest.raises(DepthcutError, match="importance_reference.*finetuned, original.*'trained'"):
        P.GenerationConfig(importance_reference="trained")
    with pytest.raises(DepthcutError, match="images: need more than"):
        P.compress_unet(UNet2DModel(**SMALL), DDPMScheduler(), torch.zeros(3, 1, 16, 16),
                        P.GenerationConfig(finetune_size=2, score_size=2, progress=False))


def test_recovery_distils_from_the_original():
    """kd_weight w mixes the target. With a teacher that predicts zero noise everywhere, w = 1 trains the
    U-Net toward silence and w = 0 toward the sampled noise: after the same steps from the same start, the
    w = 1 predictions are far smaller."""
    import copy
    from types import SimpleNamespace

    from depthcut.errors import DepthcutError

    class Silent(torch.nn.Module):
        def forward(self, x, t):
            return SimpleNamespace(sample=torch.zeros_like(x))

    torch.manual_seed(0)
    start = UNet2DModel(**SMALL).eval()
    images = torch.rand(16, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    scheduler = DDPMScheduler(num_train_timesteps=50)
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    power = {}
    for w in (1.0, 0.0):
        student = copy.deepcopy(start)
        S.finetune(student, images, scheduler, steps=20, lr=1e-3, batch=8, teacher=Silent(), kd_weight=w)
        with torch.no_grad():
            power[w] = float(student(x, torch.tensor([25] * 4)).sample.pow(2).mean())
    assert power[1.0] < 0.25 * power[0.0], power
    with pytest.raises(DepthcutError, match="recovery_kd_weight"):
        P.GenerationConfig(recovery_kd_weight=1.5)


def test_recovery_ema_averages_the_steps_weights():
    """EMA 0.9 over two steps, with diffusers' warm-up (decay min(0.9, (1 + k) / (10 + k))): the result is
    0.1818 (0.1 w0 + 0.9 w1) + 0.8182 w2, where w1, w2 are the raw weights after one and two steps of the same
    run (the average draws no random numbers, so the raw runs follow the same trajectory)."""
    import copy

    from depthcut.errors import DepthcutError

    torch.manual_seed(0)
    start = UNet2DModel(**SMALL).eval()
    images = torch.rand(16, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    scheduler = DDPMScheduler(num_train_timesteps=50)

    def run(steps, ema=0.0):
        model = S.finetune(copy.deepcopy(start), images, scheduler, steps=steps, lr=1e-2, batch=4, ema=ema)
        return torch.nn.utils.parameters_to_vector(model.parameters()).detach()

    w0 = torch.nn.utils.parameters_to_vector(start.parameters()).detach()
    w1, w2, averaged = run(1), run(2), run(2, ema=0.9)
    d1 = 2 / 11
    expected = d1 * (0.1 * w0 + 0.9 * w1) + (1 - d1) * w2
    assert (w2 - w1).abs().max() > 1e-3                     # the steps moved the weights: the check has teeth
    torch.testing.assert_close(averaged, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(DepthcutError, match="recovery_ema"):
        P.GenerationConfig(recovery_ema=1.0)


class Killed(BaseException):
    """A kill mid-table (BaseException, like KeyboardInterrupt, so nothing catches it on the way)."""


def test_importance_table_resumes_after_a_kill(monkeypatch, tmp_path):
    """Each entry is written as it finishes: a run killed mid-table loses nothing finished, and the rerun
    computes only the rest, with the same values; other weights get a fresh table."""
    from depthcut.diffusion import score as S
    from depthcut.diffusion.unet import enumerate_rows

    torch.manual_seed(0)
    unet = UNet2DModel(**SMALL).eval()
    rows = enumerate_rows(unet)
    images = torch.rand(16, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    config = P.GenerationConfig(importance_steps=1, progress=False, cache_dir=str(tmp_path))
    calls, kill_after = [], [3]

    def scored(unet, row, *args):
        if len(calls) == kill_after[0]:
            kill_after[0] = None
            raise Killed                                 # the kill, after three finished entries
        calls.append(row.key)
        return 0.5 + len(row.key) / 1000

    monkeypatch.setattr(S, "row_importance", scored)
    with pytest.raises(Killed):
        P.importance_table(unet, rows, images[:8], images[8:], DDPMScheduler(), 1.0, config)
    first = list(calls)
    table = P.importance_table(unet, rows, images[:8], images[8:], DDPMScheduler(), 1.0, config)
    assert len(first) == 3 and len(calls) == len(rows) and not set(first) & set(calls[3:])
    assert table == {r.key: 0.5 + len(r.key) / 1000 for r in rows}
    calls.clear()
    assert P.importance_table(unet, rows, images[:8], images[8:], DDPMScheduler(), 1.0, config) == table
    assert calls == []                                   # a finished table is read back, nothing recomputed
    with torch.no_grad():
        unet.conv_in.weight.add_(1.0)
    P.importance_table(unet, rows, images[:8], images[8:], DDPMScheduler(), 1.0, config)
    assert len(calls) == len(rows)                       # other weights: other manifest, all recomputed


@pytest.mark.parametrize("reference", ["finetuned", "original"])
def test_rows_are_scored_against_the_configured_reference(monkeypatch, tmp_path, reference):
    """"finetuned": every row is scored against the original after the same fine-tune, computed once and cached
    with the table (a rerun fine-tunes nothing); "original": against the untouched original's loss."""
    from depthcut.diffusion.unet import enumerate_rows

    torch.manual_seed(0)
    unet = UNet2DModel(**SMALL).eval()
    rows = enumerate_rows(unet)
    images = torch.rand(16, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    config = P.GenerationConfig(importance_steps=1, importance_reference=reference, progress=False,
                                cache_dir=str(tmp_path))
    references, finetunes = [], []

    def finetuned(unet, rows, *args):
        finetunes.append(list(rows))
        return 0.25

    def scored(unet, row, finetune, held, scheduler, base_loss, *args):
        references.append(base_loss)
        return 0.5

    monkeypatch.setattr(S, "finetuned_loss", finetuned)
    monkeypatch.setattr(S, "row_importance", scored)
    for _ in range(2):
        P.importance_table(unet, rows, images[:8], images[8:], DDPMScheduler(), 1.0, config)
    assert len(references) == len(rows)                  # the second table was read back
    assert set(references) == {0.25 if reference == "finetuned" else 1.0}
    assert finetunes == ([[]] if reference == "finetuned" else [])   # the original, no row applied, once
    assert P.importance_reference(unet, images[:8], images[8:], DDPMScheduler(), 1.0, config) == references[0]


def test_adaptive_importance_fine_tunes_fewer_rows_and_shares_the_full_tables_entries(monkeypatch, tmp_path):
    """importance_mode="adaptive" on the U-Net (issue 30): every scored row gets a cheap score (no fine-tune),
    only a random sample and the rows of contending plans are fine-tuned, and each fine-tuned entry is the
    full table's own (same store: a full table run afterwards fine-tunes only the rest). A rerun from the
    caches fine-tunes nothing and lands on the same plan."""
    scripted_speed(monkeypatch)
    calls = []
    real = S.row_importance

    def counting(unet, row, *args, **kwargs):
        calls.append((row.key, args[4] if len(args) > 4 else kwargs.get("steps")))
        return real(unet, row, *args, **kwargs)
    monkeypatch.setattr(S, "row_importance", counting)
    torch.manual_seed(0)
    unet = UNet2DModel(**SMALL).eval()
    images = torch.rand(40, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    config = P.GenerationConfig(speedup=1.15, batch=2, sampling_steps=2, importance_steps=1, finetune_size=8,
                                score_size=8, recovery_steps=1, progress=False, importance_mode="adaptive",
                                importance_reference="original", cache_dir=str(tmp_path / "cache"),
                                backend=SIMULATED)
    r = P.compress_unet(unet, DDPMScheduler(num_train_timesteps=50), images, config).report
    rows = enumerate_rows(unet, batch=2)
    scored = P.scored_rows(rows)
    stats = r["importance_adaptive"]
    finetuned = [k for k, steps in calls if steps == 1]
    assert stats["candidates"] == len(scored) and stats["finetuned"] == len(finetuned) == len(set(finetuned))
    assert 0 < stats["finetuned"] < len(scored) and stats["cheap_only"] == len(scored) - stats["finetuned"]
    assert sorted(k for k, steps in calls if steps == 0) == sorted(row.key for row in scored)
    assert r["speedup_low"] >= 1.15 and r["intended_structure_error"] < 1e-12
    # the same caches: nothing is fine-tuned or scored again, and the plan is the same
    calls.clear()
    again = P.compress_unet(unet, DDPMScheduler(num_train_timesteps=50), images, config).report
    assert calls == [] and again["plan"] == r["plan"]
    # the full table reads the adaptive run's entries and fine-tunes only the rows it did not
    full_config = P.GenerationConfig(**{**config.to_dict(), "importance_mode": "full"})
    base = S.denoising_loss(unet, images[8:16], DDPMScheduler(num_train_timesteps=50), seed=1)
    P.importance_table(unet, rows, images[:8], images[8:16], DDPMScheduler(num_train_timesteps=50), base,
                       full_config)
    scored_keys = {row.key for row in scored}
    assert not set(k for k, _ in calls) & set(finetuned)
    assert len([k for k, steps in calls if steps == 1 and k in scored_keys]) == len(scored) - len(finetuned)
