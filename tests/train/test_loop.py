"""Training loop: learns, is deterministic, distils, re-calibrates BN, evaluates correctly."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from depthcut.data import load_dataset
from depthcut.train import batch_statistics, cosine_lr, distillation_loss, evaluate, recalibrate_bn, train


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "test")


def tiny_conv(seed: int = 0, width: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.1), nn.Linear(width * 16, 10))


def test_train_learns_digits(digits):
    train_set, test_set = digits
    model = tiny_conv()
    before = evaluate(model, test_set)
    hist = train(model, train_set, epochs=3, lr=0.05, batch_size=64, progress=False)
    assert hist["steps"] == 3 * (1437 // 64) == len(hist["loss"]) and len(hist["epoch_loss"]) == 3
    assert sum(hist["loss"][-5:]) < 0.5 * sum(hist["loss"][:5])
    assert hist["epoch_loss"][-1] < hist["epoch_loss"][0]
    after = evaluate(model, test_set)
    assert after > 80 and after > before + 30
    assert not model.training  # train() hands the model back in eval mode


def test_steps_and_cosine_schedule(digits):
    hist = train(tiny_conv(), digits[0], steps=7, lr=0.2, batch_size=32, progress=False)
    assert len(hist["loss"]) == 7 and hist["lr"][0] == pytest.approx(0.2)
    assert all(a > b for a, b in zip(hist["lr"], hist["lr"][1:]))  # strictly decaying to ~0
    const = train(tiny_conv(), digits[0], steps=3, lr=0.2, schedule="constant", progress=False)
    assert const["lr"] == [0.2] * 3
    assert cosine_lr(0, 10, 1.0, warmup=2) == 0.5 and cosine_lr(10, 10, 1.0) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="step"):
        train(tiny_conv(), digits[0], steps=1, schedule="step", progress=False)


def test_determinism_with_seed_and_global_rng_untouched(digits):
    state = torch.get_rng_state()
    runs = []
    for seed in (0, 0, 1):
        model = tiny_conv()
        train(model, digits[0], steps=15, batch_size=32, seed=seed, progress=False,
              augment=lambda x, g: x + 0.1 * torch.randn(x.shape, generator=g))
        runs.append(model.state_dict())
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])
    assert torch.equal(torch.get_rng_state(), state)


def test_distillation_changes_the_loss(digits):
    teacher = tiny_conv(seed=7)
    train(teacher, digits[0], steps=20, progress=False)
    plain = train(tiny_conv(), digits[0], steps=5, progress=False)
    distilled = train(tiny_conv(), digits[0], steps=5, teacher=teacher, kd_weight=0.3, progress=False)
    zero = train(tiny_conv(), digits[0], steps=5, teacher=teacher, kd_weight=0.0, progress=False)
    assert distilled["ce"][0] == pytest.approx(plain["ce"][0])  # same model, same batch
    assert distilled["loss"][0] != pytest.approx(plain["loss"][0])
    assert zero["loss"] == pytest.approx(plain["loss"])
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    assert distillation_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(s, t).item() > 0
    assert not teacher.training


def test_recalibrate_bn_recomputes_exact_statistics(digits):
    data = torch.utils.data.TensorDataset(*(t[:1280] for t in digits[0].tensors))
    model = tiny_conv()
    bn = model[1]
    bn.momentum = 0.3
    model.eval()
    recalibrate_bn(model, data, batches=10, batch_size=128)  # 10 x 128 = every image once
    with torch.no_grad():
        features = model[0](data.tensors[0])
    assert torch.allclose(bn.running_mean, features.mean((0, 2, 3)), atol=1e-5)
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert bn.momentum == 0.3 and not model.training  # momentum and eval mode restored
    before = bn.running_mean.clone()
    recalibrate_bn(model, data, batches=1, batch_size=16)
    assert not torch.equal(bn.running_mean, before)


def test_evaluate_matches_manual_count_and_restores_mode(digits):
    test_set = digits[1]
    model = tiny_conv()
    model.train()
    x, y = test_set.tensors
    model.eval()
    with torch.no_grad():
        expected = 100.0 * (model(x).argmax(1) == y).float().mean().item()
    model.train()
    assert evaluate(model, test_set, batch_size=50) == pytest.approx(expected)
    assert model.training
    # the default batch (64 on a CPU, for speed) counts the same: eval mode takes nothing from the batch
    assert evaluate(model, test_set) == evaluate(model, test_set, batch_size=len(y)) == pytest.approx(expected)


def test_evaluate_with_batch_statistics_normalises_each_batch_by_its_own_and_keeps_the_running_ones(digits):
    test_set = digits[1]
    x, y = test_set.tensors
    model = tiny_conv().eval()
    bn = model[1]
    bn.running_mean.fill_(50.0)             # stale statistics, as after a block is removed
    stale = {k: v.clone() for k, v in bn.state_dict().items()}
    momentum = bn.momentum
    n = len(y) // 2
    with torch.no_grad():                   # by hand: each half in train mode on a copy (its statistics alone)
        expected = 0
        for part in (slice(0, n), slice(n, len(y))):
            copy = tiny_conv()
            copy.load_state_dict(model.state_dict())
            copy.eval()
            copy[1].train()                 # BatchNorm only: dropout stays off
            expected += (copy(x[part]).argmax(1) == y[part]).sum().item()
    assert evaluate(model, test_set, batch_size=n, batch_statistics=True) == pytest.approx(100.0 * expected / len(y))
    assert all(torch.equal(bn.state_dict()[k], v) for k, v in stale.items())   # running statistics and counter kept
    assert bn.momentum == momentum and not model.training
    assert evaluate(model, test_set, batch_size=n) != evaluate(model, test_set, batch_size=n, batch_statistics=True)


def test_progress_bar_on_stderr(digits, capsys, monkeypatch):
    monkeypatch.setenv("DEPTHCUT_PROGRESS", "1")
    train(tiny_conv(), digits[0], steps=3, progress=True, desc="tinybar")
    captured = capsys.readouterr()
    assert "tinybar" in captured.err and "tinybar" not in captured.out
    train(tiny_conv(), digits[0], steps=3, progress=False, desc="quietbar")
    assert "quietbar" not in capsys.readouterr().err


def test_time_budget_stops_early_with_decaying_lr(digits):
    hist = train(tiny_conv(), digits[0], steps=100000, batch_size=32, max_seconds=1.0, progress=False)
    assert 0 < hist["steps"] < 100000 and len(hist["loss"]) == hist["steps"]
    assert all(a >= b for a, b in zip(hist["lr"], hist["lr"][1:]))
    assert hist["lr"][-1] < 0.1  # the schedule moved forward with the clock, not with the (few) steps


def test_exact_epochs_leave_no_empty_epoch(digits):
    data = torch.utils.data.TensorDataset(*(t[:256] for t in digits[0].tensors))
    hist = train(tiny_conv(), data, epochs=2, batch_size=64, progress=False)
    assert hist["steps"] == 8 and len(hist["epoch_loss"]) == 2 and all(v > 0 for v in hist["epoch_loss"])


def test_zero_epochs_leave_the_weights_as_they_were_and_a_fraction_takes_a_step(digits):
    data = torch.utils.data.TensorDataset(*(t[:256] for t in digits[0].tensors))
    model = tiny_conv()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hist = train(model, data, epochs=0, batch_size=64, progress=False)
    assert hist["steps"] == 0 and not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert train(model, data, epochs=0.001, batch_size=64, progress=False)["steps"] == 1


def test_mixed_precision_and_channels_last_train_on_the_cpu():
    import torch
    from torch import nn

    from depthcut.data import make_splits
    from depthcut.train import evaluate, train

    splits = make_splits("digits", finetune_size=10, score_size=10, seed=0)
    for amp, channels_last in (("bf16", False), (None, True)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                              nn.Linear(8 * 64, 10))
        history = train(model, splits.train, epochs=2, lr=0.05, batch_size=64, progress=False, amp=amp,
                        channels_last=channels_last)
        assert history["loss"][-1] < history["loss"][0]
        assert evaluate(model, splits.test) > 60


def test_batch_statistics_never_write_the_running_statistics_even_when_a_batch_overflows():
    """A batch whose statistics are inf or nan (a wrecked candidate) leaves the running statistics as they were
    (a momentum of 0 would have written 0 * inf = nan into them), and the normalisation is train mode's, bit for
    bit."""
    model = tiny_conv().eval()
    bn = model[1]
    kept = {k: v.clone() for k, v in bn.state_dict().items()}
    x = torch.randn(16, 1, 8, 8)
    reference = tiny_conv()
    reference.load_state_dict(model.state_dict())
    reference.eval()
    reference[1].train()
    with torch.no_grad(), batch_statistics(model):
        assert torch.equal(model(x), reference(x))
        model(torch.full((4, 1, 8, 8), float("inf")))
    assert all(torch.equal(bn.state_dict()[k], v) for k, v in kept.items())
    assert not bn.training and bn.track_running_stats and not model.training
