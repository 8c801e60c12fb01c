"""What every depthcut config shares: typed fields checked on construction, JSON round trips, a version.

A config is a dataclass. Values coming from JSON or the command line are checked against the field
annotations (``int``, ``float``, ``bool``, ``str``, ``X | None``, ``tuple[int, ...]``, ``dict``), so a
config file with ``"batch_size": "8"`` or ``"speedup": NaN`` fails at once with one line naming the field,
instead of deep inside a run. Lists become tuples where the annotation says tuple.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Union

from .errors import DepthcutError


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is tuple:
        return (f"a list of values each {_describe(args[0])}" if len(args) == 2 and args[1] is Ellipsis
                else f"a list of {len(args)} values")
    if origin is dict:
        return "an object"
    return {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint)))


class _FieldError(DepthcutError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the annotation ``hint`` (and lists turned into tuples); DepthcutError
    naming the field otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    fail = _FieldError(name, f"config field {name!r} must be {_describe(hint)}, got {value!r}")
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise fail
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(name, value, option)
            except _FieldError as e:
                if e.field != name:      # an element inside the value is wrong: say which
                    raise
        raise fail
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise fail
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise fail
    if hint is str:
        if isinstance(value, str):
            return value
        raise fail
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise fail
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise fail
        return tuple(coerce(f"{name}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or hint is dict:
        if isinstance(value, dict):
            return value
        raise fail
    return value


def at_least(name: str, value: float | None, low: float, inclusive: bool = True) -> None:
    """One-line range check for a numeric field (None passes: optional)."""
    if value is None:
        return
    ok = value >= low if inclusive else value > low
    if not ok:
        raise DepthcutError(f"config field {name!r} must be {'>=' if inclusive else '>'} {low}, got {value}")


class ConfigBase:
    """Mixin for config dataclasses: ``check_types()`` (call it first in ``__post_init__``), JSON I/O."""

    KIND: ClassVar[str] = "config"

    def check_types(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce(f.name, getattr(self, f.name), hints[f.name]))

    def check_version(self, current: int) -> None:
        """A file written by a newer depthcut is refused in one line (older versions migrate in ``from_dict``)."""
        if self.version > current:
            raise DepthcutError(f"{self.KIND} version {self.version} is newer than this depthcut ({current})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path: str | Path) -> None:
        from .cache import atomic_write_text

        atomic_write_text(path, self.to_json())

    @classmethod
    def from_dict(cls, d: Any):
        if not isinstance(d, dict):
            raise DepthcutError(f"a {cls.KIND} must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DepthcutError(f"unknown {cls.KIND} field(s): {', '.join(unknown)} "
                                f"(known: {', '.join(sorted(known))})")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str, source: str = "JSON"):
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise DepthcutError(f"{cls.KIND} {source} is not valid JSON: {e}") from None

    @classmethod
    def load(cls, path: str | Path):
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise DepthcutError(f"{cls.KIND} file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DepthcutError(f"cannot read {cls.KIND} file {path}: {e}") from None
        try:
            return cls.from_json(text, source=f"file {path}")
        except DepthcutError as e:
            message = str(e)
            raise DepthcutError(message if str(path) in message else f"{path}: {message}") from None
