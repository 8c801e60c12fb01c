"""Depth up-scaling (SOLAR 10.7B, Kim et al. 2023; SPEC B5): the ``upscale`` verb.

From an n-layer base take two copies A and B, drop the last m layers of A and the first m layers of B, and
concatenate: A[0 .. n-m) + B[m .. n), i.e. 2(n - m) layers (SOLAR: n = 32, m = 8 -> 48 layers). The m
"overlap" layers on each side of the seam are what is discarded, so that the seam joins layer n-m-1 to layer
m, two layers whose representations are closer than those of layer n-1 and layer 0. Every duplicated layer
is a deep copy; ``layer_idx``, ``num_hidden_layers`` and per-layer config lists are rebuilt by
:func:`depthcut.llm.surgery.duplicate_layers`. Continued pre-training is expected afterwards.

    result = upscale(model, tokenizer, UpscaleConfig(overlap=8))    # or upscale("path/or/hf-id", None, cfg)
    result.save_pretrained("solar-like")                             # checkpoint + report + mergekit YAML

The same shape as ``prune(model, tokenizer, PruneConfig)`` and ``compress(model, LayerMergeConfig)``; the CLI
(``depthcut llm upscale``) only builds the config.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from ..cache import atomic_write_json, atomic_write_text
from ..configbase import ConfigBase
from ..errors import DepthcutError
from ..log import Stages
from .surgery import duplicate_layers

CONFIG_VERSION = 1


def upscale_plan(n: int, overlap: int) -> list[int]:
    """Source layer of each up-scaled layer: ``[0..n-overlap) + [overlap..n)``."""
    if n < 1:
        raise DepthcutError(f"cannot up-scale a model with {n} layers")
    if not 0 <= overlap < n:
        raise DepthcutError(f"overlap m = {overlap} must satisfy 0 <= m < n = {n} (2(n-m) layers result)")
    return list(range(0, n - overlap)) + list(range(overlap, n))


def depth_upscale(model: nn.Module, overlap: int, base_layers: Sequence[int] | None = None) -> nn.Module:
    """The SOLAR surgery alone: a new model of ``model``'s layers in the order of :func:`upscale_plan`.
    ``base_layers`` (default: all layers in order) is the base stack the two copies are made of, e.g. to
    up-scale an already-selected subset."""
    n_model = model.config.num_hidden_layers
    base = list(range(n_model)) if base_layers is None else [int(i) for i in base_layers]
    bad = [i for i in base if not 0 <= i < n_model]
    if bad:
        raise DepthcutError(f"base_layers {bad} out of range for a {n_model}-layer model")
    plan = upscale_plan(len(base), overlap)
    return duplicate_layers(model, [base[i] for i in plan])


@dataclass
class UpscaleConfig(ConfigBase):
    """What decides an up-scaling (JSON round-trips; ``version`` guards old files)."""

    model: str | None = None               # HF folder, .gguf or cached HF id; None = embedded SmolLM2-135M
    overlap: int = 8                       # m: drop the last m layers of copy A and the first m of copy B
    layers: tuple[int, ...] | None = None  # an explicit source-layer sequence instead of the overlap rule
    from_mergekit: str | None = None       # ... or the sequence of a mergekit passthrough YAML
    eval_windows: int = 16                 # held-out PPL before/after (0 = skip)
    eval_length: int = 128
    corpus: str = "lee"
    base_name: str | None = None           # the base model's name in the mergekit YAML (default: model)
    progress: bool = True
    out: str | None = None
    version: int = CONFIG_VERSION

    KIND: ClassVar[str] = "upscale config"

    def __post_init__(self) -> None:
        self.check_types()
        self.check_version(CONFIG_VERSION)
        if self.layers is not None and self.from_mergekit is not None:
            raise DepthcutError("give only one of layers or from_mergekit (or neither, for the overlap rule)")


@dataclass
class UpscaleResult:
    model: Any
    tokenizer: Any
    layer_sequence: list[int]              # source layer of every layer of ``model``
    report: dict[str, Any] = field(default_factory=dict)
    config: UpscaleConfig | None = None
    out: Path | None = None

    def mergekit_yaml(self) -> str:
        """The same plan as a mergekit passthrough YAML (to build it from the original weights elsewhere)."""
        from .mergekit import write_passthrough_yaml

        return write_passthrough_yaml(self.layer_sequence, self.report.get("base_name")
                                      or "HuggingFaceTB/SmolLM2-135M-Instruct")

    def save_pretrained(self, out: str | Path) -> Path:
        """A standard checkpoint (stock ``from_pretrained`` loads it), ``upscale_report.json``,
        ``upscale_config.json`` and ``mergekit.yaml``."""
        from .surgery import save_pretrained

        out = Path(out)
        save_pretrained(self.model, self.tokenizer, out)
        atomic_write_json(out / "upscale_report.json", self.report)
        atomic_write_text(out / "mergekit.yaml", self.mergekit_yaml())
        if self.config is not None:
            atomic_write_text(out / "upscale_config.json", dataclasses.replace(self.config, out=str(out)).to_json())
        self.out = out
        return out


def upscale(model=None, tokenizer=None, config: UpscaleConfig | None = None, *, out: str | Path | None = None
            ) -> UpscaleResult:
    """SOLAR depth up-scaling (module doc). ``model``: a module (not modified), a checkpoint folder, a .gguf,
    a cached HF id, or None for ``config.model``. With ``out`` (or ``config.out``) the result is saved there.
    Stages: load -> plan -> surgery -> held-out PPL [-> save]."""
    from .evaluate import perplexity
    from .text import corpus_source, load_corpus, split_text

    config = config or UpscaleConfig()
    if out is not None:
        config = replace(config, out=str(out))
    stages = Stages("llm upscale", enabled=config.progress)
    in_memory = model is not None and not isinstance(model, (str, Path))
    name = str(model) if isinstance(model, (str, Path)) else config.model
    sequence_override = _plan_override(config)          # a bad YAML fails before the model loads
    stages.start("load", "using the in-memory model" if in_memory else
                 f"loading {name or 'embedded SmolLM2-135M-Instruct'}")
    if not in_memory:
        from .loading import load_model
        model, loaded = load_model(name)
        tokenizer = tokenizer or loaded
    n = model.config.num_hidden_layers
    sequence = sequence_override if sequence_override is not None else upscale_plan(n, config.overlap)
    bad = [i for i in sequence if not 0 <= i < n]
    if bad:
        raise DepthcutError(f"layer sequence refers to layers {sorted(set(bad))}, outside the {n}-layer model")
    stages.start("surgery", f"{n} -> {len(sequence)} layers")
    bigger = duplicate_layers(model, sequence).eval()
    report: dict[str, Any] = {
        "version": CONFIG_VERSION, "config": json.loads(config.to_json()),
        "model": "in-memory" if in_memory else (name or "embedded:SmolLM2-135M-Instruct"),
        "base_name": config.base_name or name, "layers_before": n, "layers_after": len(sequence),
        "layer_sequence": sequence,
        "overlap": config.overlap if sequence_override is None else None,
        "plan_from": config.from_mergekit or ("layers" if config.layers is not None else "overlap rule"),
    }
    if tokenizer is not None and config.eval_windows > 0:
        stages.start("ppl", f"held-out PPL of the base and the up-scaled model ({config.eval_windows} x "
                            f"{config.eval_length} tokens)")
        eval_text = split_text(load_corpus(config.corpus), (0.6, 0.4))[1]
        before = perplexity(model, tokenizer, eval_text, config.eval_length, config.eval_windows,
                            corpus=config.corpus)
        after = perplexity(bigger, tokenizer, eval_text, config.eval_length, config.eval_windows,
                           corpus=config.corpus)
        report.update(ppl_base=before["ppl"], ppl_upscaled_before_training=after["ppl"],
                      protocol={**after["protocol"], "corpus_source": corpus_source(config.corpus)})
    stages.end()
    report["timings_s"] = dict(stages.timings)
    result = UpscaleResult(bigger, tokenizer, sequence, report, config)
    if config.out:
        result.save_pretrained(config.out)
    return result


def _plan_override(config: UpscaleConfig) -> list[int] | None:
    if config.layers is not None:
        return [int(i) for i in config.layers]
    if config.from_mergekit is None:
        return None
    from .mergekit import parse_passthrough_yaml

    path = Path(config.from_mergekit)
    if not path.is_file():
        raise DepthcutError(f"mergekit YAML {path} does not exist")
    sequence, _base = parse_passthrough_yaml(path.read_text())
    return list(sequence)
