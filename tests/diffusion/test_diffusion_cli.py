"""``depthcut compress --task generation`` (issue 11): a diffusers U-Net folder in, a report and a diffusers
model/pipeline out; bad input is one line."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import DDPMScheduler, UNet2DModel  # noqa: E402

from depthcut.cli import main  # noqa: E402

from test_diffusion_pipeline import scripted_speed  # noqa: E402

DIGITS_UNET = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(64, 64), layers_per_block=1,
                   down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                   norm_num_groups=32)


def test_cli_compresses_a_unet_folder(monkeypatch, tmp_path, capsys):
    scripted_speed(monkeypatch, per_merge=0.05)
    torch.manual_seed(0)
    UNet2DModel(**DIGITS_UNET).save_pretrained(tmp_path / "unet")
    DDPMScheduler(num_train_timesteps=100).save_pretrained(tmp_path / "unet")
    code = main(["compress", "--task", "generation", "--model", str(tmp_path / "unet"), "--data", "digits",
                 "--speedup", "1.1", "--importance-steps", "1", "--finetune-size", "20", "--score-size", "20",
                 "--recovery-steps", "1", "--sampling-steps", "2", "--batch-size", "2", "--quiet",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    assert "sampling speed-up x1." in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert 1.1 <= report["speedup_low"] and report["speedup"] <= 1.1 * 1.1    # landed in the band
    assert report["merged_blocks"] >= 3 and report["quality"] is None        # no classifier for digits
    assert (tmp_path / "out" / "unet" / "config.json").exists()


def test_cli_generation_errors_are_one_line(monkeypatch, tmp_path, capsys):
    import depthcut.diffusion.cli as dcli

    monkeypatch.setattr(dcli, "EMBEDDED_DIR", tmp_path / "missing")
    for args, words in ((["--model", "ddpm_fmnist"], "train it with"),
                        (["--model", str(tmp_path)], "not a diffusers UNet2DModel folder"),
                        (["--model", "ddpm_fmnist", "--speedup", "0.9"], "speedup")):
        code = main(["compress", "--task", "generation", "--data", "digits", "--out", str(tmp_path / "o"), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and words in err[0], err


def test_the_embedded_ddpm_loads_enumerates_and_samples():
    """The embedded default (scripts/train_ddpm.py, committed fp16 weights) is a working diffusers U-Net."""
    import json

    from depthcut.diffusion.cli import EMBEDDED_DIR, load_unet
    from depthcut.diffusion.score import ddim_sample
    from depthcut.diffusion.unet import enumerate_rows

    unet, scheduler = load_unet("ddpm_fmnist")
    assert next(unet.parameters()).dtype == torch.float32 and scheduler.config.num_train_timesteps == 1000
    rows = enumerate_rows(unet)
    assert len(rows) == 11 * 4 + 1 + 2 + 2 * 2          # 11 ResNet blocks, conv_in, 2 down, 2 up x 2
    x = ddim_sample(unet, scheduler, batch=2, steps=2)
    assert x.shape == (2, 1, 28, 28) and torch.isfinite(x).all()
    training = json.loads((EMBEDDED_DIR / "training.json").read_text())
    assert training["steps"] > 0 and training["config"]["block_out_channels"] == [64, 64, 96]
