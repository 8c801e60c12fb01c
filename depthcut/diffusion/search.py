"""The U-Net's rows on the LayerMerge DP (depthcut.search.layermerge): the same search as for classifiers.

The U-Net's convs in execution order are the chain's positions: ``conv_in`` is 0 -> 1, a ResNet block's conv1
and conv2 are p -> p+1 and p+1 -> p+2 (its merged rows p -> p+2), a resampling conv q -> q+1 (an up-sampling
conv's identity row too, at 0 ms). No row crosses anything else (attention, skips, resampling, the first
GroupNorm + SiLU of a block), so those are barriers by construction, and a path 0 -> L through the rows is
exactly a plan that decides every block once.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import DepthcutError
from ..search.layermerge import Frontier, solve
from ..search.tables import Row as SearchRow
from .unet import Row


def positions(rows: Sequence[Row]) -> tuple[dict[str, tuple[int, int]], int]:
    """{row key: (start, end)} over the chain of the rows' convs (in the rows' order), and its length L."""
    spans: dict[str, tuple[int, int]] = {}
    cursor, conv_at = 0, {}
    for r in rows:
        convs = ["conv1", "conv2"] if r.kind == "resnet" else ["conv"]
        for conv in convs:
            if (r.module, conv) not in conv_at:
                conv_at[(r.module, conv)] = cursor
                cursor += 1
        if r.kind == "resnet":
            first = conv_at[(r.module, "conv1")]
            spans[r.key] = {"conv1": (first, first + 1), "conv2": (first + 1, first + 2),
                            "conv1+conv2": (first, first + 2)}[r.span]
        else:
            at = conv_at[(r.module, "conv")]
            spans[r.key] = (at, at + 1)
    return spans, cursor


def search_rows(rows: Sequence[Row], latency_ms: Mapping[str, float], importance: Mapping[str, float]
                ) -> tuple[list[SearchRow], int]:
    """The DP's rows (``ref`` = the U-Net row) and the chain length."""
    spans, length = positions(rows)
    missing = [r.key for r in rows if r.key not in latency_ms or r.key not in importance]
    if missing:
        raise DepthcutError(f"{len(missing)} U-Net rows have no latency or importance entry (first: {missing[0]})")
    return [SearchRow(*spans[r.key], float(latency_ms[r.key]), float(importance[r.key]), option=k, ref=r)
            for k, r in enumerate(rows)], length


def frontier(rows: Sequence[Row], latency_ms: Mapping[str, float], importance: Mapping[str, float],
             steps: int = 2000, max_latency_ms: float | None = None) -> Frontier:
    """Every budget's best plan in one solve; ``frontier(...).best(budget).rows`` -> search rows whose
    ``ref`` are the U-Net rows to pass to :func:`depthcut.diffusion.merge.apply_plan`."""
    table, length = search_rows(rows, latency_ms, importance)
    return solve(table, length, steps=steps, max_latency_ms=max_latency_ms)
