"""One channel for everything depthcut says while it works: the ``logging`` logger named ``"depthcut"``.

Both verbs (``compress`` and ``llm prune``/``upscale``) and every stage below them report through
:class:`Stages` (named stages with their wall time) or :func:`say` (a line inside a stage). Nothing else prints
progress; results go to stdout only from the CLI. Progress bars (``depthcut.progress``) are the one other
stream, and they are switched off by the same ``DEPTHCUT_PROGRESS=0``.

By default the logger writes ``[depthcut <verb> <elapsed>s] message`` lines to the *current* ``sys.stderr``
(looked up per line, so redirections and pytest's capture see them) and does not propagate, so a program
that configures the root logger does not get every line twice. To take over: attach your own handlers and
set ``logging.getLogger("depthcut").propagate`` as you like; to silence: ``setLevel(logging.WARNING)`` or
pass ``progress=False`` in a config.
"""
from __future__ import annotations

import logging
import sys
import time

LOGGER = logging.getLogger("depthcut")


class _CurrentStderr(logging.StreamHandler):
    """A StreamHandler whose stream is whatever ``sys.stderr`` is when the line is written."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:   # logging.StreamHandler assigns it in __init__; always follow sys.stderr
        pass


if not LOGGER.handlers:
    _handler = _CurrentStderr()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(_handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


def say(message: str, *, verb: str = "", enabled: bool = True, level: int = logging.INFO) -> None:
    """One line on the depthcut channel (``enabled=False``: nothing, e.g. ``config.progress`` off)."""
    if enabled:
        LOGGER.log(level, f"[depthcut{' ' + verb if verb else ''}] {message}")


class Stages:
    """Named stages of one run: ``stages.start("score", "criterion angular ...")`` ends the previous stage,
    records its wall time in ``stages.timings`` and announces the next; ``stages.say(...)`` is a line inside
    the current stage; ``stages.end()`` closes the last one."""

    def __init__(self, verb: str = "", enabled: bool = True) -> None:
        self.verb, self.enabled = verb, enabled
        self.t0 = self._t = time.perf_counter()
        self.current: str | None = None
        self.timings: dict[str, float] = {}

    def _prefix(self) -> str:
        return f"{self.verb + ' ' if self.verb else ''}{time.perf_counter() - self.t0:6.1f}s"

    def start(self, name: str, message: str = "") -> None:
        self.end()
        self.current, self._t = name, time.perf_counter()
        say(message or name, verb=self._prefix(), enabled=self.enabled)

    def say(self, message: str) -> None:
        say(f"  {message}", verb=self._prefix(), enabled=self.enabled)

    def end(self) -> None:
        if self.current is not None:
            self.timings[self.current] = round(time.perf_counter() - self._t, 3)
            self.current = None
