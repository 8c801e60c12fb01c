"""Typed, versioned configuration for CNN depth compression; saves to and loads from JSON."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .configbase import ConfigBase, at_least
from .errors import DepthcutError
from .importance.table import PROXIES     # the importance proxies: defined once, with their costs

CONFIG_VERSION = 1
DEFAULT_SPEEDUP = 1.5

LATENCY_MODELS = ("auto", "per-call", "additive")
IMPORTANCE_MODES = ("full", "adaptive")


@dataclass
class LayerMergeConfig(ConfigBase):
    """Everything ``depthcut.compress`` needs besides the model and the data.

    The target is one of ``speedup`` (ratio original/compressed, measured end to end) and ``latency_ms``
    (absolute end-to-end target on the backend); with neither, ``speedup`` is DEFAULT_SPEEDUP (1.5).
    """

    KIND: ClassVar[str] = "config"

    speedup: float | None = None
    latency_ms: float | None = None

    method: str = "layermerge"
    backend: str = "onnxruntime"
    # "int8": the network is deployed quantized (post-training static, calibrated on the scoring split): the
    # latency rows, the landing and the final timing measure int8 networks (depthcut.latency.quantize)
    quantize: str | None = None
    # where everything runs (tables, fine-tunes, evaluation, timings); None: "cuda" when a GPU is present and
    # the backend can use it, else "cpu"
    device: str | None = None
    amp: str | None = None                    # "bf16" / "fp16": mixed-precision fine-tuning (autocast)
    channels_last: bool = False               # fine-tune and time in channels_last memory format
    batch_size: int = 1                       # batch the latency is measured (and reported) at
    input_shape: tuple[int, ...] | None = None  # (1, C, H, W); None = the model entry's / data set's
    data: str = "fashion-mnist"
    data_workers: int | None = None           # image folders: DataLoader processes (None: the cores; 0 = inline)
    adapt_head: bool = False                  # a model whose outputs are not the data's classes gets a new head,
    adapt_epochs: float = 2.0                 # trained alone for this many epochs (else such a model is refused)
    # importance table (SPEC A6)
    importance: str = "finetune"              # one of PROXIES
    importance_steps: int = 20
    importance_lr: float = 0.01
    importance_batch_size: int = 64
    # "full": fine-tune every candidate; "adaptive": a cheap score for every candidate, fine-tunes only for a
    # random sample and the candidates that can change the plan (depthcut.importance.adaptive)
    importance_mode: str = "full"
    adaptive_tolerance: float = 0.0           # accuracy points the adaptive plan may give away to stop earlier
    finetune_size: int | None = None          # held-out training images for the short fine-tunes, and a
    score_size: int | None = None             # second, disjoint split for scoring; None: sized from the data
                                              # (min(5000, n/2) and min(2000, n/5) of its n training images)
    executor: str = "local"                   # where importance entries run: local, process (workers), ray
    workers: int = 2                          # processes for executor="process"
    ray_address: str | None = None            # executor="ray": a cluster's address; None = local / RAY_ADDRESS
    shard: tuple[int, int] | None = None      # (i, n): compute only shard i of n of the importance table, then stop
    # search (SPEC A7)
    dp_steps: int = 2000
    max_resolves: int = 8                     # plans probed end to end while landing on the target
    speed_tolerance: float = 0.10             # land within +10% of the target speed-up (never below it)
    # "per-call": rows minus the runtime's per-call cost, calibrated on whole networks (refuses when the networks
    # contradict the table after a re-time); "auto": the same, else the additive model with the reason reported
    # (the landing's measured probes correct a poor model: it costs probes, not a wrong speed-up); "additive"
    latency_model: str = "auto"
    # recovery (SPEC A10)
    recovery_epochs: float = 2.0
    recovery_lr: float = 0.02
    recovery_batch_size: int = 128
    distill: bool = True
    kd_weight: float = 0.3
    train_limit: int | None = None            # recovery sees only this many training images (None = all)
    test_limit: int | None = None             # accuracy on a fixed sample of this many test images (None = all)
    recovery_procs: int = 1                   # data-parallel recovery processes (gloo on CPU, one GPU each on CUDA)
    # timing
    timing_rounds: int = 100                # most interleaved rounds per comparison (x5 runs per model each;
                                            # fewer once the 95% interval is narrow enough)
    timing_sessions: int = 4                # runtime sessions per model in each timing, each in turn for a block
                                            # of rounds: the interval then covers the spread between sessions
                                            # (which one session's rounds cannot see; timing_stability.md)
    threads: int | None = None
    # ONNX Runtime's intra-op threads for every timing (None: torch's threads, ``threads``); training keeps
    # ``threads``. The deployment's count; 1 on a shared machine whose 2-thread timings flip between levels.
    timing_threads: int | None = None
    seed: int = 0
    # The importance table's seed (its fine-tune/score splits and short fine-tunes); None: ``seed``. Fixing it
    # lets runs that differ only in ``seed`` share one table (a benchmark's seeds then vary the recovery).
    importance_seed: int | None = None
    cache_dir: str | None = None
    progress: bool = True
    version: int = CONFIG_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def scoring_seed(self) -> int:
        """The seed of the importance table: ``importance_seed``, else ``seed``."""
        return self.seed if self.importance_seed is None else self.importance_seed

    def __post_init__(self) -> None:
        self.check_types()
        if self.speedup is None and self.latency_ms is None:
            self.speedup = DEFAULT_SPEEDUP
        self.validate()

    def validate(self) -> None:
        if self.speedup is not None and self.latency_ms is not None:
            raise DepthcutError("set only one of speedup and latency_ms "
                                f"(got speedup={self.speedup}, latency_ms={self.latency_ms})")
        at_least("speedup", self.speedup, 1.0)
        if self.latency_ms is not None and not self.latency_ms > 0:
            raise DepthcutError(f"latency budget must be positive, got {self.latency_ms} ms")
        from .registry import get_method
        get_method(self.method)              # one line naming the registered methods
        if self.latency_model not in LATENCY_MODELS:
            raise DepthcutError(f"unknown latency model {self.latency_model!r}; choose one of "
                                f"{', '.join(LATENCY_MODELS)}")
        if not 0 < self.speed_tolerance <= 1:
            raise DepthcutError(f"speed_tolerance must be in (0, 1], got {self.speed_tolerance}")
        self._validate_importance()
        if self.batch_size < 1:
            raise DepthcutError(f"batch size must be >= 1, got {self.batch_size}")
        if self.version != CONFIG_VERSION:
            raise DepthcutError(f"config version {self.version} is not supported (expected {CONFIG_VERSION})")
        for name in ("importance_batch_size", "recovery_batch_size", "dp_steps", "max_resolves", "timing_rounds",
                     "timing_sessions", "score_size", "threads", "timing_threads", "train_limit", "test_limit"):
            at_least(name, getattr(self, name), 1)
        for name in ("importance_steps", "finetune_size", "recovery_epochs", "kd_weight", "seed", "importance_seed"):
            at_least(name, getattr(self, name), 0)
        for name in ("importance_lr", "recovery_lr"):
            at_least(name, getattr(self, name), 0, inclusive=False)
        if self.device is not None and not _valid_device(self.device):
            raise DepthcutError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.amp not in (None, "bf16", "fp16"):
            raise DepthcutError(f"amp must be 'bf16', 'fp16' or null, got {self.amp!r}")
        if self.kd_weight > 1:
            raise DepthcutError(f"config field 'kd_weight' must be <= 1, got {self.kd_weight}")
        from .importance.executor import EXECUTORS
        if self.executor not in EXECUTORS:
            raise DepthcutError(f"unknown executor {self.executor!r}; choose one of {', '.join(EXECUTORS)}")
        at_least("workers", self.workers, 1)
        at_least("recovery_procs", self.recovery_procs, 1)
        if self.shard is not None and not (len(self.shard) == 2 and 0 <= self.shard[0] < self.shard[1]):
            raise DepthcutError(f"shard must be i/n with 0 <= i < n, got {'/'.join(map(str, self.shard))}")
        from .latency.backends import can_quantize, has_own_threads
        from .latency.quantize import check_quantize
        check_quantize(self.quantize)
        if self.quantize and not can_quantize(self.backend):
            raise DepthcutError(f"quantize={self.quantize!r} needs a backend that runs int8 networks "
                                f"(onnxruntime or openvino), not {self.backend!r}")
        if self.timing_threads is not None and not has_own_threads(self.backend):
            raise DepthcutError(f"timing_threads sets the thread pool of a runtime that has its own, as ONNX "
                                f"Runtime does; the {self.backend!r} backend times with torch's threads (set threads)")
        if self.input_shape is not None and (len(self.input_shape) != 4 or min(self.input_shape) < 1):
            raise DepthcutError(f"input_shape must be N,C,H,W with positive sizes, got {self.input_shape}")

    def _validate_importance(self) -> None:
        """The importance proxy and mode, and what adaptive mode needs (the finetune proxy, no shards, an
        exact search)."""
        from .registry import get_method
        if self.importance not in PROXIES:
            raise DepthcutError(f"unknown importance proxy {self.importance!r}; choose one of {', '.join(PROXIES)}")
        if self.importance_mode not in IMPORTANCE_MODES:
            raise DepthcutError(f"unknown importance mode {self.importance_mode!r}; choose one of "
                                f"{', '.join(IMPORTANCE_MODES)}")
        if self.importance_mode == "adaptive":
            if self.importance != "finetune":
                raise DepthcutError(f"importance mode 'adaptive' fine-tunes the entries that matter; it needs the "
                                    f"'finetune' proxy, not {self.importance!r}")
            if self.shard:
                raise DepthcutError("importance mode 'adaptive' decides which entries to fine-tune as it goes; "
                                    "it cannot be split into shards (use the full table for --shard)")
            method = get_method(self.method)
            if method.kind == "plan" and not method.exact_search:
                raise DepthcutError(f"importance mode 'adaptive' needs a search that returns the optimum of its "
                                    f"scores; method {self.method!r} ranks greedily")
        if self.adaptive_tolerance < 0:
            raise DepthcutError(f"adaptive_tolerance must be >= 0 accuracy points, got {self.adaptive_tolerance}")


def _valid_device(text: str) -> bool:
    kind, _, index = text.partition(":")
    return kind in ("cpu", "cuda") and (not index or (kind == "cuda" and index.isdigit()))


CPU_ONLY_BACKENDS = ("onnxruntime", "openvino")


def resolve_device(config: LayerMergeConfig) -> str:
    """The device a run uses: the config's, else "cuda" when a GPU is present and the backend runs on it,
    else "cpu" (so CPU-only machines behave exactly as without the option). A CUDA device that is not there
    is a one-line error."""
    import torch

    if config.device is None:
        return "cuda" if torch.cuda.is_available() and config.backend not in CPU_ONLY_BACKENDS else "cpu"
    if config.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DepthcutError(f"device {config.device} requested but CUDA is not available "
                                f"(torch {torch.__version__}); use --device cpu")
        index = int(config.device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise DepthcutError(f"device {config.device} requested but only {torch.cuda.device_count()} GPU(s) "
                                f"are visible")
        if config.backend in CPU_ONLY_BACKENDS:
            raise DepthcutError(f"backend {config.backend} times on the CPU; with --device {config.device} use "
                                f"--backend eager, compile or tensorrt")
    return config.device
