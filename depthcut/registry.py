"""The method registry: a name -> method object map that the pipeline (depthcut.compression) and the configs look
methods up in, without depending on any method's implementation. The built-in methods (depthcut.methods) are
registered when the package is imported; a plugin registers its own with ``@register_method``."""
from __future__ import annotations

from typing import Any

from .errors import DepthcutError

_METHODS: dict[str, Any] = {}


def register_method(cls: type) -> type:
    _METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Any:
    if name not in _METHODS:
        raise DepthcutError(f"unknown method {name!r}; choose one of {', '.join(_METHODS)}")
    return _METHODS[name]


def method_names() -> list[str]:
    return list(_METHODS)


