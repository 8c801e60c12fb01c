"""Rows of the latency / importance tables as the search sees them.

A :class:`Row` is one candidate (block ``start..end``, kernel option ``option``) with its measured latency and
its importance. The searches only read ``start``, ``end``, ``latency_ms`` and ``importance``; ``ref`` carries
whatever the caller needs to map a chosen row back to its model (e.g. a ``depthcut.cnn.chain.Candidate``).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from depthcut.errors import DataError


@dataclass(frozen=True)
class Row:
    """One (block, kernel option) candidate: convs c_{start+1}..c_end merged into one, option ``option``."""

    start: int
    end: int
    latency_ms: float
    importance: float
    option: int = 0
    ref: Any = None

    @property
    def block(self) -> tuple[int, int]:
        return (self.start, self.end)


def check_rows(rows: Sequence[Row], length: int) -> None:
    """Reject rows a search cannot use: positions outside 0..length, empty blocks, negative or NaN latency."""
    if length < 1:
        raise ValueError(f"chain length must be >= 1, got {length}")
    for r in rows:
        if not (0 <= r.start < r.end <= length):
            raise ValueError(f"row {r} is not a block of positions 0..{length} (need 0 <= start < end <= L)")
        if not (r.latency_ms >= 0.0) or math.isinf(r.latency_ms):
            raise ValueError(f"row {r} has latency {r.latency_ms!r}; latencies must be finite and >= 0 ms")
        if math.isnan(r.importance):
            raise ValueError(f"row {r} has NaN importance")


def load_kim23_csv(path: str | Path, importance: float = 0.0) -> tuple[list[Row], int]:
    """Read a latency table with columns ``id,st,end,time,stdev`` (time in ms).

    Returns the rows (importance ``importance`` everywhere, ``ref = {"id", "stdev"}``) and the chain length L
    (the largest ``end``).
    """
    path = Path(path)
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = {"st", "end", "time"} - set(reader.fieldnames or ())
            if missing:
                raise DataError(f"latency table {path} lacks column(s) {sorted(missing)}; "
                                f"expected id,st,end,time,stdev")
            rows = [Row(start=int(d["st"]), end=int(d["end"]), latency_ms=float(d["time"]),
                        importance=importance,
                        ref={"id": int(d["id"]) if d.get("id") not in (None, "") else i,
                             "stdev": float(d["stdev"]) if d.get("stdev") not in (None, "") else None})
                    for i, d in enumerate(reader)]
    except FileNotFoundError:
        raise DataError(f"latency table {path} does not exist") from None
    except (ValueError, KeyError) as e:
        raise DataError(f"latency table {path} is malformed: {e}") from None
    if not rows:
        raise DataError(f"latency table {path} has no rows")
    length = max(r.end for r in rows)
    check_rows(rows, length)
    return rows, length


def single_layer_latency(rows: Iterable[Row]) -> float:
    """Sum of single-conv block latencies (end = start + 1): the unmerged body. Where a position has several
    single-conv rows (a kept conv and its identity option) the slowest one, i.e. the kept conv, counts."""
    best: dict[int, float] = {}
    for r in rows:
        if r.end == r.start + 1:
            best[r.end] = max(best.get(r.end, 0.0), r.latency_ms)
    return math.fsum(best.values())
