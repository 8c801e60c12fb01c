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
    """Also a simulated int8 runtime (``quantize="int8"``, what ``--quantize int8`` asks for): a quantized
    conv takes half the time. The files it is given (a deployment's ONNX, float or QDQ int8) are timed by
    their Conv nodes, int8 when they hold QuantizeLinear nodes; their accuracy is computed by ONNX Runtime."""

    own_threads = True
    quantizes = True

    def __init__(self, *args, threads: int | None = None, quantize: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.threads = threads          # simulated: the time does not depend on it
        self.quantize = quantize

    def describe(self):
        return {**super().describe(), **({"quantize": self.quantize} if self.quantize else {})}

    def _runner(self, convs: int, int8: bool):
        cost = (0.0001 + self.PER_CONV_S * convs) * (0.5 if int8 else 1.0)
        clock = self.clock

        def run():
            clock.now += cost
        run.clock = clock
        return run

    def prepare(self, module: nn.Module, example_input: torch.Tensor):
        return self._runner(sum(isinstance(m, nn.Conv2d) for m in module.modules()), bool(self.quantize))

    def sessions_from_file(self, path, example_input: torch.Tensor, n: int = 1):
        import onnx

        ops = [node.op_type for node in onnx.load(str(path)).graph.node]
        return [self._runner(ops.count("Conv"), "QuantizeLinear" in ops) for _ in range(n)]

    def predictor(self, path):
        from depthcut.latency.quantize import onnx_predictor

        return onnx_predictor(path)


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
