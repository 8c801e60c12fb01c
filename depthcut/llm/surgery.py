"""Depth surgery on Hugging Face causal LMs: remove blocks or sublayers, duplicate blocks, save.

Units. A *unit* is ``(block_index, part)`` with part ``"block"`` (a whole decoder block), ``"attn"`` or
``"mlp"`` (one residual half of it; removing it leaves x unchanged for that half).

Blocks: rebuild, never edit in place. ``model.model.layers``, ``config.num_hidden_layers``, every per-layer
config list (``layer_types``, Qwen2's ``max_window_layers``...) and each attention's ``layer_idx`` must
agree, or outputs are silently wrong, the KV cache raises, or a reload creates random layers (SPEC B1). So
every operation here is one primitive, :func:`rebuild`: a new config lists the *source* block of each new
block; a new model is instantiated from it on the meta device (free, and its attentions get
``layer_idx`` 0..n-1 from their constructor) and every tensor is then copied from its source. Any parameter
or buffer left unassigned raises: a new block can never be silently random.

Sublayers: two representations of the same function.
  * Standard checkpoint (what is saved). A removed attention has its ``o_proj`` weight (and bias) set to
    zero, a removed MLP its ``down_proj``; every shape is kept. Any stock ``transformers`` loads the
    checkpoint with ``from_pretrained`` and computes exactly the pruned function (the branch adds 0; Gemma's
    post-norms map 0 to 0), just at no speed gain. The config also records
    ``depthcut_removed_sublayers: [[block, "attn"|"mlp"], ...]`` (an extra config field that transformers
    keeps and saves but ignores).
  * Fast in-memory form (what :func:`remove_units` and :func:`load_pruned` return). The branch module and
    its norms are swapped for "skipped" modules that compute nothing: attention returns an all-zero
    (broadcast, never materialised) residual branch and ``None`` weights, MLP returns zeros, norms return
    their input. The skipped modules keep the original sub-modules and parameters under the *same names*,
    so ``state_dict`` / ``save_pretrained`` still write the standard checkpoint above. A skipped attention
    still appends a one-scalar-per-token entry to its KV-cache layer, because the cache's sequence length
    (``get_seq_length``, mask sizes) is read from per-layer entries: with nothing appended, removing block
    0's attention would reset every position to 0 during decoding.
Heal (LoRA) the fast form: there ``o_proj``/``down_proj`` get no gradient and stay zero; fine-tuning the
standard form would un-zero them and no longer match the record (:func:`load_pruned` then raises).
Removing both halves of one block is the same function as removing the block, and is done as such.
"""
from __future__ import annotations

import copy
import operator
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import DepthcutError, UnsupportedModelError
from .compat import find_cache
from .families import Family, get_family

Unit = tuple[int, str]
PARTS = ("block", "attn", "mlp")
SUBLAYERS = ("attn", "mlp")
REMOVED_FIELD = "depthcut_removed_sublayers"
# the last projection of each branch: zeroing it makes the branch add exactly 0 to the residual stream
BRANCH_OUTPUT = {"attn": "o_proj", "mlp": "down_proj"}


# ------------------------------------------------------------------------------------------------------
# skipped (identity) sublayers


class _Skipped(nn.Module):
    """Base of the skipped modules: adopts the original's parameters, buffers and children under the same
    names (so the state dict is unchanged) but never uses them."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self._parameters = dict(original._parameters)
        self._buffers = dict(original._buffers)
        self._non_persistent_buffers_set = set(original._non_persistent_buffers_set)
        self._modules = dict(original._modules)
        self.original_class = type(original).__name__

    def extra_repr(self) -> str:
        return f"skipped {self.original_class}"


class SkippedAttention(_Skipped):
    """An attention whose residual branch is removed. Returns (zeros, None) like an attention module and
    keeps the KV cache's per-layer sequence-length bookkeeping intact."""

    def __init__(self, original: nn.Module):
        super().__init__(original)
        self.layer_idx = original.layer_idx

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        # The cache's keyword changes between transformers releases (past_key_value -> past_key_values ->
        # cache): find it by type, and refuse to guess when caching is on but no cache object came.
        cache = find_cache(args, kwargs)
        if cache is not None:
            _append_placeholder(cache, self.layer_idx, hidden_states)
        elif kwargs.get("use_cache"):
            raise RuntimeError(
                f"skipped attention of layer {self.layer_idx}: use_cache=True but no KV-cache object among "
                f"the arguments ({', '.join(sorted(kwargs))}); this transformers release passes the cache "
                f"in a way depthcut does not recognise, and decoding would restart positions at 0")
        return _zeros_like(hidden_states), None


class SkippedMLP(_Skipped):
    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return _zeros_like(hidden_states)


class SkippedNorm(_Skipped):
    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


def _zeros_like(x: torch.Tensor) -> torch.Tensor:
    # a stride-0 view of one zero: right shape and dtype for the residual add, no memory
    return x.new_zeros(()).expand(x.shape)


def _append_placeholder(cache: Any, layer_idx: int, hidden_states: torch.Tensor) -> None:
    """Append one token's worth of (tiny) keys/values so the layer's cache length keeps counting tokens."""
    batch, length = hidden_states.shape[:2]
    heads, head_dim = 1, 1
    layers = getattr(cache, "layers", None)
    if layers is not None and layer_idx < len(layers):
        keys = getattr(layers[layer_idx], "keys", None)
        if isinstance(keys, torch.Tensor) and keys.dim() == 4:  # pre-allocated / earlier update: match it
            heads, head_dim = keys.shape[1], keys.shape[3]
    placeholder = hidden_states.new_zeros((batch, heads, length, head_dim))
    cache.update(placeholder, placeholder, layer_idx)


def removed_sublayers(model_or_config: Any) -> list[Unit]:
    """The sublayers recorded as removed in a model's config, sorted."""
    config = getattr(model_or_config, "config", model_or_config)
    return sorted((int(i), str(p)) for i, p in (getattr(config, REMOVED_FIELD, None) or []))


def apply_removed_sublayers(model: nn.Module, check_zero: bool = True) -> nn.Module:
    """Swap every sublayer recorded in ``config.depthcut_removed_sublayers`` for its skipped form (in
    place). With ``check_zero`` the branch's output projection must be all zero, i.e. the standard form
    computes the same function; otherwise the checkpoint was changed outside depthcut and we refuse."""
    family = get_family(model)
    layers = family.layers(model)
    for index, part in removed_sublayers(model):
        if not 0 <= index < len(layers):
            raise DepthcutError(f"{REMOVED_FIELD} names block {index} but the model has {len(layers)} blocks")
        block = layers[index]
        branch_attr, norm_attrs = family.sublayer_modules(part)
        branch = getattr(block, branch_attr)
        if isinstance(branch, _Skipped):
            continue
        if check_zero:
            out = getattr(branch, BRANCH_OUTPUT[part])
            if any(t is not None and bool(t.detach().ne(0).any()) for t in (out.weight, out.bias)):
                raise DepthcutError(
                    f"config records block {index} {part} as removed but {family.layers_attr}.{index}."
                    f"{branch_attr}.{BRANCH_OUTPUT[part]} is not zero (fine-tuned in standard form?); "
                    f"re-run removal on the fine-tuned model")
        setattr(block, branch_attr, (SkippedAttention if part == "attn" else SkippedMLP)(branch))
        for norm_attr in norm_attrs:
            setattr(block, norm_attr, SkippedNorm(getattr(block, norm_attr)))
    return model


# ------------------------------------------------------------------------------------------------------
# config editing and the rebuild primitive


def _check_supported(model: nn.Module, family: Family) -> int:
    config = model.config
    if getattr(config, "is_heterogeneous", False):
        raise UnsupportedModelError(
            f"{config.model_type}: heterogeneous configs (per_layer_config) are not supported by depth surgery")
    if getattr(config, "quantization_config", None) is not None:
        raise UnsupportedModelError(
            f"{config.model_type}: the model is quantized ({config.quantization_config}); load it in float "
            f"(depthcut.llm.loading.load_model dequantizes GGUF files)")
    n = len(family.layers(model))
    if n != config.num_hidden_layers:
        raise DepthcutError(
            f"model has {n} blocks in {family.layers_attr} but config.num_hidden_layers = "
            f"{config.num_hidden_layers}; it was edited in place without depthcut")
    return n


def edited_config(config: Any, sources: Sequence[int], family: Family | None = None,
                  removed: Iterable[Unit] = ()) -> Any:
    """A copy of ``config`` for a model whose block i is a copy of old block ``sources[i]``.

    Sets ``num_hidden_layers``, selects every per-layer list by ``sources``, recounts prefix-count fields
    and records ``removed`` (new indices) as ``depthcut_removed_sublayers``."""
    family = family or get_family(config)
    n_old = config.num_hidden_layers
    new = copy.deepcopy(config)
    names = set(family.per_layer_lists) | {k for k in vars(config) if k.endswith("layer_types")}
    edits: dict[str, Any] = {}
    for name in sorted(names):
        values = getattr(config, name, None)
        if values is None:
            continue
        if not isinstance(values, (list, tuple)) or len(values) != n_old:
            raise UnsupportedModelError(
                f"{config.model_type}: per-layer config field {name} has {len(values)} entries for "
                f"{n_old} layers; cannot edit it consistently")
        edits[name] = [values[s] for s in sources]
    for name in family.prefix_count:
        value = getattr(config, name, None)
        if isinstance(value, int):
            edits[name] = min(sum(1 for s in sources if s < value), len(sources))
    new.num_hidden_layers = len(sources)
    for name, value in edits.items():
        setattr(new, name, value)
    removed = sorted(set(removed))
    if removed:
        setattr(new, REMOVED_FIELD, [[i, p] for i, p in removed])
    elif hasattr(new, REMOVED_FIELD):
        delattr(new, REMOVED_FIELD)
    if hasattr(new, "validate_layer_type"):
        new.validate_layer_type()
    return new


def _source_name(name: str, prefix: str, sources: Sequence[int]) -> str:
    """Map a tensor name in the new model to the one it is copied from (``layers.i.`` -> ``layers.src.``)."""
    head = prefix + "."
    if name.startswith(head):
        index, _, rest = name[len(head):].partition(".")
        return f"{head}{sources[int(index)]}" + (f".{rest}" if rest else "")
    return name


def copy_tensors(old: nn.Module, new: nn.Module, source_of: Callable[[str], str] = lambda name: name,
                 share_weights: bool = False) -> None:
    """Fill every parameter, buffer and tensor attribute of ``new`` (typically built on the meta device)
    from ``old``: the tensor named ``n`` in ``new`` comes from ``source_of(n)`` in ``old``. Tensors tied in
    ``old`` (one object under two names) stay tied. Raises if any tensor of ``new`` is left unassigned."""
    old_tensors: dict[str, torch.Tensor] = dict(old.named_parameters(remove_duplicate=False))
    old_tensors.update(old.named_buffers(remove_duplicate=False))
    old_modules = dict(old.named_modules(remove_duplicate=False))
    # (id(old tensor), k) -> new tensor, where k counts earlier requests of the same source *name*: a tensor
    # tied in ``old`` (one object, several names) stays tied, a block used twice gets two independent copies
    copies: dict[tuple[int, int], torch.Tensor] = {}
    requests: dict[str, int] = {}

    def copy_of(name: str, t: torch.Tensor) -> torch.Tensor:
        key = (id(t), requests.get(name, 0))
        requests[name] = key[1] + 1
        if key not in copies:
            data = t.detach() if share_weights and key[1] == 0 else t.detach().clone()
            copies[key] = nn.Parameter(data, requires_grad=t.requires_grad) if isinstance(
                t, nn.Parameter) else data
        return copies[key]

    for module_name, module in new.named_modules(remove_duplicate=False):
        dot = module_name + "." if module_name else ""
        for kind in ("_parameters", "_buffers"):
            slots = getattr(module, kind)
            for local, t in slots.items():
                if t is None:
                    continue
                src_name = source_of(dot + local)
                src = old_tensors.get(src_name)
                if src is None or src.shape != t.shape:
                    raise DepthcutError(
                        f"no source tensor for {dot + local} (looked for {src_name} with shape "
                        f"{tuple(t.shape)}); the model class does not match its config")
                slots[local] = copy_of(src_name, src)
        # plain tensor attributes (e.g. rotary ``original_inv_freq`` in some versions) are state too
        src_module = old_modules.get(source_of(module_name)) if module_name else old
        for attr, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and value.is_meta:
                src = getattr(src_module, attr, None)
                if not isinstance(src, torch.Tensor):
                    raise DepthcutError(f"no source for tensor attribute {dot + attr}")
                setattr(module, attr, src.detach().clone())

    # The check the whole approach rests on: no tensor of the new model is left uninitialised.
    left = [name for name, t in [*new.named_parameters(remove_duplicate=False),
                                 *new.named_buffers(remove_duplicate=False)] if t.is_meta]
    if left:
        raise DepthcutError(f"tensors left unassigned (they would be random): {left[:5]}")


def rebuild(model: nn.Module, sources: Sequence[int], removed: Iterable[Unit] = (),
            share_weights: bool = False) -> nn.Module:
    """New model whose block i is a copy of ``model``'s block ``sources[i]``; ``removed`` lists sublayers
    (new indices) to remove. The primitive behind every public function here.

    With ``share_weights`` the new model shares tensors with the old one (fast, for scoring loops that
    never train); by default every tensor is cloned, so healing the new model cannot touch the old one.
    """
    family = get_family(model)
    n = _check_supported(model, family)
    sources = [int(s) for s in sources]
    bad = [s for s in sources if not 0 <= s < n]
    if not sources or bad:
        raise DepthcutError(f"block indices {bad or sources} are out of range for a {n}-block model")
    config = edited_config(model.config, sources, family, removed)

    with torch.device("meta"):
        new = type(model)(config)

    prefix = family.layers_attr
    copy_tensors(model, new, lambda name: _source_name(name, prefix, sources), share_weights)
    new.generation_config = copy.deepcopy(model.generation_config)
    new.train(model.training)
    _zero_branch_outputs(new, family)
    return apply_removed_sublayers(new)


def _zero_branch_outputs(model: nn.Module, family: Family) -> None:
    """Standard form of removed sublayers: zero the output projection (fresh tensors, so a source model
    sharing its weights is never modified)."""
    layers = family.layers(model)
    for index, part in removed_sublayers(model):
        branch = getattr(layers[index], family.sublayer_modules(part)[0])
        out = getattr(branch, BRANCH_OUTPUT[part])
        for name in ("weight", "bias"):
            p = getattr(out, name, None)
            if p is not None:
                setattr(out, name, nn.Parameter(torch.zeros_like(p), requires_grad=p.requires_grad))


# ------------------------------------------------------------------------------------------------------
# public operations


def _validate_units(units: Iterable[Unit], n: int) -> tuple[set[int], set[Unit]]:
    blocks: set[int] = set()
    subs: set[Unit] = set()
    seen: set[Unit] = set()
    for unit in units:
        try:
            index, part = unit
            index = operator.index(index)
        except (TypeError, ValueError):
            raise DepthcutError(f"unit {unit!r} is not (block_index, part)") from None
        if part not in PARTS:
            raise DepthcutError(f"unit {unit!r}: part must be one of {PARTS}")
        if not 0 <= index < n:
            raise DepthcutError(f"unit {unit!r}: block index {index} out of range for a {n}-block model")
        if (index, part) in seen:
            raise DepthcutError(f"unit {(index, part)!r} is listed twice")
        seen.add((index, part))
        (blocks.add(index) if part == "block" else subs.add((index, part)))
    overlap = sorted(u for u in subs if u[0] in blocks)
    if overlap:
        raise DepthcutError(f"units {overlap} are sublayers of blocks that are removed whole")
    return blocks, subs


def remove_units(model: nn.Module, units: Iterable[Unit], share_weights: bool = False) -> nn.Module:
    """New model without the given units (blocks and/or sublayers; indices refer to ``model``).

    Removed sublayers are skipped modules (fast) and zeroed output projections (standard checkpoint), see
    the module docstring. Sublayers already removed in ``model`` stay removed (renumbered)."""
    family = get_family(model)
    n = _check_supported(model, family)
    drop, subs = _validate_units(units, n)
    already = set(removed_sublayers(model))
    again = sorted(subs & already)
    if again:
        raise DepthcutError(f"units {again} are already removed in this model")
    subs |= {u for u in already if u[0] not in drop}
    # both halves gone = the block is the identity: remove it whole
    for index in {i for i, p in subs if (i, "attn") in subs and (i, "mlp") in subs}:
        drop.add(index)
    subs = {u for u in subs if u[0] not in drop}
    if len(drop) >= n:
        raise DepthcutError(f"cannot remove all {n} blocks of the model")
    kept = [i for i in range(n) if i not in drop]
    new_index = {old: new for new, old in enumerate(kept)}
    return rebuild(model, kept, [(new_index[i], p) for i, p in subs], share_weights)


def remove_blocks(model: nn.Module, drop: Iterable[int], share_weights: bool = False) -> nn.Module:
    """New model without the decoder blocks ``drop`` (indices into ``model``; at least one must stay)."""
    indices = []
    for i in drop:
        try:
            indices.append(operator.index(i))
        except TypeError:
            raise DepthcutError(f"block index {i!r} is not an integer") from None
    return remove_units(model, [(i, "block") for i in indices], share_weights)


def duplicate_layers(model: nn.Module, layer_sequence: Sequence[int]) -> nn.Module:
    """New model whose blocks are deep copies of ``model``'s blocks ``layer_sequence`` in that order
    (repeats allowed: depth up-scaling). Removed sublayers travel with their block."""
    family = get_family(model)
    n = _check_supported(model, family)
    sequence = [int(s) for s in layer_sequence]
    if not sequence:
        raise DepthcutError("layer_sequence is empty: a model needs at least one block")
    bad = [s for s in sequence if not 0 <= s < n]
    if bad:
        raise DepthcutError(f"layer_sequence indices {bad} out of range for a {n}-block model")
    already = removed_sublayers(model)
    removed = [(new, p) for new, src in enumerate(sequence) for i, p in already if i == src]
    return rebuild(model, sequence, removed)


def save_pretrained(model: nn.Module, tokenizer: Any, out_dir: str | os.PathLike) -> None:
    """Save a standard checkpoint (config + safetensors [+ tokenizer]) that stock ``from_pretrained``
    loads into the same function; :func:`load_pruned` also restores the fast skipped sublayers."""
    family = get_family(model)
    _check_supported(model, family)
    for i, attn in enumerate(getattr(layer, family.attn_attr) for layer in family.layers(model)):
        if getattr(attn, "layer_idx", i) != i:
            raise DepthcutError(f"block {i} has attention layer_idx {attn.layer_idx}; rebuild the model")
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)


def load_pruned(path: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Load a checkpoint saved by :func:`save_pretrained` and re-apply the fast removed sublayers."""
    from transformers import AutoModelForCausalLM

    if not os.path.isdir(path):
        raise DepthcutError(f"pruned model directory {path} does not exist")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise DepthcutError(f"cannot load a causal LM from {path}: {e}") from None
    return apply_removed_sublayers(model)
