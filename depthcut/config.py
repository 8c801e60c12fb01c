"""Typed, versioned configuration for CNN depth compression; saves to and loads from JSON."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DepthcutError

CONFIG_VERSION = 1

METHODS = ("layermerge",)   # the two-stage DP (ICML 2023) lives in depthcut.search.twostage
PROXIES = ("finetune", "bn-recalibration", "none")


@dataclass
class LayerMergeConfig:
    """Everything ``depthcut.compress`` needs besides the model and the data.

    Exactly one of ``speedup`` (target ratio original/compressed, measured end to end) and ``latency_ms``
    (absolute end-to-end target on the backend) must be set.
    """

    speedup: float | None = 1.5
    latency_ms: float | None = None
    method: str = "layermerge"
    backend: str = "onnxruntime"
    batch_size: int = 1                       # batch the latency is measured (and reported) at
    input_shape: tuple[int, ...] | None = None  # (1, C, H, W); None = the model entry's / data set's
    data: str = "fashion-mnist"
    # importance table (SPEC A6)
    importance: str = "finetune"              # one of PROXIES
    importance_steps: int = 20
    importance_lr: float = 0.01
    importance_batch_size: int = 64
    finetune_size: int = 5000                 # held-out training images for the short fine-tunes
    score_size: int = 2000                    # second, disjoint held-out split for scoring
    # search (SPEC A7)
    dp_steps: int = 2000
    max_resolves: int = 8                     # tighten-and-re-solve rounds when the measured latency misses
    # recovery (SPEC A10)
    recovery_epochs: float = 2.0
    recovery_lr: float = 0.02
    recovery_batch_size: int = 128
    distill: bool = True
    kd_weight: float = 0.3
    train_limit: int | None = None            # recovery sees only this many training images (None = all)
    # timing
    timing_rounds: int = 100                # interleaved rounds (x10 runs per model each)
    threads: int | None = None
    seed: int = 0
    cache_dir: str | None = None
    progress: bool = True
    version: int = CONFIG_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if (self.speedup is None) == (self.latency_ms is None):
            raise DepthcutError("set exactly one of speedup and latency_ms "
                                f"(got speedup={self.speedup}, latency_ms={self.latency_ms})")
        if self.speedup is not None and self.speedup < 1.0:
            raise DepthcutError(f"speedup must be >= 1.0, got {self.speedup}")
        if self.latency_ms is not None and self.latency_ms <= 0:
            raise DepthcutError(f"latency budget must be positive, got {self.latency_ms} ms")
        if self.method not in METHODS:
            raise DepthcutError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.importance not in PROXIES:
            raise DepthcutError(f"unknown importance proxy {self.importance!r}; choose one of {', '.join(PROXIES)}")
        if self.batch_size < 1:
            raise DepthcutError(f"batch size must be >= 1, got {self.batch_size}")
        if self.version != CONFIG_VERSION:
            raise DepthcutError(f"config version {self.version} is not supported (expected {CONFIG_VERSION})")
        if self.input_shape is not None:
            self.input_shape = tuple(int(s) for s in self.input_shape)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path: str | Path) -> None:
        from .cache import atomic_write_text

        atomic_write_text(path, self.to_json())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LayerMergeConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DepthcutError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> "LayerMergeConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise DepthcutError(f"config file {path} does not exist") from None
        except json.JSONDecodeError as e:
            raise DepthcutError(f"config file {path} is not valid JSON: {e}") from None
