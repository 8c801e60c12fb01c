"""Turn a ``torch.export`` program back into a module-level graph that the chain analysis understands.

An exported program is a flat graph of ATen calls (``aten.conv2d``, ``aten.batch_norm``, ``aten.relu_``...)
over parameters fetched with ``get_attr``. The analysis and the plan builder work on ``nn.Conv2d`` /
``nn.BatchNorm2d`` / activation *modules*, so each such call is rebuilt as a real module at the path its
weight came from (``layer1.0.conv1.weight`` -> module ``layer1.0.conv1``). Every other ATen call stays as it
is and becomes a barrier of the chain, exactly like an unknown op in an eager model.
"""
from __future__ import annotations

import torch
from torch import fx, nn

from ..errors import UnsupportedModelError

aten = torch.ops.aten

ACTIVATIONS = {
    aten.relu.default: lambda n: nn.ReLU(), aten.relu_.default: lambda n: nn.ReLU(),
    aten.silu.default: lambda n: nn.SiLU(), aten.silu_.default: lambda n: nn.SiLU(),
    aten.hardswish.default: lambda n: nn.Hardswish(), aten.hardswish_.default: lambda n: nn.Hardswish(),
    aten.gelu.default: lambda n: nn.GELU(), aten.sigmoid.default: lambda n: nn.Sigmoid(),
    aten.leaky_relu.default: lambda n: nn.LeakyReLU(n.args[1] if len(n.args) > 1 else 0.01),
    aten.leaky_relu_.default: lambda n: nn.LeakyReLU(n.args[1] if len(n.args) > 1 else 0.01),
}
HARDTANH = (aten.hardtanh.default, aten.hardtanh_.default)


def _attr_path(node) -> str | None:
    return node.target if isinstance(node, fx.Node) and node.op == "get_attr" else None


def _fetch(gm: fx.GraphModule, node) -> torch.Tensor | None:
    path = _attr_path(node)
    if path is None:
        return None
    obj = gm
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj.detach()


def _owner(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path else path


def _conv(gm, node) -> tuple[str, nn.Conv2d]:
    # aten.conv2d(input, weight, bias=None, stride=[1], padding=[0], dilation=[1], groups=1)
    defaults = (None, None, None, [1, 1], [0, 0], [1, 1], 1)
    args = list(node.args) + list(defaults[len(node.args):])
    _, w, b, stride, padding, dilation, groups = args[:7]
    weight = _fetch(gm, w)
    if weight is None or weight.dim() != 4:
        raise UnsupportedModelError(f"exported conv {node.name} does not read a 4-D weight attribute")
    if isinstance(padding, str):
        raise UnsupportedModelError(f"exported conv {node.name} uses padding={padding!r}; only integer padding")
    out_c, in_per_group, kh, kw = weight.shape
    conv = nn.Conv2d(in_per_group * groups, out_c, (kh, kw), stride=stride, padding=padding, dilation=dilation,
                     groups=groups, bias=b is not None)
    conv.weight.data.copy_(weight)
    if b is not None:
        conv.bias.data.copy_(_fetch(gm, b))
    return _owner(_attr_path(w)), conv


def _batch_norm(gm, node) -> tuple[str, nn.BatchNorm2d]:
    args = list(node.args)
    x, w, b, mean, var = args[:5]
    eps = args[7] if len(args) > 7 else 1e-5
    momentum = args[6] if len(args) > 6 else 0.1
    rm = _fetch(gm, mean)
    bn = nn.BatchNorm2d(rm.shape[0], eps=eps, momentum=momentum)
    bn.running_mean.copy_(rm)
    bn.running_var.copy_(_fetch(gm, var))
    if w is not None:
        bn.weight.data.copy_(_fetch(gm, w))
    if b is not None:
        bn.bias.data.copy_(_fetch(gm, b))
    path = _attr_path(w) or _attr_path(mean)
    bn.eval()  # the exported graph ran batch_norm with training=False
    return _owner(path), bn


def _set_module(gm: fx.GraphModule, path: str, module: nn.Module) -> str:
    """Install ``module`` at ``path`` (replacing the parameter holder there), unique if taken."""
    parent_path, _, name = path.rpartition(".")
    parent = gm.get_submodule(parent_path) if parent_path else gm
    existing = getattr(parent, name, None)
    if existing is not None and type(existing) in (nn.Conv2d, nn.BatchNorm2d) and existing is not module:
        name = f"{name}_{sum(1 for _ in parent.children())}"
    if hasattr(parent, name) and not isinstance(getattr(parent, name), nn.Module):
        delattr(parent, name)
    parent._modules.pop(name, None)
    parent.add_module(name, module)
    return f"{parent_path}.{name}" if parent_path else name


def modules_from_export(program: torch.export.ExportedProgram) -> fx.GraphModule:
    """An ``fx.GraphModule`` equal to ``program.module()`` with convs, BNs and activations as modules."""
    gm = program.module()
    graph = gm.graph
    act_count = 0
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            graph.erase_node(node)
            continue
        if node.op != "call_function":
            continue
        module = None
        if node.target in (aten.conv2d.default, aten.convolution.default):
            if node.target is aten.convolution.default and node.args[6]:
                continue  # transposed convolution: leave as an op (barrier)
            if node.target is aten.convolution.default:
                node.args = node.args[:6] + (node.args[8],)
            path, module = _conv(gm, node)
        elif node.target in (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default):
            if node.target is aten._native_batch_norm_legit_no_training.default:
                continue  # returns a tuple; left as an op
            path, module = _batch_norm(gm, node)
        elif node.target in ACTIVATIONS:
            module, path = ACTIVATIONS[node.target](node), f"act_{act_count}"
            act_count += 1
        elif node.target in HARDTANH and tuple(node.args[1:3]) == (0.0, 6.0):
            module, path = nn.ReLU6(), f"act_{act_count}"
            act_count += 1
        if module is None:
            continue
        path = _set_module(gm, path, module)
        with graph.inserting_before(node):
            new = graph.call_module(path, (node.args[0],))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    # A fresh GraphModule drops export's instance overrides (its train()/eval() raise NotImplementedError),
    # so the result behaves like any nn.Module: trainable, switchable to eval mode, re-traceable.
    clean = fx.GraphModule(gm, graph)
    clean.eval()
    return clean
