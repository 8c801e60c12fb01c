"""The vocabulary of CNN depth compression (SPEC A1) as plain data.

A *chain* is the body of a CNN seen as convolutions c_1..c_L in execution order. Position p in 0..L is the
activation slot right after c_p (position 0 = the chain input). A *block* (i, j) merges c_{i+1}..c_j into one
convolution; a *kernel option* says which of its convs are kept. One (block, option) pair is a *candidate*,
one row of the latency and importance tables. A *plan* partitions 0..L into blocks with one option each.

These classes carry no torch state: the analysis (``depthcut.cnn.graph``) fills them from a traced model,
the enumeration (``depthcut.cnn.blocks``) derives candidates, and the builder (``depthcut.cnn.build``)
replays a plan on the traced model. Everything is JSON-serialisable so that a plan can be saved and replayed.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ConvSpec:
    """One convolution c_p of the chain (``index`` = p, 1-based)."""

    index: int
    path: str                      # module path in the original model, e.g. "layer1.0.conv1"
    node: str                      # fx node name of the conv call
    in_channels: int
    out_channels: int
    kernel: int                    # square kernels only (non-square => barrier / unsupported)
    stride: int
    padding: int
    groups: int
    bias: bool
    bn_path: str | None = None     # BatchNorm2d that directly follows, if any
    bn_node: str | None = None
    input_shape: tuple[int, ...] = ()   # (N, C, H, W) entering this conv, for latency rows

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    @property
    def reducible(self) -> bool:
        """May be replaced by identity (SPEC A3): same width in and out, stride 1."""
        return self.in_channels == self.out_channels and self.stride == 1

    @property
    def kind(self) -> tuple[int, int | str]:
        """The conv *type* used to count kernel options: (kernel, "dw" or its group count)."""
        return (self.kernel, "dw" if self.depthwise else self.groups)


@dataclass(frozen=True)
class Activation:
    """The activation sitting at a position (None at positions that have none, e.g. MBV2 bottlenecks)."""

    kind: str                      # "relu", "relu6", "silu", "hardswish", "gelu", "leaky_relu", ...
    node: str                      # fx node name
    path: str | None = None        # module path when it is a module call (None for functional calls)


@dataclass(frozen=True)
class Skip:
    """A residual addition: the value at position ``start`` is added at position ``end`` (before the
    activation of ``end``). ``projection`` names the 1x1 conv (+BN) on the skip branch, if any."""

    start: int
    end: int
    add_node: str
    projection: str | None = None          # module path of the projection conv
    projection_bn: str | None = None       # its BN; alone (projection None): a BN-only branch (RepVGG identity)
    projection_kernel: int | None = None   # kernel/stride of the projection conv (None for identity skips)
    projection_stride: int | None = None
    foldable: bool = True                  # a block containing all of [start, end] may absorb this skip

    def folded_by(self, start: int, end: int) -> bool:
        """Block (start, end) absorbs this residual into its merged conv: it contains all of [start, end]
        and the skip can be folded. A block spanning exactly an unfoldable skip lies *inside* it instead:
        the add (and whatever op precedes it) stays outside the block."""
        return self.foldable and start <= self.start and self.end <= end


@dataclass
class Chain:
    """Result of analysing one model (SPEC A1-A2)."""

    convs: list[ConvSpec]                  # c_1..c_L
    acts: list[Activation | None]          # length L+1; acts[0] is the activation feeding the chain (if any)
    skips: list[Skip] = field(default_factory=list)
    barriers: list[int] = field(default_factory=list)   # positions no block may strictly contain
    barrier_reasons: dict[int, str] = field(default_factory=dict)  # position -> why (op / stride rule)
    excluded: list[str] = field(default_factory=list)   # conv paths left outside the chain, with reasons in notes
    notes: list[str] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.convs)

    def conv(self, p: int) -> ConvSpec:
        """c_p, 1-based as in the paper."""
        return self.convs[p - 1]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Candidate:
    """One (block, kernel option) pair = one row of the latency and importance tables."""

    start: int                     # block (start, end): convs c_{start+1}..c_end
    end: int
    kept: tuple[int, ...]          # indices p of the convs kept (others pruned to identity); () = identity block
    kernel: int                    # merged kernel size K = sum(k_i) - n_kept + 1
    stride: int
    depthwise: bool
    in_channels: int
    out_channels: int
    input_shape: tuple[int, ...]   # shape entering the block (N, C, H, W)
    activation: str | None         # activation that will sit at the block's end position (None if none)
    groups: int = 1                # groups of the merged conv: gcd of the kept convs' (in_channels if depthwise)

    @property
    def key(self) -> str:
        """Stable identifier used as cache key for table rows."""
        kept = ",".join(map(str, self.kept))
        return f"{self.start}-{self.end}-k{self.kernel}-[{kept}]"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Candidate":
        d = dict(d)
        d["kept"] = tuple(d["kept"])
        d["input_shape"] = tuple(d["input_shape"])
        return cls(**d)


PLAN_VERSION = 1


@dataclass
class Plan:
    """A partition of 0..L into blocks plus one option per block: the whole decision (SPEC A1).

    ``blocks`` holds the chosen candidates in order; consecutive blocks share end/start positions.
    ``conv_paths`` records the module path of every chain conv so that replaying the plan on a different
    model fails loudly instead of silently merging the wrong layers.
    """

    blocks: list[Candidate]
    conv_paths: list[str]
    version: int = PLAN_VERSION
    meta: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        pos = 0
        for b in self.blocks:
            if b.start != pos:
                raise ValueError(f"plan is not a partition: block {b.key} starts at {b.start}, expected {pos}")
            pos = b.end
        if pos != len(self.conv_paths):
            raise ValueError(f"plan ends at position {pos}, chain has L={len(self.conv_paths)}")

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "conv_paths": self.conv_paths,
                           "blocks": [b.to_dict() for b in self.blocks], "meta": self.meta}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        d = json.loads(text)
        if d.get("version") != PLAN_VERSION:
            raise ValueError(f"plan version {d.get('version')} is not supported (expected {PLAN_VERSION})")
        return cls(blocks=[Candidate.from_dict(b) for b in d["blocks"]], conv_paths=list(d["conv_paths"]),
                   version=d["version"], meta=d.get("meta", {}))
