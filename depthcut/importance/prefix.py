"""The cheap score's shared prefix (issue 30).

A candidate changes the original network only from its block on: every node the original computes before it,
on the same inputs, is the same for all candidates. With the "bn-batch" proxy (each scoring batch normalised by
its own BatchNorm statistics) such a node's output depends on the batch alone, so the original graph is run
once over the scoring batches, every node's output kept, and each candidate's evaluation reads the outputs of
its unchanged nodes instead of computing them: the same numbers, bit for bit, as running the candidate's
network from its input, at the cost of what its block and the rest of the network compute.

A node is unchanged when the candidate's graph has a node of the same name, op, target and arguments, whose
inputs are all unchanged and whose module (or attribute) holds the same type, hyper-parameters and tensors.
"""
from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import fx, nn

from ..data.datasets import loader
from ..train import batch_statistics

MEMORY_SHARE = 0.4      # kept activations may take this share of the memory available when they are recorded;
                        # a network whose scoring batches need more is evaluated from its input (the embedded
                        # MobileNetV2 on 28x28: 4.1 GB for 512 images, ~1 GB for the cheap score's 128)


def available_bytes() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):      # not a POSIX system: assume little
        return 2 * 2**30


def _tensors_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_tensors_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_tensors_bytes(v) for v in value.values())
    return 0


class _Recorder(fx.Interpreter):
    """Runs a graph and keeps every node's output (by node name)."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.op != "output":        # a copy: a later in-place op (ReLU(inplace=True), +=) must not reach it
            self.values[n.name] = _clone(out)
        return out


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_clone(v) for v in value)
    return value


class _Resume(fx.Interpreter):
    """Runs a graph, reading the kept output of every node in ``unchanged`` instead of computing it."""

    def __init__(self, gm: fx.GraphModule, kept: dict[str, Any], unchanged: set[str]):
        super().__init__(gm)
        self.kept, self.unchanged = kept, unchanged

    def run_node(self, n: fx.Node) -> Any:
        if n.name in self.unchanged:
            if n.op == "placeholder":       # (advance the interpreter's inputs all the same)
                super().run_node(n)
            value = self.kept[n.name]
            # read by a changed node, it gets a copy: that node may work in place
            return _clone(value) if any(u.name not in self.unchanged for u in n.users) else value
        return super().run_node(n)


def _same_module(a: nn.Module, b: nn.Module) -> bool:
    if a is b:
        return True
    if type(a) is not type(b) or repr(a) != repr(b) or a.training != b.training:
        return False
    # (a BatchNorm's batch counter does not enter its output)
    sa, sb = ({k: v for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")} for m in (a, b))
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def _same_attr(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and torch.equal(a, b))
    if isinstance(a, nn.Module) and isinstance(b, nn.Module):
        return _same_module(a, b)
    return a is b


def unchanged_nodes(original: fx.GraphModule, built: fx.GraphModule) -> set[str]:
    """The names of ``built``'s nodes that compute what ``original``'s node of the same name computes (module
    docstring), given the same inputs."""
    reference = {n.name: n for n in original.graph.nodes}
    names = lambda args: fx.node.map_arg(args, lambda a: a.name)   # noqa: E731
    unchanged: set[str] = set()
    for n in built.graph.nodes:
        r = reference.get(n.name)
        if (r is None or n.op == "output" or n.op != r.op or n.target != r.target
                or any(a.name not in unchanged for a in n.all_input_nodes)
                or names(n.args) != names(r.args) or names(n.kwargs) != names(r.kwargs)):
            continue
        if n.op == "call_module" and not _same_module(built.get_submodule(n.target), original.get_submodule(r.target)):
            continue
        if n.op == "get_attr" and not _same_attr(_fetch(built, n.target), _fetch(original, r.target)):
            continue
        unchanged.add(n.name)
    return unchanged


def _fetch(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for atom in target.split("."):
        obj = getattr(obj, atom)
    return obj


class SharedPrefix:
    """The original graph's node outputs on ``data``'s batches of ``batch_size`` with batch statistics (module
    docstring); ``accuracy(built)`` is ``evaluate(built, data, batch_size, batch_statistics=True)`` computed
    from them. ``enabled`` is False when they would take more than ``max_bytes`` (default: MEMORY_SHARE of the
    available memory on a CPU, 1 GiB on an accelerator): ``accuracy`` then evaluates the network from its input."""

    def __init__(self, original: fx.GraphModule, data, batch_size: int, device: str = "cpu",
                 max_bytes: int | None = None):
        self.data, self.batch_size, self.device = data, batch_size, device
        self.original = copy.deepcopy(original).to(device).eval()
        self.batches: list[tuple[dict[str, Any], torch.Tensor, torch.Tensor]] = []
        self.enabled = True
        if max_bytes is None:
            max_bytes = int(MEMORY_SHARE * available_bytes()) if device == "cpu" else 2**30
        n_batches = -(-len(data) // batch_size)
        with torch.no_grad(), batch_statistics(self.original):
            for x, y in loader(data, batch_size):
                recorder, x = _Recorder(self.original), x.to(device)
                recorder.run(x)
                self.batches.append((recorder.values, x, y))
                if _tensors_bytes(recorder.values) * n_batches > max_bytes:
                    self.batches, self.enabled = [], False
                    break

    @property
    def kept_bytes(self) -> int:
        """The memory the kept node outputs take (0 when disabled)."""
        return sum(_tensors_bytes(kept) for kept, _, _ in self.batches)

    @torch.no_grad()
    def accuracy(self, built: fx.GraphModule) -> float:
        """Top-1 accuracy (%) of ``built`` (a network built from the original graph) on the data, each batch
        normalised by its own statistics."""
        if not self.enabled:
            from ..train import evaluate

            return evaluate(built, self.data, batch_size=self.batch_size, batch_statistics=True)
        correct = total = 0
        for logits, y in self.outputs(built):
            correct += (logits.argmax(1).cpu() == y).sum().item()
            total += len(y)
        return 100.0 * correct / max(total, 1)

    @torch.no_grad()
    def outputs(self, built: fx.GraphModule):
        """(``built``'s output, labels) per batch, in eval mode with batch statistics, its unchanged nodes read
        from the kept outputs (the mode is restored afterwards)."""
        assert self.enabled, "the kept outputs would exceed max_bytes"
        was_training = built.training
        built.eval()
        unchanged = unchanged_nodes(self.original, built)
        try:
            with batch_statistics(built):
                for kept, x, y in self.batches:
                    yield _Resume(built, kept, unchanged).run(x), y
        finally:
            built.train(was_training)
