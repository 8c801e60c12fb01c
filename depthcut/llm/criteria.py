"""Which decoder blocks (or sublayers) matter: the importance criteria of SPEC B2.

Every criterion looks at the model on a few calibration windows (LongTensor [n, length]) and either

* **scores** every unit once (``score(model, windows, unit) -> list[float]``, aligned with
  :func:`all_units`, higher = more important), or
* **selects** the ``n`` units to remove itself (``select(model, windows, n, protect) -> list[Unit]``) when the
  choice is not a ranking (Gromov's contiguous run) or is iterative (SLEB re-scores after each removal).

Nothing here copies the model: removing a unit for a trial is a *skip mask* (:func:`skipped`) that patches
the unit's ``forward`` to pass its input through, exactly what removing it from the residual stream does.

Criteria (name -> paper):
  ppl              Shortened LLaMA: ΔNLL on calibration text when the unit alone is skipped
                   (we return ΔNLL = log(PPL_without / PPL_dense): same ranking as PPL, and additive for the knapsack)
  taylor, taylor+  Shortened LLaMA: Σ|W ⊙ ∂L/∂W| over the unit's weights from one backward pass
  magnitude, mag+  Σ|W|
  block_influence  ShortGPT: 1 − mean_tokens cos(x_n, x_{n+1})
  angular          Gromov et al.: the contiguous run of n blocks starting at argmin_ℓ arccos(cos(x_ℓ, x_{ℓ+n}))/π
                   (cosine at the last token)
  sleb             SLEB: greedy, remove the unit whose removal raises calibration NLL least, then re-score
"+" = ``protect=(4, 2)``: the first 4 and last 2 blocks are never removed.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DepthcutError, UnsupportedModelError
from .device import to_model

Unit = tuple[int, str]  # (block index, "block" | "attn" | "mlp"), same as depthcut.llm.surgery.Unit
PLUS_PROTECT = (4, 2)
ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn")


# ------------------------------------------------------------------------------------------------ units
def num_blocks(model) -> int:
    config = getattr(model, "config", None)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if config is not None and getattr(config, key, None) is not None:
            return int(getattr(config, key))
    return len(decoder_layers(model))


def decoder_layers(model) -> nn.ModuleList:
    """The ModuleList of decoder blocks (the family registry when it knows the model, else by shape)."""
    family = _family(model)
    if family is not None:
        return family.layers(model)
    config = getattr(model, "config", None)
    n = None
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if config is not None and getattr(config, key, None) is not None:
            n = int(getattr(config, key))
            break
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    match = [m for m in lists if n is None or len(m) == n]
    if not match:
        raise UnsupportedModelError(f"cannot find the decoder blocks of {type(model).__name__} "
                                    f"(no ModuleList of num_hidden_layers={n} modules)")
    return match[0]


def _family(model):
    """The families.py registry entry of ``model``, or None (then blocks are found by shape)."""
    try:
        from .families import get_family
        return get_family(model)
    except (ImportError, DepthcutError):
        return None


def sublayer(layer: nn.Module, part: str, family=None) -> nn.Module:
    """The attention or MLP module of one decoder block."""
    names = ATTN_NAMES if part == "attn" else MLP_NAMES
    if family is not None:
        names = (family.sublayer_modules(part)[0],) + names
    for name in names:
        if isinstance(getattr(layer, name, None), nn.Module):
            return getattr(layer, name)
    raise UnsupportedModelError(f"{type(layer).__name__} has no {part} sublayer named one of {names}")


def all_units(model, unit: str = "block") -> list[Unit]:
    """Every removable unit, in order: blocks, or (attn, mlp) halves of every block."""
    n = num_blocks(model)
    if unit == "block":
        return [(i, "block") for i in range(n)]
    if unit == "sublayer":
        return [(i, part) for i in range(n) for part in ("attn", "mlp")]
    raise DepthcutError(f"unknown unit {unit!r}: use 'block' or 'sublayer'")


def protected_units(units: list[Unit], num_layers: int, protect: tuple[int, int]) -> set[Unit]:
    """Units inside the first ``protect[0]`` or last ``protect[1]`` blocks."""
    first, last = protect
    return {u for u in units if u[0] < first or u[0] >= num_layers - last}


def _module(model, u: Unit) -> nn.Module:
    layer = decoder_layers(model)[u[0]]
    return layer if u[1] == "block" else sublayer(layer, u[1], _family(model))


# -------------------------------------------------------------------------------------------- skip mask
@contextmanager
def skipped(model, units: Iterable[Unit]) -> Iterator[None]:
    """Run ``model`` as if ``units`` were removed, without copying it.

    A skipped block returns its input hidden states; a skipped sublayer returns zeros, which its residual
    adds to x, leaving that half's output = x. Restores the modules on exit, even after an exception.
    """
    patched = []
    try:
        for u in units:
            module = _module(model, u)
            if u[1] == "block":
                def forward(*args, **kwargs):
                    hidden = args[0] if args else kwargs["hidden_states"]
                    return hidden
            elif u[1] == "attn":
                def forward(*args, **kwargs):
                    hidden = args[0] if args else kwargs["hidden_states"]
                    return torch.zeros_like(hidden), None
            else:
                def forward(*args, **kwargs):
                    hidden = args[0] if args else next(iter(kwargs.values()))
                    return torch.zeros_like(hidden)
            module.forward = forward  # instance attribute shadows the class method
            patched.append(module)
        yield
    finally:
        for module in patched:
            module.__dict__.pop("forward", None)


# ------------------------------------------------------------------------------------------------- loss
def _batches(windows: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(windows), batch_size):
        yield windows[start:start + batch_size]


def token_nll(model, batch: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of a batch (predicting tokens 1..T−1 of every row)."""
    batch = to_model(model, batch)
    logits = model(input_ids=batch, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum")


@torch.no_grad()
def nll(model, windows: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token NLL (nats/token) of ``model`` on ``windows``; exp() of it is the perplexity."""
    total = sum(float(token_nll(model, b)) for b in _batches(windows, batch_size))
    return total / (windows.shape[0] * (windows.shape[1] - 1))


# --------------------------------------------------------------------------------------------- scorers
def score_ppl(model, windows: torch.Tensor, unit: str = "block") -> list[float]:
    """ΔNLL when each unit alone is skipped (log PPL ratio; 0 = harmless)."""
    dense = nll(model, windows)
    scores = []
    for u in all_units(model, unit):
        with skipped(model, [u]):
            scores.append(nll(model, windows) - dense)
    return scores


def _unit_params(model, unit: str) -> list[tuple[Unit, list[nn.Parameter]]]:
    return [(u, list(_module(model, u).parameters())) for u in all_units(model, unit)]


@torch.no_grad()
def score_magnitude(model, windows: torch.Tensor | None = None, unit: str = "block") -> list[float]:
    """Σ|W| over each unit's weights."""
    return [float(sum(p.abs().sum() for p in params)) for _, params in _unit_params(model, unit)]


def score_taylor(model, windows: torch.Tensor, unit: str = "block", micro_batch: int | None = None) -> list[float]:
    """Σ|W ⊙ ∂L/∂W| per unit from ONE backward pass of the mean LM loss over all windows.

    Gradients never pile up: only the units' parameters require grad (not the embeddings / head), and a
    post-accumulate hook folds each parameter's gradient into its unit's scalar and frees it at once.
    ``micro_batch`` bounds activation memory for large calibration sets; each micro-batch then has its own
    backward and contributes Σ|W ⊙ g_b| (a sum of per-batch saliencies, documented approximation).
    """
    units = _unit_params(model, unit)
    owner = {id(p): k for k, (_, params) in enumerate(units) for p in params}
    scores = [0.0] * len(units)
    saved_flags = {id(p): p.requires_grad for p in model.parameters()}
    handles = []

    def fold(p: torch.Tensor) -> None:
        scores[owner[id(p)]] += float((p.detach() * p.grad).abs().sum())
        p.grad = None

    was_training = model.training
    model.eval()  # no dropout: the saliency of the deployed function
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in owner)
        for _, params in units:
            for p in params:
                handles.append(p.register_post_accumulate_grad_hook(fold))
        tokens = windows.shape[0] * (windows.shape[1] - 1)
        for batch in _batches(windows, micro_batch or len(windows)):
            with torch.enable_grad():
                (token_nll(model, batch) / tokens).backward()
    finally:
        for h in handles:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(saved_flags[id(p)])
            p.grad = None
        model.train(was_training)
    return scores


@torch.no_grad()
def block_states(model, windows: torch.Tensor, batch_size: int = 8) -> Iterator[list[torch.Tensor]]:
    """Per batch, the residual stream [x_0, ..., x_L]: x_n enters block n, x_{n+1} leaves it."""
    layers = decoder_layers(model)
    for batch in _batches(windows, batch_size):
        states: list[torch.Tensor | None] = [None] * (len(layers) + 1)
        handles = []
        for n, layer in enumerate(layers):
            def pre(module, args, kwargs, n=n):
                states[n] = (args[0] if args else kwargs["hidden_states"]).float()

            def post(module, args, kwargs, output, n=n):
                states[n + 1] = (output[0] if isinstance(output, tuple) else output).float()
            handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(layer.register_forward_hook(post, with_kwargs=True))
        try:
            model(input_ids=to_model(model, batch), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        yield states


def score_block_influence(model, windows: torch.Tensor, unit: str = "block") -> list[float]:
    """ShortGPT BI_n = 1 − mean over tokens of cos(x_n, x_{n+1})."""
    _block_only("block_influence", unit)
    sums, count = None, 0
    for states in block_states(model, windows):
        cos = torch.stack([F.cosine_similarity(a, b, dim=-1).sum() for a, b in zip(states, states[1:])])
        sums = cos if sums is None else sums + cos
        count += states[0].shape[0] * states[0].shape[1]
    return [1.0 - float(c) / count for c in sums]


def angular_distances(model, windows: torch.Tensor, n: int) -> list[float]:
    """d(ℓ, n) = arccos(cos(x_ℓ, x_{ℓ+n}))/π at the last token, averaged over windows, ℓ = 0..L−n."""
    L = num_blocks(model)
    sums, count = [0.0] * (L - n + 1), 0      # Python floats: the states may live on any device
    for states in block_states(model, windows):
        last = [s[:, -1].float() for s in states]
        for start in range(L - n + 1):
            cos = F.cosine_similarity(last[start], last[start + n], dim=-1).clamp(-1, 1)
            sums[start] += float((torch.arccos(cos) / math.pi).sum())
        count += last[0].shape[0]
    return [s / count for s in sums]


# ------------------------------------------------------------------------------------------- selectors
def select_angular(model, windows: torch.Tensor, n: int, protect: tuple[int, int] = (0, 0),
                   unit: str = "block") -> list[Unit]:
    """Gromov et al.: the contiguous run of n blocks whose input and output are closest in angle."""
    _block_only("angular", unit)
    L = num_blocks(model)
    first, last = protect
    d = angular_distances(model, windows, n)
    starts = [s for s in range(first, L - last - n + 1)]
    if not starts:
        raise DepthcutError(f"no run of {n} contiguous blocks fits between the protected first {first} "
                            f"and last {last} of {L} blocks")
    best = min(starts, key=lambda s: d[s])
    return [(i, "block") for i in range(best, best + n)]


def select_sleb(model, windows: torch.Tensor, n: int, protect: tuple[int, int] = (0, 0),
                unit: str = "block", trace: list | None = None) -> list[Unit]:
    """SLEB: n greedy steps; each removes the unit whose removal (on top of those already removed) gives the
    lowest calibration NLL. Trials are skip masks on the same model, never copies. Returns removal order.
    ``trace`` (optional list) receives, per step, the {unit: NLL} of every candidate tried."""
    units = all_units(model, unit)
    candidates = [u for u in units if u not in protected_units(units, num_blocks(model), protect)]
    removed: list[Unit] = []
    for _ in range(n):
        trials = {}
        for u in candidates:
            if u in removed:
                continue
            with skipped(model, removed + [u]):
                trials[u] = nll(model, windows)
        if not trials:
            raise DepthcutError(f"sleb: no removable unit left after {len(removed)} removals")
        best = min(trials, key=trials.get)
        removed.append(best)
        if trace is not None:
            trace.append(trials)
    return removed


def _block_only(name: str, unit: str) -> None:
    if unit != "block":
        raise DepthcutError(f"criterion {name!r} compares hidden states between blocks; it supports "
                            f"unit='block' only (use ppl, taylor, magnitude or sleb for sublayers)")


# -------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Criterion:
    """One importance criterion. Exactly one of ``score`` / ``select`` is set."""
    name: str
    score: Callable | None = None      # (model, windows, unit) -> list[float], higher = more important
    select: Callable | None = None     # (model, windows, n, protect, unit) -> list[Unit]
    protect: tuple[int, int] = (0, 0)  # default protection (first, last) blocks
    units: tuple[str, ...] = ("block", "sublayer")
    doc: str = ""

    @property
    def iterative(self) -> bool:
        return self.select is not None


CRITERIA: dict[str, Criterion] = {c.name: c for c in [
    Criterion("ppl", score=score_ppl, doc="ΔNLL with the unit alone skipped (Shortened LLaMA PPL)"),
    Criterion("taylor", score=score_taylor, doc="Σ|W·∂L/∂W| (raw, no protection)"),
    Criterion("taylor+", score=score_taylor, protect=PLUS_PROTECT, doc="Taylor, first 4 / last 2 kept"),
    Criterion("magnitude", score=score_magnitude, doc="Σ|W| (raw)"),
    Criterion("mag+", score=score_magnitude, protect=PLUS_PROTECT, doc="Σ|W|, first 4 / last 2 kept"),
    Criterion("block_influence", score=score_block_influence, units=("block",), doc="ShortGPT BI"),
    Criterion("angular", select=select_angular, units=("block",), doc="Gromov contiguous run"),
    Criterion("sleb", select=select_sleb, doc="SLEB greedy iterative NLL"),
]}


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise DepthcutError(f"unknown criterion {name!r}: choose one of {', '.join(CRITERIA)}")
    return CRITERIA[name]


def rank_removal(scores: list[float], units: list[Unit], n: int, protected: set[Unit]) -> list[Unit]:
    """The n least important unprotected units (ties -> later block first is NOT assumed: lower index)."""
    order = sorted((s, i) for i, s in enumerate(scores) if units[i] not in protected)
    if len(order) < n:
        raise DepthcutError(f"cannot remove {n} units: only {len(order)} are not protected")
    return sorted(units[i] for _, i in order[:n])
