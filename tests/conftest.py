"""Shared test fixtures.

The ``sleepy`` latency backend makes pipeline tests deterministic on a noisy shared CPU: a module "runs" by
sleeping 0.4 ms per convolution it contains plus 0.1 ms, so fewer convs are reliably faster. It is registered
here, for tests only — depthcut itself only reports measured latency of real backends.
"""
from __future__ import annotations

import os
import time

import pytest
import torch
from hypothesis import settings
from torch import nn

os.environ.setdefault("DEPTHCUT_PROGRESS", "0")

# Property tests must hold for every seed: no example database (CI must not replay failures left by an
# earlier run, nor pass because a lucky run never stored one), a fresh random seed each run. A failure
# prints its seed and a @reproduce_failure blob; pin real counter-examples with @example.
settings.register_profile("depthcut", database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "depthcut"))
torch.set_num_threads(min(2, torch.get_num_threads()))

from depthcut.latency.backends import Backend, register_backend  # noqa: E402


@register_backend("sleepy")
class SleepyBackend(Backend):
    PER_CONV_S = 0.0004

    def prepare(self, module: nn.Module, example_input: torch.Tensor):
        n = sum(isinstance(m, nn.Conv2d) for m in module.modules())
        cost = 0.0001 + self.PER_CONV_S * n
        return lambda: time.sleep(cost)


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"
