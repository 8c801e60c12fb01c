"""Shared test fixtures.

The ``sleepy`` latency backend makes pipeline tests deterministic on a noisy shared CPU: a module "runs" for
0.4 ms per convolution it contains plus 0.1 ms, so fewer convs are faster. The time passes on a simulated
clock that the runner brings (``runner.clock``), not by sleeping: a loaded machine stretches sleeps by
arbitrary amounts, which made speed-up assertions flaky. It is registered here, for tests only — depthcut
itself only reports measured latency of real backends.
"""
from __future__ import annotations

import os

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


class SimulatedClock:
    """Seconds that pass only when a simulated runner runs."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@register_backend("sleepy")
class SleepyBackend(Backend):
    PER_CONV_S = 0.0004
    clock = SimulatedClock()

    def prepare(self, module: nn.Module, example_input: torch.Tensor):
        n = sum(isinstance(m, nn.Conv2d) for m in module.modules())
        cost = 0.0001 + self.PER_CONV_S * n
        clock = self.clock

        def run():
            clock.now += cost
        run.clock = clock
        return run


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"
