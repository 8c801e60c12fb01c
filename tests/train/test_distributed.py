"""Data-parallel recovery (issue 8): 2 processes with gloo give the single-process result."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.data import TensorDataset

from depthcut.train import train
from depthcut.train.distributed import distributed_train


class Seen(nn.Module):
    """Counts the rows that pass through (a buffer, so rank 0's count comes back with its weights)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("rows", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        if self.training:
            self.rows += x.shape[0]
        return x


def test_two_gloo_processes_train_like_one_in_a_fresh_process():
    """Forked workers inherit whatever threads the parent runs; after the suite's Ray and lm-eval tests that can
    deadlock a child, so the check runs in a fresh interpreter, as a user's job would."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = str(Path(__file__).resolve().parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", "import test_distributed as t; t.check_two_gloo_processes()"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def check_two_gloo_processes():
    """Same weights as one process on the same global batches, and each rank saw only its half of them."""
    torch.manual_seed(0)
    model = nn.Sequential(Seen(), nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 3))
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(64, 1, 6, 6, generator=g), torch.randint(0, 3, (64,), generator=g))
    single, parallel = copy.deepcopy(model), copy.deepcopy(model)
    kwargs = dict(steps=6, lr=0.05, batch_size=16, progress=False, seed=3)
    train(single, data, **kwargs)
    history = distributed_train(parallel, data, 2, **kwargs)
    assert history["steps"] == 6
    for a, b in zip(single.parameters(), parallel.parameters()):
        assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), parallel.parameters()))   # it trained
    assert int(single[0].rows) == 6 * 16 and int(parallel[0].rows) == 6 * 8          # rank 0: half of each batch
