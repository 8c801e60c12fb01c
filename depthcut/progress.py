"""A tiny progress helper over tqdm: bars go to stderr (stdout stays clean for results) and can be
switched off per call (``enabled=False``) or globally (``DEPTHCUT_PROGRESS=0``, e.g. in CI logs)."""
from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_enabled(enabled: bool = True) -> bool:
    """A bar is shown only when the caller asks for one and the environment does not forbid it."""
    return bool(enabled) and os.environ.get("DEPTHCUT_PROGRESS", "1").lower() not in ("0", "false", "no", "off")


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str | None = None,
             enabled: bool = True, unit: str = "it") -> "tqdm[T]":
    """Wrap ``iterable`` (or make a manual bar with ``total``) in a stderr tqdm bar; disabled bars still
    iterate and accept ``update``/``set_postfix`` calls, so callers never branch on it."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                dynamic_ncols=True, disable=not progress_enabled(enabled))
