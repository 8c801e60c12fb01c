"""On-disk caches for long jobs: atomic writes, fingerprints, and per-entry resumable tables.

Latency and importance tables take minutes to hours. They are stored as one small JSON file per entry in a
directory named after a *fingerprint* of everything that changes the values (backend, versions, machine,
shapes, model weights...). Each entry is written atomically (temp file + ``os.replace``), so a ``kill -9``
loses at most the entry being computed, and a table from another machine or model is never silently reused:
its fingerprint differs, so it lives in another directory, and a directory whose manifest does not match
raises :class:`CacheError`.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import CacheError

DEFAULT_CACHE_DIR = Path(os.environ.get("DEPTHCUT_CACHE", Path.home() / ".cache" / "depthcut"))


def atomic_write_text(path: str | os.PathLike, text: str | bytes) -> None:
    """Write ``text`` (or bytes) to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True))


def atomic_write_result(stem: str | os.PathLike, data: Any, text: str) -> None:
    """A benchmark's result: ``<stem>.json`` (``data``) and ``<stem>.md`` (``text``, the report a person reads),
    each written atomically."""
    atomic_write_json(f"{stem}.json", data)
    atomic_write_text(f"{stem}.md", text)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a truncated or foreign file raises CacheError naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheError(f"cache file {path} is corrupted ({e}); delete it to recompute") from None


def json_number(value: Any) -> float:
    """A number read from a cache file: an int or a float, never a JSON boolean (Python's ``float(True)`` is
    1.0, which would turn a damaged entry into a plausible value). TypeError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a number: {value!r}")
    return float(value)


def fingerprint(fields: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able dict (sorted keys)."""
    blob = json.dumps(fields, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def state_fingerprint(model_or_state: Any) -> str:
    """A short hash of a model's weights and buffers (a module or a state dict), for manifests of tables
    whose values depend on the trained model (e.g. importance). Names, shapes, dtypes and bytes all count."""
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else model_or_state
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        # view as bytes: numpy cannot represent every dtype (bfloat16), a uint8 view always works
        h.update(t.reshape(-1).view(_torch_uint8()).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _torch_uint8() -> Any:
    import torch  # lazy: the cache module itself must not pull in torch

    return torch.uint8


def _safe(key: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_.," else "_" for c in key)
    return f"{keep[:80]}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


class EntryStore:
    """A directory of JSON entries keyed by string, under a manifest that pins the fingerprint.

    >>> store = EntryStore(root / "latency" / fp, manifest={"backend": "eager", ...})
    >>> if key not in store: store[key] = {"ms": 1.2}
    """

    MANIFEST = "manifest.json"

    def __init__(self, directory: str | os.PathLike, manifest: dict[str, Any]):
        self.dir = Path(directory)
        self.manifest = json.loads(json.dumps(manifest, sort_keys=True, default=str))
        self.dir.mkdir(parents=True, exist_ok=True)
        mpath = self.dir / self.MANIFEST
        if mpath.exists():
            found = read_json(mpath)
            if not isinstance(found, dict) or found != self.manifest:
                raise CacheError(
                    f"cache directory {self.dir} belongs to another configuration "
                    f"(manifest differs: {_diff(found, self.manifest)}); use another --cache-dir or delete it")
        else:
            atomic_write_json(mpath, self.manifest)

    def path(self, key: str) -> Path:
        return self.dir / f"{_safe(key)}.json"

    def __contains__(self, key: str) -> bool:
        return self.path(key).exists()

    def __getitem__(self, key: str) -> Any:
        p = self.path(key)
        if not p.exists():
            raise KeyError(key)
        entry = read_json(p)
        if not isinstance(entry, dict) or entry.get("key") != key:
            raise CacheError(f"cache file {p} does not hold entry {key!r}; delete it to recompute")
        return entry["value"]

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __setitem__(self, key: str, value: Any) -> None:
        atomic_write_json(self.path(key), {"key": key, "value": value})

    def items(self) -> Iterator[tuple[str, Any]]:
        """Every stored (key, value), each file read once. A file that is not an entry, or holds an entry whose
        key belongs in another file (copied or renamed by hand), is damaged: CacheError naming it."""
        for p in sorted(self.dir.glob("*.json")):
            if p.name != self.MANIFEST:
                entry = read_json(p)
                key = entry.get("key") if isinstance(entry, dict) else None
                if not isinstance(key, str) or self.path(key) != p:
                    held = f"entry {key!r}" if isinstance(key, str) else "no entry"
                    raise CacheError(f"cache file {p} is corrupted (it holds {held}); delete it to recompute")
                yield key, entry["value"]

    def keys(self) -> Iterator[str]:
        """Every stored key (see :meth:`items`)."""
        for key, _ in self.items():
            yield key

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())


def _diff(a: Any, b: Any) -> str:
    if not isinstance(a, dict):
        return "not a manifest"
    keys = sorted(set(a) | set(b))
    diffs = [f"{k}: {a.get(k)!r} != {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
    return "; ".join(diffs[:4]) or "?"
