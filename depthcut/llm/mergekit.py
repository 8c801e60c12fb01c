"""Read and write mergekit "passthrough" YAML, so depth plans move to and from that ecosystem.

mergekit describes a stacked model as slices of one base model with half-open layer ranges::

    slices:
      - sources: [{model: BASE, layer_range: [0, 24]}]
      - sources: [{model: BASE, layer_range: [8, 32]}]
    merge_method: passthrough

A depthcut *layer sequence* lists the source layer of every new layer in order (``[0, 1, ..., 23, 8, ...,
31]``); runs of consecutive indices become one slice. Removing blocks is a sequence with gaps; up-scaling
one with repeats. Only single-model passthrough configs describe a pure layer sequence: other merge
methods (which average weights) or several source models are rejected with a clear error.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..errors import DepthcutError


def sequence_to_ranges(layer_sequence: Sequence[int]) -> list[tuple[int, int]]:
    """Compress a layer sequence into half-open ranges of consecutive indices."""
    ranges: list[tuple[int, int]] = []
    for i in layer_sequence:
        i = int(i)
        if i < 0:
            raise DepthcutError(f"layer index {i} is negative")
        if ranges and ranges[-1][1] == i:
            ranges[-1] = (ranges[-1][0], i + 1)
        else:
            ranges.append((i, i + 1))
    return ranges


def ranges_to_sequence(ranges: Sequence[Sequence[int]]) -> list[int]:
    sequence: list[int] = []
    for r in ranges:
        start, stop = _check_range(r)
        sequence.extend(range(start, stop))
    return sequence


def _check_range(r: Any) -> tuple[int, int]:
    if (not isinstance(r, (list, tuple)) or len(r) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in r)):
        raise DepthcutError(f"layer_range {r!r} must be [start, stop] integers (half-open)")
    start, stop = r
    if not 0 <= start < stop:
        raise DepthcutError(f"layer_range {list(r)} must satisfy 0 <= start < stop (half-open range)")
    return start, stop


def write_passthrough_yaml(plan: Sequence[int] | Sequence[Sequence[int]], base: str) -> str:
    """mergekit YAML for ``plan``: a layer sequence (ints) or a list of half-open ``(start, stop)`` ranges."""
    if not plan:
        raise DepthcutError("empty plan: a model needs at least one layer")
    if all(isinstance(p, (list, tuple)) for p in plan):
        ranges = [_check_range(tuple(p)) for p in plan]  # type: ignore[arg-type]
    else:
        ranges = sequence_to_ranges(plan)  # type: ignore[arg-type]
    if not base:
        raise DepthcutError("mergekit config needs a base model name or path")
    base_text = base if re.fullmatch(r"[A-Za-z0-9_./~-]+", base) else _quote(base)
    lines = ["slices:"]
    lines += [f"  - sources: [{{model: {base_text}, layer_range: [{a}, {b}]}}]" for a, b in ranges]
    lines.append("merge_method: passthrough")
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def read_passthrough_yaml(text: str) -> list[int]:
    """The layer sequence described by a mergekit passthrough YAML (single base model)."""
    return parse_passthrough_yaml(text)[0]


def parse_passthrough_yaml(text: str) -> tuple[list[int], str]:
    """(layer sequence, base model name) of a mergekit passthrough YAML."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DepthcutError(f"mergekit config is not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise DepthcutError("mergekit config must be a mapping with 'slices' and 'merge_method'")
    method = doc.get("merge_method")
    if method != "passthrough":
        raise DepthcutError(
            f"merge_method {method!r} is not supported: only 'passthrough' (layer stacking) describes a "
            f"depth plan; other methods average weights")
    slices = doc.get("slices")
    if not isinstance(slices, list) or not slices:
        raise DepthcutError("mergekit passthrough config needs a non-empty 'slices' list "
                            "(a 'models' list is for weight-averaging methods)")
    sequence: list[int] = []
    models: set[str] = set()
    for k, piece in enumerate(slices):
        sources = piece.get("sources") if isinstance(piece, dict) else None
        if not isinstance(sources, list) or len(sources) != 1 or not isinstance(sources[0], dict):
            raise DepthcutError(f"slice {k}: passthrough needs exactly one source per slice, got {sources!r}")
        source = sources[0]
        if "model" not in source or "layer_range" not in source:
            raise DepthcutError(f"slice {k}: a source needs 'model' and 'layer_range', got {source!r}")
        models.add(str(source["model"]))
        start, stop = _check_range(source["layer_range"])
        sequence.extend(range(start, stop))
    if len(models) != 1:
        raise DepthcutError(f"slices come from several models {sorted(models)}; depthcut plans describe one "
                            f"base model")
    return sequence, models.pop()
