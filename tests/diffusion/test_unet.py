"""Diffusion U-Nets (issue 11): the (block, option) rows of diffusers' UNet2DModel, and merged ResNet blocks that
equal the intended function (nonlinearity removed, padding moved, time embedding pushed, postnorm added)."""
from __future__ import annotations

import collections

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import UNet2DModel  # noqa: E402

from depthcut.diffusion.merge import (MergedResnetBlock, apply_plan, intended_block, intended_unet,  # noqa: E402
                                      postnorm_for)
from depthcut.diffusion.unet import enumerate_rows, resnet_blocks  # noqa: E402
from depthcut.errors import DepthcutError  # noqa: E402

# google/ddpm-cifar10-32's UNet2DModel configuration (weights are not needed to count rows)
DDPM_CIFAR10 = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
                    layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_eps=1e-6,
                    norm_num_groups=32, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, act_fn="silu",
                    attention_head_dim=None)
SMALL = dict(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(64, 96), layers_per_block=1,
             down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
             norm_num_groups=8, attention_head_dim=8)


def test_ddpm_cifar10_has_layermerges_98_rows():
    torch.manual_seed(0)
    rows = enumerate_rows(UNet2DModel(**DDPM_CIFAR10))
    assert len(rows) == 98                               # LayerMerge's enumeration of the same U-Net
    kinds = collections.Counter((r.kind, r.span, r.kernel) for r in rows)
    assert kinds == {("resnet", "conv1", 3): 22, ("resnet", "conv2", 3): 22, ("resnet", "conv1+conv2", 5): 22,
                     ("resnet", "conv1+conv2", 3): 22, ("conv_in", "conv", 3): 1, ("downsample", "conv", 3): 3,
                     ("upsample", "conv", 3): 3, ("upsample", "conv", 0): 3}
    assert len({r.key for r in rows}) == 98
    # a width-changing conv1 cannot be pruned: the one-conv option keeps it
    for r in rows:
        if r.kind == "resnet" and r.kernel == 3 and r.span == "conv1+conv2" and r.in_channels != r.out_channels:
            assert r.kept == ("conv1",)
    assert [r.module for r in rows][:2] == ["conv_in", "down_blocks.0.resnets.0"]   # execution order
    assert rows[-1].module.startswith("up_blocks.3")


def _randomise_norms(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.GroupNorm):
            with torch.no_grad():
                m.weight.copy_(1 + 0.5 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=g))


@pytest.mark.parametrize("seed", [0, 1])
def test_every_merged_block_equals_the_intended_function(seed):
    torch.manual_seed(seed)
    unet = UNet2DModel(**SMALL).double().eval()
    _randomise_norms(unet, seed)
    rows = [r for r in enumerate_rows(unet) if r.span == "conv1+conv2"]
    blocks = dict(resnet_blocks(unet))
    assert {r.kept for r in rows} >= {("conv1", "conv2"), ("conv1",)}
    for row in rows:
        block = blocks[row.module]
        merged = MergedResnetBlock(block, row).double().eval()
        _randomise_norms(merged.postnorm, seed + 7)          # a trained postnorm, not the identity-like init
        x = torch.randn(row.input_shape[:1] + (block.conv1.in_channels,) + row.input_shape[2:], dtype=torch.float64)
        x = torch.randn((2,) + x.shape[1:], dtype=torch.float64)
        temb = torch.randn(2, block.time_emb_proj.in_features, dtype=torch.float64)
        with torch.no_grad():
            want = intended_block(block, row, merged.postnorm, x, temb)
            got = merged(x, temb)
            original = block(x, temb)
        err = float((got - want).norm() / want.norm())
        assert err < 1e-10, (row.key, err)
        assert float((original - want).norm() / want.norm()) > 1e-3      # the row does change the function
        assert merged.conv.kernel_size == (row.kernel, row.kernel)


def test_the_check_sees_a_time_embedding_not_pushed_through_conv2():
    """The comparison has teeth: a merge that adds the raw projection (not conv2's spatial sum of it) fails.
    (With 32 channels the postnorm has one channel per group, an instance norm, and erases any per-channel
    constant, the time embedding included: the small U-Nets here have 64 and 96 channels.)"""
    torch.manual_seed(3)
    unet = UNet2DModel(**SMALL).double().eval()
    row = next(r for r in enumerate_rows(unet) if r.kept == ("conv1", "conv2"))
    block = dict(resnet_blocks(unet))[row.module]
    merged = MergedResnetBlock(block, row).double().eval()
    with torch.no_grad():
        merged.time_emb_proj.weight.copy_(block.time_emb_proj.weight)
        merged.time_emb_proj.bias.copy_(block.time_emb_proj.bias)
        x = torch.randn(2, block.conv1.in_channels, 8, 8, dtype=torch.float64)
        temb = torch.randn(2, block.time_emb_proj.in_features, dtype=torch.float64)
        want = intended_block(block, row, merged.postnorm, x, temb)
        assert float((merged(x, temb) - want).norm() / want.norm()) > 1e-3


def test_postnorm_groups_and_unsupported_blocks():
    assert postnorm_for(256).num_groups == 32 and postnorm_for(48).num_groups == 48
    unet = UNet2DModel(**{**SMALL, "resnet_time_scale_shift": "scale_shift"})
    with pytest.raises(DepthcutError, match="scale-shift"):
        enumerate_rows(unet)


def _random_plan(rows, rng):
    """Per ResNet block: the original pair or one of its merged rows; per up-sampling conv: keep or identity."""
    plan, by_module = [], collections.defaultdict(list)
    for r in rows:
        by_module[r.module].append(r)
    for module, options in by_module.items():
        if options[0].kind == "resnet":
            singles = [r for r in options if r.span != "conv1+conv2"]
            merged = [r for r in options if r.span == "conv1+conv2"]
            plan += singles if rng.random() < 0.3 else [rng.choice(merged)]
        else:
            plan.append(rng.choice(options))
    return plan


@pytest.mark.parametrize("seed", range(3))
def test_a_merged_unet_is_the_plans_function_end_to_end(seed):
    """Whole network, any plan: the merged U-Net equals the intended one (original modules, the plan's
    changes) in float64, for every timestep; the caller's U-Net is untouched."""
    import random

    torch.manual_seed(seed)
    unet = UNet2DModel(**SMALL).double().eval()
    _randomise_norms(unet, seed)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    rows = enumerate_rows(unet)
    plan = _random_plan(rows, random.Random(seed))
    merged = apply_plan(unet, plan).eval()
    for name, m in merged.named_modules():
        if isinstance(m, MergedResnetBlock):
            _randomise_norms(m.postnorm, seed + len(name))
    reference = intended_unet(unet, plan, merged).eval()
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    for t in (0, 500, 999):
        with torch.no_grad():
            want = reference(x, torch.tensor([t, t])).sample
            got = merged(x, torch.tensor([t, t])).sample
        assert float((got - want).norm() / want.norm()) < 1e-10
    assert all(torch.equal(v, unet.state_dict()[k]) for k, v in before.items())


def test_a_plan_must_decide_every_block_once():
    from depthcut.diffusion.merge import check_plan

    unet = UNet2DModel(**SMALL)
    rows = enumerate_rows(unet)
    first = next(r for r in rows if r.kind == "resnet")
    with pytest.raises(DepthcutError, match=f"ResNet block {first.module}"):
        check_plan(unet, [r for r in rows if r.module != first.module])


def test_the_layermerge_dp_over_unet_rows_equals_brute_force():
    """Integer latencies on an exact grid: at every budget the DP's plan is the best of all U-Net plans (each
    ResNet block: original pair or a merged row; each up-sampling conv: keep or identity), and it is a plan
    apply_plan accepts."""
    import itertools
    import random

    from depthcut.diffusion.merge import check_plan
    from depthcut.diffusion.search import frontier

    unet = UNet2DModel(**SMALL)
    rows = enumerate_rows(unet)
    rng = random.Random(0)
    latency = {r.key: (0 if not r.kept else rng.randint(1, 9)) for r in rows}
    importance = {r.key: (1.0 if r.span in ("conv1", "conv2", "conv") and r.kept else rng.uniform(0.2, 1.6))
                  for r in rows}
    groups = collections.defaultdict(list)
    for r in rows:
        groups[r.module].append(r)
    choices = []
    for options in groups.values():
        if options[0].kind == "resnet":
            choices.append([tuple(r for r in options if r.span != "conv1+conv2")]
                           + [(r,) for r in options if r.span == "conv1+conv2"])
        else:
            choices.append([(r,) for r in options])
    plans = [sum(combo, ()) for combo in itertools.product(*choices)]
    assert len(plans) == 3 ** 8 * 2
    slowest = max(sum(latency[r.key] for r in p) for p in plans)
    front = frontier(rows, latency, importance, steps=slowest, max_latency_ms=slowest)
    for budget in range(min(sum(latency[r.key] for r in p) for p in plans), slowest + 1, 3):
        best = max(sum(importance[r.key] for r in p) for p in plans if sum(latency[r.key] for r in p) <= budget)
        got = front.best(budget)
        assert got.importance == pytest.approx(best) and got.latency_ms <= budget
        check_plan(unet, [row.ref for row in got.rows])


def test_a_compressed_unet_saves_loads_and_samples_with_stock_diffusers(tmp_path):
    """Issue 11: the output is a diffusers model directory: from_pretrained gives the same function, and a
    DDPM/DDIM pipeline saved with it reloads through model_index.json and samples."""
    import json
    import random

    from diffusers import DDIMPipeline, DDIMScheduler

    from depthcut.diffusion.model import DepthcutUNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(**SMALL).eval()
    _randomise_norms(unet, 0)
    plan = _random_plan(enumerate_rows(unet), random.Random(1))
    model = DepthcutUNet2DModel.from_unet(unet, plan)
    model.save_pretrained(tmp_path / "unet")
    assert json.loads((tmp_path / "unet" / "config.json").read_text())["depthcut_plan"]
    again = DepthcutUNet2DModel.from_pretrained(tmp_path / "unet").eval()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.allclose(again(x, t).sample, model(x, t).sample, atol=1e-6)
        assert torch.allclose(model(x, t).sample, apply_plan(unet, plan)(x, t).sample, atol=1e-6)
    pipe = DDIMPipeline(unet=model, scheduler=DDIMScheduler(num_train_timesteps=50))
    pipe.save_pretrained(tmp_path / "pipe")
    assert json.loads((tmp_path / "pipe" / "model_index.json").read_text())["unet"] == [
        "depthcut.diffusion.model", "DepthcutUNet2DModel"]
    loaded = DDIMPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    images = loaded(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                    output_type="np").images
    assert images.shape == (2, 16, 16, 1) and float(abs(images).sum()) > 0
