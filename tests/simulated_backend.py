"""Latency backends whose time is simulated, for tests (and a worked example of a depthcut plugin).

A module "runs" for 0.1 ms plus 0.4 ms per convolution it contains, so fewer convs are faster. The time passes
on a simulated clock that the runner brings (``runner.clock``), not by sleeping: a loaded machine stretches
sleeps and real kernels by arbitrary amounts, which made speed-up assertions and the README's commands flaky.
depthcut itself only reports measured latency of real backends; these are registered for tests only:

* in-process, by ``tests/conftest.py`` importing this module;
* in a ``python -m depthcut`` subprocess, by ``DEPTHCUT_PLUGINS=simulated_backend`` with tests/ on PYTHONPATH.

``sleepy`` times with torch's threads (``timing_threads`` is refused, as for eager); ``sleepy-ort`` has a
thread pool of its own, as ONNX Runtime has.
"""
from __future__ import annotations

import torch
from torch import nn

from depthcut.latency.backends import Backend, register_backend


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


@register_backend("sleepy-ort")
class SleepyOwnThreadsBackend(SleepyBackend):
    own_threads = True

    def __init__(self, *args, threads: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.threads = threads          # simulated: the time does not depend on it


@register_backend("sleepy-macs")
class SleepyMacsBackend(SleepyBackend):
    """A conv costs more the more channels it has (0.2 ms plus 0.2 ms per 144 input x output channels per
    group): width pruning pays here, as depth does (the joint depth + width method's tests)."""

    def prepare(self, module: nn.Module, example_input: torch.Tensor):
        convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        cost = 0.0001 + sum(0.0002 + 0.0002 * m.in_channels * m.out_channels / m.groups / 144 for m in convs)
        clock = self.clock

        def run():
            clock.now += cost
        run.clock = clock
        return run
