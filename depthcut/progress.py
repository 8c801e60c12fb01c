"""A tiny progress helper: bars go to stderr (stdout stays clean for results) and can be switched off per
call (``enabled=False``) or globally (``DEPTHCUT_PROGRESS=0``, e.g. in CI logs).

On a terminal a progress is a tqdm bar. Anywhere else (``make demo > log``, CI, a pipe) a bar's refreshes
would be thousands of ``\\r`` updates in the file, so it is a few plain lines instead: one when it starts,
one at each quarter and one at the end, each with the elapsed time and an estimate of what is left.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_enabled(enabled: bool = True) -> bool:
    """A bar is shown only when the caller asks for one and the environment does not forbid it."""
    return bool(enabled) and os.environ.get("DEPTHCUT_PROGRESS", "1").lower() not in ("0", "false", "no", "off")


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):       # no isatty, or a closed stream
        return False


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str | None = None,
             enabled: bool = True, unit: str = "it") -> "tqdm[T] | LineProgress":
    """Wrap ``iterable`` (or make a manual bar with ``total``) in a stderr progress; disabled ones still
    iterate and accept ``update``/``set_postfix`` calls, so callers never branch on it."""
    shown = progress_enabled(enabled)
    if shown and not _is_terminal(sys.stderr):
        return LineProgress(iterable, total=total, desc=desc, unit=unit)
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                dynamic_ncols=True, disable=not shown)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class LineProgress:
    """The bar's interface (iterate, ``update``, ``set_postfix``/``set_postfix_str``, ``close``) written as at
    most ``1 + MARKS`` lines: the start, each 1/MARKS of the total, and the end (or only the start and the end
    when the total is unknown). Nothing at all when there is nothing to do."""

    MARKS = 4

    def __init__(self, iterable: Iterable[T] | None = None, *, total: int | None = None,
                 desc: str | None = None, unit: str = "it"):
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc or "progress", unit
        self.n, self.postfix, self._mark, self._closed = 0, "", 1, False
        self._t0 = time.monotonic()
        if self.total != 0:
            self._line("started")

    def __iter__(self) -> Iterator[T]:
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.total:
            return
        reached = False
        while self._mark < self.MARKS and self.n * self.MARKS >= self._mark * self.total:
            self._mark, reached = self._mark + 1, True
        if reached and self.n < self.total:
            self._line(self._estimate())

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = str(text)

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.total != 0:
            self._line(f"done in {_duration(time.monotonic() - self._t0)}")

    def _estimate(self) -> str:
        elapsed = time.monotonic() - self._t0
        left = elapsed * (self.total - self.n) / self.n
        return f"{_duration(elapsed)} elapsed, about {_duration(left)} left"

    def _line(self, what: str) -> None:
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n // self.total}%)" if self.total else ""
        tail = f"; {self.postfix}" if self.postfix else ""
        print(f"[depthcut] {self.desc}: {count} {self.unit}{pct}, {what}{tail}", file=sys.stderr, flush=True)
