"""Score a model that does not fit: keep one decoder block in memory at a time (issue 10).

``streamed(path)`` builds the model's skeleton with every *parameter* on the meta device (buffers such as
rotary frequencies are computed for real), loads the embeddings, final norm and LM head from the checkpoint's
safetensors, and hooks each decoder block so that its weights are read from the safetensors files just before
the block runs and dropped right after. The model's own forward then runs unchanged, family by family, with
one block resident: criteria that need only a forward pass see the same numbers as in memory.

Which criteria stream (``STREAMABLE``):
  angular, block_influence   one forward pass over the calibration windows (hidden states at every block)
  ppl                        one forward pass per unit skipped (each pass streams every block again)
  magnitude, mag+            no forward pass: Σ|W| read tensor by tensor
Which do not: taylor / taylor+ (gradients through every block at once) and sleb (greedy, one pass per
candidate per step: it streams, but its L² passes re-read the model L² times; run it in memory).

``peak_bytes`` records the largest parameter memory resident during a run (tests check it against a cap).
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from ..errors import DepthcutError

STREAMABLE = ("angular", "block_influence", "ppl", "magnitude", "mag+")


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device; buffers stay real (computed)."""
    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None and not param.is_meta:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _weight_files(path: Path) -> dict[str, Path]:
    """tensor name -> safetensors file, for a single file or an index of shards."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        return {k: path / f for k, f in json.loads(index.read_text())["weight_map"].items()}
    single = path / "model.safetensors"
    if not single.exists():
        raise DepthcutError(f"{path} has no model.safetensors or model.safetensors.index.json: streaming reads "
                            f"safetensors checkpoints only")
    from safetensors import safe_open

    with safe_open(str(single), "pt") as f:
        return {k: single for k in f.keys()}


class StreamedModel:
    """A causal LM whose decoder blocks live on disk until they run. Use ``.model`` like a loaded model."""

    def __init__(self, path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        from transformers import AutoConfig, AutoModelForCausalLM

        from .criteria import decoder_layers

        self.path, self.dtype, self.device = Path(path), dtype, torch.device(device)
        self.files = _weight_files(self.path)
        config = AutoConfig.from_pretrained(self.path)
        with _parameters_on_meta():
            self.model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        self.model.eval()
        self.layers = decoder_layers(self.model)
        self.prefix = self._layer_prefix()
        self.resident = 0
        self.peak_bytes = 0
        layer_ids = {id(p) for layer in self.layers for p in layer.parameters()}
        for name, module in self.model.named_modules():      # everything outside the blocks: load once
            for pname, p in list(module._parameters.items()):
                if p is not None and id(p) not in layer_ids and p.is_meta:
                    self._load(module, pname, f"{name}.{pname}" if name else pname)
        self.model.tie_weights()
        for buf_module in self.model.modules():
            for bname, b in list(buf_module._buffers.items()):
                if b is not None and b.device != self.device:
                    buf_module._buffers[bname] = b.to(self.device)
        self.base_bytes = self.resident
        self.peak_bytes = self.resident
        for i, layer in enumerate(self.layers):
            layer.register_forward_pre_hook(lambda m, args, i=i: self._materialize(i))
            layer.register_forward_hook(lambda m, args, out, i=i: self._release(i))

    def _layer_prefix(self) -> str:
        for name, module in self.model.named_modules():
            if module is self.layers:
                return name
        raise DepthcutError("cannot find the decoder blocks' module path")

    def _tensor(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        file = self.files.get(key)
        if file is None:
            raise KeyError(key)
        with safe_open(str(file), "pt", device="cpu") as f:
            return f.get_tensor(key)

    def _load(self, module: nn.Module, pname: str, key: str) -> None:
        try:
            t = self._tensor(key)
        except KeyError:
            if key.endswith("lm_head.weight"):          # tied to the embeddings: tie_weights() sets it
                return
            raise DepthcutError(f"{self.path}: no tensor {key} in the checkpoint") from None
        old = module._parameters[pname]
        module._parameters[pname] = nn.Parameter(t.to(device=self.device, dtype=self.dtype),
                                                 requires_grad=False)
        if old is not None and tuple(old.shape) != tuple(t.shape):
            raise DepthcutError(f"{self.path}: {key} has shape {tuple(t.shape)}, the config says {tuple(old.shape)}")
        self.resident += module._parameters[pname].numel() * module._parameters[pname].element_size()
        self.peak_bytes = max(self.peak_bytes, self.resident)

    def _materialize(self, i: int) -> None:
        for name, module in self.layers[i].named_modules():
            for pname, p in list(module._parameters.items()):
                if p is not None and p.is_meta:
                    self._load(module, pname, f"{self.prefix}.{i}.{name + '.' if name else ''}{pname}")

    def _release(self, i: int) -> None:
        for module in self.layers[i].modules():
            for pname, p in list(module._parameters.items()):
                if p is not None and not p.is_meta:
                    self.resident -= p.numel() * p.element_size()
                    module._parameters[pname] = nn.Parameter(p.to("meta"), requires_grad=False)

    def parameter_bytes(self) -> int:
        """What the whole model's parameters take in memory at this dtype (from the shapes, no data read)."""
        from safetensors import safe_open

        total, bits = 0, torch.finfo(self.dtype).bits
        for file in set(self.files.values()):
            with safe_open(str(file), "pt") as f:
                for k in f.keys():
                    n = 1
                    for size in f.get_slice(k).get_shape():
                        n *= size
                    total += n * bits // 8
        return total


def streamed_magnitude(path: str | os.PathLike, num_blocks: int, prefix: str, unit: str = "block") -> list[float]:
    """Σ|W| per block read tensor by tensor from the checkpoint (no model built)."""
    from safetensors import safe_open

    if unit != "block":
        raise DepthcutError("streamed magnitude scores whole blocks")
    scores = [0.0] * num_blocks
    files = _weight_files(Path(path))
    for key, file in files.items():
        if not key.startswith(prefix + "."):
            continue
        i = int(key[len(prefix) + 1:].split(".")[0])
        with safe_open(str(file), "pt") as f:
            scores[i] += float(f.get_tensor(key).float().abs().sum())
    return scores


def stream_select(path: str | os.PathLike, windows: torch.Tensor, criterion: str, n: int,
                  protect: tuple[int, int] | None = None, unit: str = "block", dtype: torch.dtype = torch.float32,
                  device: str = "cpu") -> tuple[list[tuple[int, str]], "StreamedModel"]:
    """The ``n`` units a streamable criterion removes, with one block in memory at a time. Returns (units,
    the StreamedModel, whose ``peak_bytes`` says what was resident at most)."""
    from . import criteria as C

    if criterion not in STREAMABLE:
        raise DepthcutError(f"criterion {criterion!r} does not stream (it needs gradients through every block, or "
                            f"L² passes); streamable: {', '.join(STREAMABLE)}")
    crit = C.get_criterion(criterion)
    protect = crit.protect if protect is None else tuple(protect)
    sm = StreamedModel(path, dtype, device)
    units = C.all_units(sm.model, unit)
    protected = C.protected_units(units, len(sm.layers), protect)
    with torch.no_grad():
        if crit.iterative:
            return crit.select(sm.model, windows, n, protect, unit), sm
        if criterion in ("magnitude", "mag+"):
            scores = streamed_magnitude(path, len(sm.layers), sm.prefix, unit)
        else:
            scores = crit.score(sm.model, windows, unit)
    return C.rank_removal(scores, units, n, set(protected)), sm
