"""Latency measurement backends (SPEC A5): PyTorch eager, torch.compile, ONNX Runtime, TensorRT.

A backend turns ``(module, example_input)`` into a zero-argument *runner* that executes one forward pass
the way it would run in deployment; :func:`measure` times a runner. Everything a table's numbers depend on
(backend version, torch version, device name, threads, dtype) is reported by :meth:`Backend.describe` and
goes into the cache fingerprint, so a table timed on another machine or library is never reused.

Adding a backend::

    @register_backend("mybackend")
    class MyBackend(Backend):
        def available(self): ...
        def missing(self): return "why it is not available"
        def prepare(self, module, example_input): return lambda: ...

The registry holds classes; :func:`get_backend` instantiates one with keyword options (``device=...``).
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..cache import json_number
from .onnx_export import export_onnx  # noqa: F401 - re-exported: depthcut.latency.backends.export_onnx
from ..errors import DepthcutError

Runner = Callable[[], Any]


class BackendUnavailableError(DepthcutError):
    """A latency backend was requested that cannot run here; the message says what is missing."""


# ------------------------------------------------------------------------------------------- timing ---

CONFIDENCE = 0.95


def _all_zero(t: torch.Tensor) -> bool:
    return t.is_floating_point() and t.numel() > 0 and not bool(t.any())


def _timed_tensors(module: nn.Module):
    """The tensors whose exact zeros a runtime can exploit: parameters, and BatchNorm means (folded into biases)."""
    yield from module.named_parameters()
    yield from ((name, b) for name, b in module.named_buffers() if name.endswith("running_mean"))


def timing_copy(module: nn.Module) -> nn.Module:
    """``module`` as it should be timed: a copy whose all-zero weights, biases and BatchNorm means hold small
    random values (``module`` itself when it has none). What a network costs must not depend on its values,
    but a runtime takes shortcuts on exact zeros: timm zero-initialises each residual block's last BatchNorm,
    and ONNX Runtime ran such an untrained resnet18d 13 % faster [10, 18] than the same network after its
    recovery fine-tune (issue 33), so the landing accepted a plan that the recovered weights then missed."""
    zero = [name for name, t in _timed_tensors(module) if _all_zero(t)]
    if not zero:
        return module
    timed = copy.deepcopy(module)
    tensors = dict(_timed_tensors(timed))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in zero:
            t = tensors[name]
            t.copy_((0.01 * torch.randn(t.shape, generator=gen)).to(t.dtype))
    return timed


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Distribution-free confidence interval for the median of ``values``: [x_(k), x_(n+1-k)] with the
    largest k such that P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2. With too few values for the
    confidence asked (n < 6 at 95%) the interval is the whole range."""
    x = sorted(values)
    n = len(x)
    if n == 0:
        raise ValueError("no values")
    alpha = (1.0 - confidence) / 2
    k, tail = 0, 0.0
    while k < n // 2:                                   # tail = P(B < k + 1) after adding term k
        tail_next = tail + math.comb(n, k) / 2.0 ** n
        if tail_next > alpha:
            break
        tail, k = tail_next, k + 1
    if k == 0:
        return x[0], x[-1]
    return x[k - 1], x[n - k]


@dataclass(frozen=True)
class Timing:
    """Summary of n timed runs, in milliseconds. The median is the estimate; the spread is kept to judge it.
    ``low_ms``/``high_ms``: the 95 % distribution-free interval of the median (None in entries cached before
    it was recorded; :attr:`interval` then falls back to the wider p10-p90 range)."""

    median_ms: float
    stdev_ms: float
    p10_ms: float
    p90_ms: float
    n: int
    low_ms: float | None = None
    high_ms: float | None = None

    @classmethod
    def zero(cls) -> "Timing":
        """The cost of an identity option: nothing runs."""
        return cls(0.0, 0.0, 0.0, 0.0, 0, 0.0, 0.0)

    @classmethod
    def from_samples(cls, samples_ms: list[float]) -> "Timing":
        if not samples_ms:
            raise ValueError("no timing samples")
        s = sorted(samples_ms)
        low, high = median_interval(s)
        return cls(median_ms=statistics.median(s), stdev_ms=statistics.stdev(s) if len(s) > 1 else 0.0,
                   p10_ms=_quantile(s, 0.1), p90_ms=_quantile(s, 0.9), n=len(s), low_ms=low, high_ms=high)

    @property
    def interval(self) -> tuple[float, float]:
        """The median's 95 % interval (p10-p90 where it was not recorded: wider, so judgements stay safe)."""
        if self.low_ms is None or self.high_ms is None:
            return self.p10_ms, self.p90_ms
        return self.low_ms, self.high_ms

    def to_dict(self) -> dict[str, float | int]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def scaled(self, factor: float) -> "Timing":
        """Every time multiplied by ``factor`` (a row timed another way and corrected)."""
        low, high = (None, None) if self.low_ms is None else (self.low_ms * factor, self.high_ms * factor)
        return Timing(self.median_ms * factor, self.stdev_ms * factor, self.p10_ms * factor, self.p90_ms * factor,
                      self.n, low, high)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Timing":
        if isinstance(d["n"], bool) or not isinstance(d["n"], int):
            raise TypeError(f"timing count is not an integer: {d['n']!r}")
        low, high = d.get("low_ms"), d.get("high_ms")
        if (low is None) != (high is None):
            raise TypeError("a timing interval needs both ends")
        return cls(median_ms=json_number(d["median_ms"]), stdev_ms=json_number(d["stdev_ms"]),
                   p10_ms=json_number(d["p10_ms"]), p90_ms=json_number(d["p90_ms"]), n=d["n"],
                   low_ms=None if low is None else json_number(low),
                   high_ms=None if high is None else json_number(high))


def _quantile(sorted_samples: list[float], q: float) -> float:
    """Linear-interpolated quantile of already sorted samples (numpy's default method)."""
    pos = q * (len(sorted_samples) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * (pos - lo)


def clock_of(runner: Runner) -> Callable[[], float]:
    """The clock that times ``runner``, in seconds: the wall clock, unless the runner brings its own
    (``runner.clock``: a simulated backend, so that tests time a known cost whatever the machine's load)."""
    return getattr(runner, "clock", None) or time.perf_counter


def sample_ms(runner: Runner, n: int) -> list[float]:
    """``n`` timed calls of ``runner``, in milliseconds each."""
    clock, out = clock_of(runner), []
    for _ in range(n):
        t0 = clock()
        runner()
        out.append((clock() - t0) * 1e3)
    return out


def measure(runner: Runner, *, warmup: int = 5, repeats: int = 30, min_time_s: float = 0.0,
            max_repeats: int = 10_000, queued: int = 1, rel_width: float | None = None) -> Timing:
    """Time ``runner``: ``warmup`` untimed calls, then at least ``repeats`` timed samples, continuing until
    ``min_time_s`` of timed work has accumulated (so microsecond-scale ops get enough samples to have a
    stable median), capped at ``max_repeats``. A sample is one call (GPU runners synchronise inside), or,
    with ``queued`` > 1 and a runner that can queue calls (``runner.queued``, GPU runners), ``queued`` calls
    launched back to back and synchronised once, divided by ``queued``: what the op costs inside a network,
    where a GPU runs one kernel after another and the host waits once at the end. With ``rel_width``, sampling
    goes on (``repeats`` more at a time, up to ``max_repeats``) until the median's 95 % interval is at most
    that wide relative to the median: a noisy moment takes the samples it needs."""
    for _ in range(warmup):
        runner()
    many = getattr(runner, "queued", None) if queued > 1 else None
    clock, samples, spent = clock_of(runner), [], 0.0

    def more() -> bool:
        if len(samples) < max(1, repeats):
            return True
        if len(samples) >= max_repeats:
            return False
        if spent < min_time_s:
            return True
        if rel_width is None:
            return False
        if len(samples) % max(1, repeats):            # finish the batch of samples under way
            return True
        low, high = median_interval(samples)
        return high - low > rel_width * statistics.median(samples)

    while more():
        t0 = clock()
        if many is None:
            runner()
        else:
            many(queued)
        dt = clock() - t0
        samples.append(dt * 1e3 / (1 if many is None else queued))
        spent += dt
    return Timing.from_samples(samples)


# ------------------------------------------------------------------------------------------ registry ---

_REGISTRY: dict[str, type["Backend"]] = {}


def register_backend(name: str) -> Callable[[type["Backend"]], type["Backend"]]:
    """Class decorator: make a backend available under ``name`` to :func:`get_backend`."""
    def deco(cls: type[Backend]) -> type[Backend]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def registered_backends() -> list[str]:
    """All backend names, whether or not they can run on this machine."""
    return sorted(_REGISTRY)


def available_backends() -> list[str]:
    """Backend names that can run on this machine right now."""
    return [n for n in registered_backends() if _REGISTRY[n]().available()]


def can_quantize(name: str) -> bool:
    """Whether backend ``name`` takes ``quantize="int8"`` (False for an unknown name: checked elsewhere)."""
    return name in _REGISTRY and _REGISTRY[name].quantizes


def has_own_threads(name: str) -> bool:
    """Whether backend ``name`` times on a thread pool of its own (``timing_threads``); True for a name that
    is not registered, whose error comes from :func:`get_backend`."""
    cls = _REGISTRY.get(name)
    return cls is None or cls.own_threads


def get_backend(name: "str | Backend", *, check: bool = True, **options: Any) -> "Backend":
    """Instantiate backend ``name`` (options e.g. ``device="cuda"``). With ``check`` (default), a backend
    that cannot run here raises :class:`BackendUnavailableError` naming what is missing."""
    if isinstance(name, Backend):
        backend = name
    else:
        if name not in _REGISTRY:
            raise DepthcutError(f"unknown latency backend {name!r}; registered: {', '.join(registered_backends())}")
        backend = _REGISTRY[name](**options)
    if check and not backend.available():
        raise BackendUnavailableError(f"latency backend {backend.name!r} is not available: {backend.missing()}")
    return backend


# ------------------------------------------------------------------------------------------ backends ---

def device_name(device: str | torch.device = "cpu") -> str:
    """Human-readable hardware name: the GPU model for CUDA, the CPU model from /proc/cpuinfo otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


MEMORY_FORMATS = ("contiguous", "channels_last")


def math_mode(device: str | torch.device = "cpu") -> dict[str, Any]:
    """The settings that change what (and how fast) float32 convs and matmuls compute."""
    mode: dict[str, Any] = {"matmul_precision": torch.get_float32_matmul_precision()}
    if torch.device(device).type == "cuda":
        mode.update(tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32),
                    tf32_cudnn=bool(torch.backends.cudnn.allow_tf32),
                    cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
                    cudnn_deterministic=bool(torch.backends.cudnn.deterministic))
    return mode


def _cuda_sync(device: torch.device) -> Callable[[], None]:
    # GPU kernels are asynchronous: a runner must wait for them or we would time only the launch.
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


class Backend:
    """Base class. Subclasses set ``name`` (via :func:`register_backend`) and implement ``prepare``."""

    name: str = "?"
    dtype: torch.dtype = torch.float32
    # Calls per latency-row sample (see measure). 1, one synchronised call, is the default everywhere: on an
    # H200 at batch 128, rows timed as 10 calls queued back to back ran from a warm L2 cache and made
    # ResNet-34 plans look 4-8% slower than they measured, MobileNetV2 plans 22-30%; one call per sample
    # predicted ResNet-34 within 2% (bench/results/gpu_check_row_calls_1.md and _10.md).
    row_calls: int = 1
    # Whether the runtime has its own intra-op thread pool that ``timing_threads`` sets (ONNX Runtime; such a
    # backend takes a ``threads=`` option); a backend timing with torch's threads takes the config's ``threads``.
    own_threads: bool = False
    # Whether the backend can time and run int8 networks (``quantize="int8"``: depthcut.latency.quantize).
    quantizes: bool = False
    # The smallest relative half-width of a speed-up interval timed on this backend (compare.with_drift): what
    # the timing moves between measurements minutes apart, which no single timing sees. Measured by
    # bench/timing_coverage.py on a shared 2-core CPU (the floors that bring its coverage to 0.9).
    DRIFT = 0.0

    def drift(self) -> float:
        return self.DRIFT

    def __init__(self, device: str | torch.device = "cpu", memory_format: str = "contiguous"):
        self.device = torch.device(device)
        if memory_format not in MEMORY_FORMATS:
            raise DepthcutError(f"unknown memory format {memory_format!r}; use one of {', '.join(MEMORY_FORMATS)}")
        self.memory_format = memory_format

    def available(self) -> bool:
        return not self.missing()

    def missing(self) -> str:
        """Empty when the backend can run; otherwise what is missing (shown to the user)."""
        if self.device.type == "cuda" and not torch.cuda.is_available():
            return f"device {self.device} requested but CUDA is not available"
        return ""

    def version(self) -> str:
        return torch.__version__

    def describe(self) -> dict[str, Any]:
        """Everything that changes timings; goes into the latency cache fingerprint (the math mode too: a
        table timed with TF32 off must never be reused with TF32 on)."""
        out = {"backend": self.name, "backend_version": self.version(), "torch": torch.__version__,
               "device": device_name(self.device), "device_type": self.device.type,
               "threads": torch.get_num_threads(), "dtype": str(self.dtype).replace("torch.", ""),
               "memory_format": self.memory_format, **math_mode(self.device)}
        if self.row_calls != 1:   # only where it applies, so CPU tables keep their fingerprints
            out["row_calls"] = self.row_calls
        return out

    def prepare(self, module: nn.Module, example_input: torch.Tensor) -> Runner:
        raise NotImplementedError

    def prepare_row(self, module: nn.Module, example_input: torch.Tensor) -> Runner:
        """A runner of one latency row (depthcut.latency.table.time_rows): :meth:`prepare`'s, unless the runtime
        can time the row's own ops inside the call (:class:`OpenVINOBackend`). Only rows: a whole network is
        always timed by the wall clock, call and all."""
        return self.prepare(module, example_input)

    def prepare_sessions(self, module: nn.Module, example_input: torch.Tensor, n: int) -> list[Runner]:
        """``n`` independent runners of ``module`` (separate runtime sessions: their allocations and thread
        pools differ, and so, by a few percent, do their timings; depthcut.latency.compare rotates through
        them), the costly shared step (an export) done once (:meth:`session_maker`)."""
        with self.session_maker(module, example_input) as make:
            return [make() for _ in range(n)]

    @contextmanager
    def session_maker(self, network: Any, example_input: torch.Tensor) -> Iterator[Callable[[], Runner]]:
        """A function that makes one more runner of ``network`` (an ``nn.Module``, or an exported file on a
        backend that reads one) each time it is called, the costly shared step (an export) done once, on
        entering: how several networks' sessions are made in turns (depthcut.latency.compare.interleaved_sessions)."""
        if isinstance(network, nn.Module):
            yield lambda: self.prepare(network, example_input)
        else:
            yield lambda: self.sessions_from_file(network, example_input, 1)[0]

    def _place(self, module: nn.Module, example_input: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
        """A copy of ``module`` on the backend's device, dtype and memory format (the caller's module is
        never moved or changed), and the input to match."""
        module = copy.deepcopy(module).to(device=self.device, dtype=self.dtype).eval()
        x = example_input.to(device=self.device, dtype=self.dtype)
        if self.memory_format == "channels_last":
            module, x = module.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        return module, x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={str(self.device)!r})"


def _inference_runner(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, device: torch.device) -> Runner:
    """A runner: ``run()`` is one inference call, synchronised so GPU timings include the kernels; ``run(k)``
    queues k calls and synchronises once, offered to :func:`measure` as ``run.queued`` on a GPU."""
    sync = _cuda_sync(device)

    def run(k: int = 1) -> Any:
        with torch.inference_mode():
            for _ in range(k):
                y = fn(x)
        sync()
        return y
    if device.type == "cuda":
        run.queued = run  # type: ignore[attr-defined]
    return run


@register_backend("eager")
class EagerBackend(Backend):
    """Plain PyTorch eager execution under ``torch.inference_mode``."""
    DRIFT = 0.03      # bench/results/timing_coverage.md: its repeats spread 2.7-5 %, 1-3 % floors reached 0.9

    def prepare(self, module: nn.Module, example_input: torch.Tensor) -> Runner:
        module, x = self._place(module, example_input)
        return _inference_runner(module, x, self.device)


@register_backend("compile")
class CompileBackend(Backend):
    """``torch.compile`` (inductor, default mode). Compilation happens in ``prepare`` (a few seconds per
    distinct module), so the runner times only the compiled kernels."""
    DRIFT = 0.04      # bench/results/timing_coverage.md: 0.70 coverage without a floor, 3 % reached 0.9

    def missing(self) -> str:
        base = super().missing()
        if base:
            return base
        if self.device.type == "cpu" and not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")):
            return "torch.compile on CPU needs a C++ compiler (g++/c++) on PATH"
        return ""

    def __init__(self, device: str | torch.device = "cpu", memory_format: str = "contiguous"):
        super().__init__(device, memory_format)
        self.compile_seconds: list[float] = []     # cold compile time of every prepared module, in order

    def prepare(self, module: nn.Module, example_input: torch.Tensor) -> Runner:
        module, x = self._place(module, example_input)
        # Every nn.Sequential shares one forward code object, and dynamo keeps only a few compiled variants
        # per code object before silently falling back to eager; a table times hundreds of rows, so start
        # each module from a clean slate. (Earlier runners recompile on their next call: warm them again.)
        torch._dynamo.reset()
        run = _inference_runner(torch.compile(module), x, self.device)
        start = time.perf_counter()
        for _ in range(2):  # first call compiles; the second checks no recompilation is pending
            run()
        self.compile_seconds.append(time.perf_counter() - start)
        return run

    def compile_summary(self) -> dict[str, Any]:
        """What compiling cost this run, and where inductor keeps its cache (a warm cache makes reruns fast)."""
        from torch._inductor import config as inductor_config
        try:
            from torch._inductor.runtime.cache_dir_utils import cache_dir
            where = cache_dir()
        except (ImportError, AttributeError):   # a private helper: its absence only loses the path
            where = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "inductor default")

        s = self.compile_seconds
        return {"modules_compiled": len(s), "compile_s_total": round(sum(s), 3),
                "compile_s_max": round(max(s), 3) if s else 0.0,
                "compile_s_last_two": [round(v, 3) for v in s[-2:]],   # the final comparison: original, compressed
                "fx_graph_cache": bool(inductor_config.fx_graph_cache), "cache_dir": where}


# activation kind -> ONNX ops applied to the conv output (the graphs torch.onnx emits for them)
_ONNX_ACTS = {
    nn.ReLU: [("Relu", {})], nn.ReLU6: [("Clip6", {})], nn.Sigmoid: [("Sigmoid", {})], nn.Tanh: [("Tanh", {})],
    nn.SiLU: [("SiLU", {})], nn.Hardswish: [("HardSwish", {})], nn.Identity: [],
    nn.Hardsigmoid: [("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5})],
}


def is_plain_row(module: nn.Module, activations: dict) -> bool:
    """A latency row as the table builds it - ``nn.Sequential(Conv2d, activation)`` - with an activation the
    runtime's graph builder knows (``activations``): what a backend may build directly instead of exporting."""
    return (isinstance(module, nn.Sequential) and len(module) == 2 and type(module[0]) is nn.Conv2d
            and type(module[1]) in activations and isinstance(module[0].padding, tuple))


def conv_row_onnx(module: nn.Module, input_shape: tuple[int, ...]) -> tuple[bytes, dict] | None:
    """A latency row - ``nn.Sequential(Conv2d, activation)`` - as (serialized ONNX graph whose weights are
    marked external, {name: weight array}) for ONNX Runtime's ``add_external_initializers``: the weights are
    used in place, never copied into a protobuf (through torch.onnx a 420 MB merged kernel of ResNet-152 costs
    ~3 GB). None for anything else (then the exporter is used)."""
    if not is_plain_row(module, _ONNX_ACTS):
        return None
    from onnx import TensorProto, helper, numpy_helper

    conv: nn.Conv2d = module[0]
    weights = {"w": conv.weight.detach().cpu().float().contiguous().numpy()}
    if conv.bias is not None:
        weights["b"] = conv.bias.detach().cpu().float().contiguous().numpy()
    inits = [_external_tensor(name, array) for name, array in weights.items()]
    nodes = [helper.make_node("Conv", ["x"] + list(weights), ["c"], kernel_shape=list(conv.kernel_size),
                              strides=list(conv.stride), pads=list(conv.padding) * 2, group=conv.groups,
                              dilations=list(conv.dilation))]
    last = "c"
    for k, (op, attrs) in enumerate(_ONNX_ACTS[type(module[1])]):
        out = f"a{k}"
        if op == "Clip6":
            inits += [numpy_helper.from_array(_np_scalar(0.0), "lo"), numpy_helper.from_array(_np_scalar(6.0), "hi")]
            nodes.append(helper.make_node("Clip", [last, "lo", "hi"], [out]))
        elif op == "SiLU":
            nodes += [helper.make_node("Sigmoid", [last], [f"s{k}"]), helper.make_node("Mul", [last, f"s{k}"], [out])]
        else:
            nodes.append(helper.make_node(op, [last], [out], **attrs))
        last = out
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(nodes, "row", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString(), weights


def _external_tensor(name: str, array):
    """An initializer declared as external data: its bytes come from the session options, not the file."""
    from onnx import TensorProto

    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(array.shape),
                         data_location=TensorProto.EXTERNAL)
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", f"{name}.bin"
    return tensor


def _array(t: torch.Tensor):
    """A runtime's input array: float32, or uint8 as given (an int8 latency row's input)."""
    t = t.detach().cpu()
    return (t if t.dtype == torch.uint8 else t.float()).numpy()


def _np_scalar(value: float):
    import numpy as np

    return np.array(value, dtype=np.float32)


class CpuRuntimeBackend(Backend):
    """A CPU inference runtime with its own thread pool (``threads``, default torch's: ``timing_threads``),
    reading exported graphs (no memory format of its own), from an optional package (``package``, installed by
    the ``extra``). Its drift floors: bench/results/timing_coverage*.md."""

    own_threads = True
    quantizes = True
    package = extra = "?"

    def __init__(self, device: str | torch.device = "cpu", memory_format: str = "contiguous",
                 threads: int | None = None, quantize: str | None = None):
        from .quantize import check_quantize

        super().__init__(device, memory_format)
        # an exported graph has no memory format (the runtime picks its own layouts): channels_last fine-tunes
        # time, and share latency tables, exactly as contiguous ones
        self.memory_format = "contiguous"
        if threads is not None and threads < 1:
            raise DepthcutError(f"{self.name} threads must be >= 1, got {threads}")
        self.threads = threads
        check_quantize(quantize)
        # "int8": every network this backend times is exported and quantized first (depthcut.latency.quantize)
        self.quantize = quantize

    def drift(self) -> float:
        """bench/results/timing_coverage.md: at 1 thread the intervals held without a floor (0.95); at the
        machine's 2 threads they held 0.90 on a quiet machine and the repeats spread 3.6 %. OpenVINO
        (timing_coverage_openvino.md, two runs of 20 repeats) held at least 0.95 / 0.90 with no floor at all:
        there these floors are margin."""
        return 0.005 if self.intra_op_threads() == 1 else 0.02

    def missing(self) -> str:
        if self.device.type != "cpu":
            return f"the {self.name} backend runs on CPU only (got device {self.device})"
        if not importlib.util.find_spec(self.package):
            return f"package {self.package} is not installed (pip install depthcut[{self.extra}])"
        if self.quantize and not importlib.util.find_spec("onnxruntime"):   # the quantizer is ONNX Runtime's
            return "int8 quantization needs package onnxruntime (pip install depthcut[onnx])"
        return ""

    def version(self) -> str:
        return importlib.import_module(self.package).__version__

    def intra_op_threads(self) -> int:
        return self.threads or torch.get_num_threads()

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "threads": self.intra_op_threads()}
        if self.quantize:   # only where it applies, so float tables keep their fingerprints
            from .quantize import quantizer

            out["quantize"], out["quantizer"] = self.quantize, quantizer()
        return out

    @contextmanager
    def _timing_file(self, module: nn.Module, example_input: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """The file this runtime times ``module`` from, and the input to feed it, in a folder removed on exit:
        the exported graph, or with ``quantize`` the graph quantized to int8 (calibrated on ``example_input``:
        a timing needs the int8 kernels, not good scales; a latency row is built directly, as in float, then
        quantized, with uint8 in and out as inside an int8 network: quantize.int8_row)."""
        from .quantize import int8_row, quantize_onnx, quantized_file, row_file

        with tempfile.TemporaryDirectory(prefix=f"depthcut-{self.name}-") as tmp:
            if not self.quantize:
                path = os.path.join(tmp, "model.onnx")
                export_onnx(module, example_input, path)
            elif (row := conv_row_onnx(module, tuple(example_input.shape))) is not None:
                path = quantize_onnx(row_file(*row, tmp), os.path.join(tmp, "row_q.onnx"), [example_input])
                path = int8_row(path, os.path.join(tmp, "row_int8.onnx"))
                example_input = torch.randint(0, 256, tuple(example_input.shape), dtype=torch.uint8)
            else:
                path = quantized_file(module, example_input, tmp)
            yield str(path), example_input

    @contextmanager
    def session_maker(self, network: Any, example_input: torch.Tensor) -> Iterator[Callable[[], Runner]]:
        """One export (and quantization), then a session of the file per call; a float latency row is built
        directly each time, as :meth:`prepare` does."""
        if not isinstance(network, nn.Module) or (not self.quantize and is_plain_row(network, self.row_activations)):
            with super().session_maker(network, example_input) as make:
                yield make
            return
        with self._timing_file(network, example_input) as (path, x):
            yield lambda: self.sessions_from_file(path, x, 1)[0]

    def prepare(self, module: nn.Module, example_input: torch.Tensor) -> Runner:
        row = None if self.quantize else self._row_runner_of(module, example_input)
        if row is not None:
            return row
        with self._timing_file(module, example_input) as (path, x):
            return self.sessions_from_file(path, x, 1)[0]   # a session reads the whole file: the folder may go

    # activation kind -> the runtime's op: which latency rows it builds directly, without an export
    row_activations: dict = {}

    def _row_runner_of(self, module: nn.Module, example_input: torch.Tensor) -> Runner | None:
        """A float latency row built directly in the runtime's own graph; None for anything else."""
        raise NotImplementedError

    def sessions_from_file(self, path: str | os.PathLike, example_input: torch.Tensor, n: int = 1) -> list[Runner]:
        raise NotImplementedError

    def predictor(self, path: str | os.PathLike) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function running the ONNX file at ``path`` (batch dimension symbolic) on a batch with this runtime:
        how a deployed int8 network's accuracy is measured."""
        raise NotImplementedError


@register_backend("onnxruntime")
class OnnxRuntimeBackend(CpuRuntimeBackend):
    """ONNX Runtime, CPUExecutionProvider, all graph optimisations, intra-op threads = ``threads`` (default:
    torch's threads).

    ``threads`` is the deployment's thread count, and on a machine shared with others it decides how stable a
    timing is: on this 2-core VM, 20 timings of a channel-pruned ResNet-20 against the original spread 5.4-7.9 %
    at 2 threads and 0.4-2.1 % at 1 thread (bench/results/timing_stability_threads.md).

    Thread-pool spinning is off. Each session owns a pool whose threads, by default, keep spinning after a
    run; when two sessions are timed interleaved (original vs compressed), one session's spinning threads
    steal the cores from the other's run. Measured on this 2-core machine, MobileNetV2 against *itself*
    gave per-round ratios from x0.46 to x2.9 with spinning, and within 4% without (issue 9).
    """

    package, extra = "onnxruntime", "onnx"
    row_activations = _ONNX_ACTS

    # ONNX Runtime's NchwcTransformer reorders a conv's weights into its blocked layout when the session is
    # created and holds about 5x the weights while it does (measured 4.9x on rows of 30 MB to 410 MB); for
    # the giant merged convs of deep networks (ResNet-152: rows of 1-2 GB) that transient alone would need
    # 5-10 GB. A row whose transient exceeds ``max_transient_bytes`` is timed with the transformer off (1.1x
    # its weights; the conv runs ~10-25% slower) and its time scaled by the gain the transformer gives on a
    # channel-scaled proxy of the same conv (same kernel, stride, input size): an estimate, counted in
    # ``nchwc_estimated_rows``.
    NCHWC_TRANSIENT = 5.0

    def __init__(self, device: str | torch.device = "cpu", memory_format: str = "contiguous",
                 max_transient_gb: float | None = None, threads: int | None = None, quantize: str | None = None):
        super().__init__(device, memory_format, threads, quantize)
        if max_transient_gb is None:
            max_transient_gb = float(os.environ.get("DEPTHCUT_ORT_MAX_TRANSIENT_GB", "2"))
        self.max_transient_bytes = int(max_transient_gb * 2**30)
        self.nchwc_estimated_rows: list[dict[str, float]] = []

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "intra_op_spinning": False,
                "nchwc_transient_cap_gb": round(self.max_transient_bytes / 2**30, 3)}

    def _options(self, nchwc: bool = True):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")   # see the class docstring
        if not nchwc:
            opts.add_session_config_entry("optimization.disable_specified_optimizers", "NchwcTransformer")
        return opts

    def _row_runner(self, graph: bytes, weights: dict, example_input: torch.Tensor, nchwc: bool = True) -> Runner:
        """A latency row's session, its weights handed over in place (never copied into a protobuf)."""
        import onnxruntime as ort

        opts = self._options(nchwc)
        keep = [ort.OrtValue.ortvalue_from_numpy(w) for w in weights.values()] + list(weights.values())
        opts.add_external_initializers(list(weights), keep[:len(weights)])
        return self._runner(ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"]), example_input,
                            keep)

    @staticmethod
    def _runner(session, example_input: torch.Tensor, keep: list) -> Runner:
        name = session.get_inputs()[0].name
        feed = {name: _array(example_input)}

        def run() -> Any:
            return session.run(None, feed)
        run.keepalive = keep   # type: ignore[attr-defined]  # the session reads the weights from these buffers
        return run

    def _row_runner_of(self, module: nn.Module, example_input: torch.Tensor) -> Runner | None:
        direct = conv_row_onnx(module, tuple(example_input.shape))
        if direct is None:
            return None
        graph, weights = direct
        nbytes = sum(w.nbytes for w in weights.values())
        if self.NCHWC_TRANSIENT * nbytes <= self.max_transient_bytes:
            return self._row_runner(graph, weights, example_input)
        run = self._row_runner(graph, weights, example_input, nchwc=False)
        run.time_scale = self._nchwc_gain(module, example_input, nbytes)   # type: ignore[attr-defined]
        self.nchwc_estimated_rows.append({"weights_mb": nbytes / 1e6, "gain": run.time_scale})
        return run

    def sessions_from_file(self, path: str | os.PathLike, example_input: torch.Tensor, n: int = 1) -> list[Runner]:
        """``n`` runners of an exported ``.onnx`` file (a saved result timed again, e.g. next to others)."""
        import onnxruntime as ort

        return [self._runner(ort.InferenceSession(str(path), self._options(), providers=["CPUExecutionProvider"]),
                             example_input, []) for _ in range(n)]

    def predictor(self, path: str | os.PathLike) -> Callable[[torch.Tensor], torch.Tensor]:
        from .quantize import onnx_predictor

        return onnx_predictor(path, self.intra_op_threads())

    def _nchwc_gain(self, module: nn.Sequential, example_input: torch.Tensor, nbytes: int) -> float:
        """time(NCHWc on) / time(NCHWc off) on a proxy of the row's conv with in and out channels divided by
        ``s`` (s^2 times fewer weights, under the cap); 1.0 (no gain assumed: the row's time stays an
        over-estimate) when the channels or groups do not divide."""
        conv = module[0]
        s = math.ceil(math.sqrt(self.NCHWC_TRANSIENT * nbytes / self.max_transient_bytes))
        while s <= min(conv.in_channels, conv.out_channels) and (
                conv.in_channels % s or conv.out_channels % s or conv.groups > 1):
            s += 1
        if conv.groups > 1 or s > min(conv.in_channels, conv.out_channels):
            return 1.0
        proxy = nn.Sequential(nn.Conv2d(conv.in_channels // s, conv.out_channels // s, conv.kernel_size,
                                        stride=conv.stride, padding=conv.padding, bias=conv.bias is not None),
                              copy.deepcopy(module[1])).eval()
        x = torch.randn(example_input.shape[0], conv.in_channels // s, *example_input.shape[2:])
        graph, weights = conv_row_onnx(proxy, tuple(x.shape))
        times = {}
        for nchwc in (True, False):
            run = self._row_runner(graph, weights, x, nchwc=nchwc)
            times[nchwc] = measure(run, warmup=2, repeats=7).median_ms
        return min(1.0, times[True] / times[False])


# activation kind -> OpenVINO op on the conv output (a latency row built as an OpenVINO graph directly)
_OV_ACTS = {nn.ReLU: "relu", nn.ReLU6: "clamp6", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.SiLU: "swish",
            nn.Hardswish: "hswish", nn.Hardsigmoid: "hsigmoid", nn.Identity: None}


def conv_row_openvino(module: nn.Module, input_shape: tuple[int, ...]):
    """A latency row - ``nn.Sequential(Conv2d, activation)`` - as an OpenVINO model built from its opset (the
    weights as constants, no export: the table has hundreds of rows); None for anything else (then the
    module is exported to ONNX and read, as whole networks are)."""
    if not is_plain_row(module, _OV_ACTS):
        return None
    import openvino as ov
    import openvino.opset13 as ops

    conv: nn.Conv2d = module[0]
    x = ops.parameter(list(input_shape), ov.Type.f32, name="x")
    w = conv.weight.detach().cpu().float().numpy()
    how = dict(strides=list(conv.stride), pads_begin=list(conv.padding), pads_end=list(conv.padding),
               dilations=list(conv.dilation))
    if conv.groups == 1:
        y = ops.convolution(x, ops.constant(w), **how)
    else:
        g = conv.groups
        y = ops.group_convolution(x, ops.constant(w.reshape(g, w.shape[0] // g, *w.shape[1:])), **how)
    if conv.bias is not None:
        y = ops.add(y, ops.constant(conv.bias.detach().cpu().float().numpy().reshape(1, -1, 1, 1)))
    act = _OV_ACTS[type(module[1])]
    if act == "clamp6":
        y = ops.clamp(y, 0.0, 6.0)
    elif act is not None:
        y = getattr(ops, act)(y)
    return ov.Model([y], [x], "row")


@register_backend("openvino")
class OpenVINOBackend(CpuRuntimeBackend):
    """Intel OpenVINO Runtime on CPU: latency rows built as OpenVINO graphs, networks read from their exported
    ONNX (as deployed), compiled with the LATENCY hint, one stream, ``threads`` inference threads (default:
    torch's) and float32 inference precision (a CPU with bf16 or AMX units would otherwise run in bf16).
    Each compiled model is a session; depthcut.latency.compare interleaves them as for ONNX Runtime.

    CPU pinning is off: the LATENCY hint pins a session's inference thread to one core, and on a shared machine
    more sessions then land on a slow core: the same int8 rows on 12 fresh sessions each way took a median 206
    and 200 us pinned (8 and 7 sessions over 1.3x the row's fastest) against 135 and 168 us unpinned (4 and 5;
    bench/results/openvino_pinning.md).

    A latency row is timed by OpenVINO's own per-op profile (``PERF_COUNT``): the time its compute ops ran,
    without the call around them (binding the input, the layout reorders in and out of a lone conv, returning
    the output), which a network pays once, not once per conv: each pass's wall-clock timing is scaled by the
    share of the same calls its ops ran (depthcut.latency.table). Timed by the wall clock, MobileNetV2's 52 rows
    at 28x28 summed to 1.72 ms for a 0.5 ms network; two thirds of each row was that call, which the latency
    model had to subtract from every row again, a small difference of two large numbers: 1 of 2 fresh tables
    refused, 20.7 % off the plans the DP chose on the other. Profiled, a plan's rows sum to 0.75-0.99 of what
    its network's own ops take (three profiles, each minutes after the table, at the machine's pace then) (bench/results/op_profile_openvino_mobilenet_v2_fmnist.md), and 3 of 3 fresh
    tables predicted the plans the DP chose within 6.3 % (bench/results/latency_model_openvino_mobilenet_v2_
    fmnist_threads1_profiled.md). Whole networks stay on the wall clock: a deployment pays the call."""

    package = extra = "openvino"
    row_activations = _OV_ACTS
    # what a row's profile leaves out: the graph's input and output, and the layout changes a lone conv needs
    # in and out (inside a network its neighbours hand it the runtime's blocked layout)
    UNTIMED_OPS = frozenset({"Parameter", "Result", "Reorder"})

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "performance_hint": "LATENCY", "num_streams": 1, "inference_precision": "f32",
                "cpu_pinning": False, "row_clock": "per-op profile"}

    def _runner(self, model, example_input: torch.Tensor, profiled: bool = False) -> Runner:
        """A session of ``model``; ``profiled``: with the runtime's per-op profile on, and ``run.profile()``
        giving (calls so far, ms the profiled ops ran over them) and ``run.wall_ms(since)`` the mean wall time
        of the calls after the first ``since`` (depthcut.latency.table times a row with them)."""
        import openvino as ov

        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
                  "INFERENCE_NUM_THREADS": str(self.intra_op_threads()), "INFERENCE_PRECISION_HINT": "f32",
                  "ENABLE_CPU_PINNING": "NO", **({"PERF_COUNT": "YES"} if profiled else {})}
        compiled = ov.Core().compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        feed = {0: _array(example_input)}
        walls: list[float] = []

        def run() -> Any:
            if not profiled:
                return list(request.infer(feed, share_inputs=True).values())   # as ONNX Runtime: a list of outputs
            t0 = time.perf_counter()
            out = request.infer(feed, share_inputs=True)
            walls.append(time.perf_counter() - t0)
            return list(out.values())
        run.keepalive = (compiled, request, feed)   # type: ignore[attr-defined]
        if profiled:
            def profile() -> tuple[int, float]:
                # the profile holds each op's mean over every call of the compiled model, to the microsecond
                # (not the last call's time): totals are that mean times the calls, and a mean over some calls
                # is a difference of two totals
                mean_s = sum(op.real_time.total_seconds() for op in request.get_profiling_info()
                             if op.node_type not in self.UNTIMED_OPS)
                return len(walls), len(walls) * mean_s * 1e3

            run.profile = profile                                            # type: ignore[attr-defined]
            run.wall_ms = lambda since: 1e3 * statistics.fmean(walls[since:])   # type: ignore[attr-defined]
        return run

    def _row_runner_of(self, module: nn.Module, example_input: torch.Tensor) -> Runner | None:
        row = conv_row_openvino(module, tuple(example_input.shape))
        return None if row is None else self._runner(row, example_input)

    def prepare_row(self, module: nn.Module, example_input: torch.Tensor) -> Runner:
        """A latency row with its ops' profile on (class docstring; depthcut.latency.table scales its wall
        time to its ops'), int8 rows too (built as :meth:`prepare` builds them); anything that is not a plain
        row is timed as a network."""
        if not is_plain_row(module, self.row_activations):
            return self.prepare(module, example_input)
        if not self.quantize:
            return self._runner(conv_row_openvino(module, tuple(example_input.shape)), example_input, profiled=True)
        import openvino as ov

        with self._timing_file(module, example_input) as (path, x):
            return self._runner(ov.Core().read_model(path), x, profiled=True)

    def op_profile(self, network: nn.Module, example_input: torch.Tensor, calls: int = 300,
                   warmup: int = 20) -> tuple[list[dict[str, Any]], float]:
        """Where ``network``'s time goes, op by op: each op of the compiled network (in execution order) with
        its name, type, kernel and mean microseconds over all ``warmup + calls`` calls (the profile keeps its
        mean over every call), and the mean wall time of the same calls (the profile on adds its own cost)."""
        import openvino as ov

        with self._timing_file(network, example_input) as (path, x):
            run = self._runner(ov.Core().read_model(path), x, profiled=True)
        for _ in range(warmup + calls):
            run()
        ops = [{"name": op.node_name, "type": op.node_type, "exec": op.exec_type,
                "us": op.real_time.total_seconds() * 1e6} for op in run.keepalive[1].get_profiling_info()]
        return ops, run.wall_ms(0)

    def sessions_from_file(self, path: str | os.PathLike, example_input: torch.Tensor, n: int = 1) -> list[Runner]:
        """``n`` runners of an exported ``.onnx`` file (read once; the model is in memory afterwards)."""
        import openvino as ov

        model = ov.Core().read_model(str(path))
        return [self._runner(model, example_input) for _ in range(n)]

    def predictor(self, path: str | os.PathLike) -> Callable[[torch.Tensor], torch.Tensor]:
        from .quantize import openvino_predictor

        return openvino_predictor(path, self.intra_op_threads())


@register_backend("tensorrt")
class TensorRTBackend(Backend):
    """NVIDIA TensorRT (fp32 engine built from ONNX). Needs CUDA and the ``tensorrt`` Python package.

    Not exercised by the CPU test suite; written against the TensorRT >= 10 tensor-address API.
    """

    def __init__(self, device: str | torch.device = "cuda", memory_format: str = "contiguous"):
        super().__init__(device, memory_format)

    def missing(self) -> str:
        lacks = []
        if not torch.cuda.is_available():
            lacks.append("a CUDA GPU (torch.cuda.is_available() is False)")
        if importlib.util.find_spec("tensorrt") is None:
            lacks.append("the 'tensorrt' Python package")
        return ("needs " + " and ".join(lacks)) if lacks else ""

    def version(self) -> str:
        return importlib.import_module("tensorrt").__version__

    def prepare(self, module: nn.Module, example_input: torch.Tensor) -> Runner:
        import tensorrt as trt

        logger = trt.Logger(trt.Logger.WARNING)
        with tempfile.TemporaryDirectory(prefix="depthcut-trt-") as tmp:
            path = os.path.join(tmp, "model.onnx")
            export_onnx(module, example_input, path)
            builder = trt.Builder(logger)
            network = builder.create_network(0)
            parser = trt.OnnxParser(network, logger)
            if not parser.parse_from_file(path):
                errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise DepthcutError(f"TensorRT cannot parse the exported ONNX model: {errs}")
            config = builder.create_builder_config()
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise DepthcutError("TensorRT failed to build an engine for the module")
        engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
        context = engine.create_execution_context()
        x = example_input.to(self.device, torch.float32).contiguous()
        out_name = engine.get_tensor_name(1)
        y = torch.empty(tuple(context.get_tensor_shape(out_name)), device=self.device, dtype=torch.float32)
        context.set_tensor_address(engine.get_tensor_name(0), x.data_ptr())
        context.set_tensor_address(out_name, y.data_ptr())
        stream = torch.cuda.Stream(self.device)

        def run(k: int = 1) -> Any:
            for _ in range(k):
                context.execute_async_v3(stream.cuda_stream)
            stream.synchronize()
            return y
        run.queued = run  # type: ignore[attr-defined]
        run.keepalive = (engine, context, x, y)  # type: ignore[attr-defined]  # buffers must outlive the runner
        return run
