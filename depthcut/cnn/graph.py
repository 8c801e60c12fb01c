"""Find the convolution chain of an arbitrary CNN with torch.fx (SPEC A1-A2).

``trace`` symbolically traces the model (in eval mode, so ``if self.training`` branches take their inference
form) and propagates shapes so that every tensor node carries ``node.meta['tensor_meta']``.
``find_chain`` then reads the graph as a chain c_1..c_L:

1. **Main path.** From the output, walk backwards choosing at every node the tensor input with the same shape
   as the node (so a squeeze-excite gate never wins over the feature map it scales) and, among those, the one
   reached through the most convolutions (so a residual's conv branch wins over its identity / projection).
2. **Walk forward** along that path. Every supported ``nn.Conv2d`` call opens a new position; a
   ``BatchNorm2d`` that directly and solely consumes the conv is attached to it; the first activation after a
   conv (or its BN / residual add) sits at the position; a residual add whose other operand is the value at an
   earlier position s (identity), or that value through a conv(+BN) (projection), is a :class:`Skip` (s, t).

What is what on the main path:

* **chain members**: ``nn.Conv2d`` (square kernel, dilation 1, any groups, zero padding equal
  on both axes, odd kernel), ``nn.BatchNorm2d`` right after such a conv (with running statistics),
  activations (ReLU, ReLU6 / Hardtanh(0, 6), SiLU, Hardswish, GELU, LeakyReLU, ELU, Mish, Sigmoid, Tanh,
  Hardsigmoid, as modules, functions or tensor methods), residual adds (``+``, ``+=``, ``torch.add``,
  ``Tensor.add``) before the activation of their end position.
* **transparent** (ignored; they vanish inside merged blocks): ``nn.Identity``, dropout modules/functions
  (identities in eval), ``Tensor.contiguous``.
* **barriers** at the current position (reason recorded in ``chain.barrier_reasons``): everything else —
  pooling, upsampling/interpolation, padding modules, concat, flatten, linear, multiplications
  (squeeze-excite, attention), custom leaf modules, functional ``F.conv2d``, unsupported convs (non-square,
  dilated, even kernel, non-zero padding mode), BatchNorm not directly after a conv
  (pre-activation layouts), a second activation, a residual add after the activation or from a side
  branch that is neither identity nor conv(+BN), and any value of the chain that is also read outside it
  (feature taps, U-Net skips). A stride > 1 conv adds the stride barrier of SPEC A2.
* **errors** (:class:`UnsupportedModelError`): the model cannot be symbolically traced (data-dependent
  control flow; the message names the innermost module being traced), shape propagation fails, or no
  convolution chain remains ("no convolution chain").

Convs listed in ``exclude`` act as barriers and are left outside the chain; so, automatically, is a conv
isolated between barriers (its only candidate is itself with one option: ResNet's 7x7 stem before the max
pool, MobileNetV2's stride-2 stem). Convs off the main path (side branches) are outside the chain too.
"""
from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import GraphModule, Node
from torch.fx.passes.shape_prop import TensorMetadata, _extract_tensor_metadata

from ..errors import DepthcutError, UnsupportedModelError
from .chain import Activation, Candidate, Chain, ConvSpec, Skip
from .merge import conv_padding

# --------------------------------------------------------------------------------------------------------
# op vocabulary

_ACT_MODULES: list[tuple[type, str]] = [
    (nn.ReLU6, "relu6"), (nn.ReLU, "relu"), (nn.SiLU, "silu"), (nn.Hardswish, "hardswish"), (nn.GELU, "gelu"),
    (nn.LeakyReLU, "leaky_relu"), (nn.ELU, "elu"), (nn.Mish, "mish"), (nn.Sigmoid, "sigmoid"),
    (nn.Tanh, "tanh"), (nn.Hardsigmoid, "hardsigmoid"),
]
_ACT_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu", F.relu6: "relu6",
    F.silu: "silu", F.hardswish: "hardswish", F.gelu: "gelu", F.leaky_relu: "leaky_relu", F.elu: "elu",
    F.mish: "mish", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh",
    F.hardsigmoid: "hardsigmoid",
}
_ACT_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid",
                "tanh": "tanh", "tanh_": "tanh"}
# the same vocabulary, public: what counts as an activation anywhere in depthcut (count_layers too)
ACTIVATION_MODULES: tuple[type, ...] = tuple(m for m, _ in _ACT_MODULES)
ACTIVATION_FUNCTIONS = frozenset(_ACT_FUNCTIONS)
ACTIVATION_METHODS = frozenset(_ACT_METHODS)
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_"}
_TRANSPARENT_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout)
_TRANSPARENT_FUNCTIONS = {F.dropout, F.dropout2d}
_TRANSPARENT_METHODS = {"contiguous"}


def activation_module(kind: str) -> nn.Module:
    """A fresh module for an activation kind found by the analysis (for latency rows and rebuilt blocks)."""
    table = {name: module for module, name in _ACT_MODULES}
    if kind not in table:
        raise DepthcutError(f"unknown activation kind {kind!r}; known: {', '.join(sorted(table))}")
    return table[kind]()


# --------------------------------------------------------------------------------------------------------
# tracing


class _Tracer(torch.fx.Tracer):
    """Default fx tracer that also (a) keeps Conv2d / BatchNorm2d subclasses with the stock forward as leaves
    and (b) remembers which module it is inside, so a tracing failure can name it."""

    def __init__(self, opaque: set[str] | frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.path_stack: list[tuple[str, str]] = []
        self.opaque = opaque          # module paths traced around as single (barrier) ops

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.opaque:
            return True
        if isinstance(m, nn.Conv2d) and type(m).forward is nn.Conv2d.forward:
            return True
        if isinstance(m, nn.BatchNorm2d) and type(m).forward is nn.BatchNorm2d.forward:
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        self.path_stack.append((self.path_of_module(m), type(m).__name__))
        out = super().call_module(m, forward, args, kwargs)
        self.path_stack.pop()    # left in place when tracing raises: the innermost module is then on top
        return out


class _MetaShapeProp(torch.fx.Interpreter):
    """Shape propagation on the meta device: records tensor_meta without computing (a VGG at 224x224 costs
    seconds on a busy CPU otherwise) and without touching the model's parameters or BN statistics."""

    def run_node(self, n: Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            n.meta["tensor_meta"] = _extract_tensor_metadata(result)
        return result

    def call_module(self, target, args, kwargs):
        mod = self.fetch_attr(target)
        x = args[0] if args else None
        # the common layers get their shapes by formula: meta kernels run Python decompositions (~10 ms each)
        if type(mod) is nn.Conv2d and isinstance(x, torch.Tensor) and x.dim() == 4 and not kwargs:
            if x.shape[1] != mod.in_channels:   # the formula would not notice; the real forward below says why
                raise ValueError(f"{target} expects {mod.in_channels} input channels, got {x.shape[1]}")
            shape = _conv_out_shape(mod, tuple(x.shape))
            if min(shape[2:]) < 1:
                raise ValueError(f"{target}: input {tuple(x.shape)} is smaller than the kernel")
            return torch.empty(shape, device="meta", dtype=x.dtype)
        if isinstance(mod, (nn.BatchNorm2d, *_TRANSPARENT_MODULES, *(c for c, _ in _ACT_MODULES))) \
                and isinstance(x, torch.Tensor) and len(args) == 1 and not kwargs:
            return torch.empty_like(x)
        state = {k: v.to("meta") for k, v in [*mod.named_parameters(), *mod.named_buffers()]}
        return torch.func.functional_call(mod, state, args, kwargs)

    def get_attr(self, target, args, kwargs):
        value = super().get_attr(target, args, kwargs)
        return value.to("meta") if isinstance(value, torch.Tensor) else value


def _conv_out_shape(m: nn.Conv2d, shape: tuple[int, ...]) -> tuple[int, ...]:
    n, _, h, w = shape
    if isinstance(m.padding, str):
        if m.padding == "same":
            return (n, m.out_channels, h, w)
        pad = (0, 0)
    else:
        pad = m.padding
    size = [(d + 2 * p - m.dilation[k] * (m.kernel_size[k] - 1) - 1) // m.stride[k] + 1
            for k, (d, p) in enumerate(zip((h, w), pad))]
    return (n, m.out_channels, *size)


def _module_of(node: Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        return list(stack.values())[-1][0]
    return str(node.target) if node.op == "call_module" else "<top level>"


MAX_OPAQUE = 64   # untraceable submodules traced around before giving up


def _trace_graph(model: nn.Module) -> GraphModule:
    """Trace ``model`` (eval mode, canonicalised: see :func:`canonicalize`) with depthcut's tracer. A submodule
    whose forward cannot be traced (data-dependent control flow, Python-side shape arithmetic) is traced
    around: it becomes one opaque call - a barrier - instead of refusing the whole model; the reasons are
    kept in ``gm.meta["depthcut_opaque"]``. Only an untraceable top-level forward is an error."""
    _refuse_hooks(model)
    model = canonicalize(model)
    was_training = model.training
    model.eval()
    opaque: dict[str, str] = {}
    try:
        for _ in range(MAX_OPAQUE + 1):
            tracer = _Tracer(frozenset(opaque))
            try:
                graph = tracer.trace(model)
                break
            except Exception as e:
                path, kind = tracer.path_stack[-1] if tracer.path_stack else ("", type(model).__name__)
                if not path or path in opaque or len(opaque) >= MAX_OPAQUE:
                    where = f"in module '{path or '<root>'}' ({kind})"
                    raise UnsupportedModelError(
                        f"cannot trace {type(model).__name__} with torch.fx {where}: {type(e).__name__}: "
                        f"{(str(e).strip().splitlines() or [''])[0]}. Data-dependent control flow or Python-side "
                        f"tensor inspection in the top-level forward cannot be analysed; rewrite it without "
                        f"them") from e
                opaque[path] = f"{kind}: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"[:200]
    finally:
        model.train(was_training)
    gm = GraphModule(tracer.root, graph, type(model).__name__)
    gm.meta["depthcut_opaque"] = opaque
    return gm


def symbolic_trace(model: nn.Module) -> GraphModule:
    """The torch.fx graph depthcut works on (same tracer, canonicalisation, opaque submodules and node names as
    :func:`trace`), without shape propagation. ``model`` is not modified; the result may share its modules."""
    return _trace_graph(model)


def trace(model: nn.Module, input_shape: tuple[int, ...]) -> GraphModule:
    """Symbolically trace ``model`` (in eval mode) and record every node's output shape for ``input_shape``.

    The returned GraphModule shares its submodules (and weights) with ``model`` unless the model had to be
    canonicalised (then with a copy); the model's train/eval mode is restored afterwards. Raises
    :class:`UnsupportedModelError` naming the module whose forward could not be traced, or the node where shape
    propagation failed.
    """
    was_training = model.training
    gm = _trace_graph(model)
    try:
        _propagate_shapes(gm, tuple(int(d) for d in input_shape))
    finally:
        model.train(was_training)
    gm.train(was_training)
    return gm


def _is_plain_bn(m: nn.Module | None) -> bool:
    """A BatchNorm2d that computes exactly the BN its statistics describe (a subclass with its own forward,
    kept opaque, may do anything else)."""
    return isinstance(m, nn.BatchNorm2d) and type(m).forward is nn.BatchNorm2d.forward


def _is_fused_norm_act(m: nn.Module) -> bool:
    """timm's BatchNormAct2d family: a BatchNorm2d subclass whose own forward runs the norm, then ``drop``,
    then ``act`` (traced through, it would show up as a functional batch_norm barrier)."""
    return (isinstance(m, nn.BatchNorm2d) and type(m).forward is not nn.BatchNorm2d.forward
            and isinstance(getattr(m, "act", None), nn.Module) and m.track_running_stats
            and m.running_mean is not None)


def _plain_norm_act(m: nn.BatchNorm2d) -> nn.Sequential:
    bn = nn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
    bn.load_state_dict({k: v for k, v in m.state_dict().items() if k in bn.state_dict()})
    drop = getattr(m, "drop", None)
    parts = [("bn", bn)] + ([("drop", drop)] if isinstance(drop, nn.Module) else []) + [("act", m.act)]
    from collections import OrderedDict
    return nn.Sequential(OrderedDict(parts)).to(m.running_mean.device).train(m.training)


def _is_stride1_dynamic_same_conv(m: nn.Module) -> bool:
    """timm's Conv2dSame (TF 'SAME' padding computed from the input size in forward): at stride 1 with an
    odd kernel the padding is symmetric, (k-1)/2 per side, i.e. a plain conv with that padding."""
    return (isinstance(m, nn.Conv2d) and type(m).forward is not nn.Conv2d.forward and tuple(m.stride) == (1, 1)
            and tuple(m.dilation) == (1, 1) and m.kernel_size[0] == m.kernel_size[1] and m.kernel_size[0] % 2
            and m.padding_mode == "zeros" and not isinstance(m.padding, str) and tuple(m.padding) == (0, 0)
            # only a conv's own state: a weight-standardised conv (timm's ScaledStdConv2d, its ``gain``) is
            # another op that happens to share the shape
            and set(m.state_dict()) <= {"weight", "bias"})


def _plain_conv(m: nn.Conv2d) -> nn.Conv2d:
    k = m.kernel_size[0]
    conv = nn.Conv2d(m.in_channels, m.out_channels, k, 1, k // 2, groups=m.groups, bias=m.bias is not None,
                     device=m.weight.device, dtype=m.weight.dtype)
    conv.load_state_dict(m.state_dict())
    return conv.train(m.training)


def _is_multibranch_reparam(m: nn.Module) -> bool:
    """A block that sums several parallel kxk conv+BN branches of one input and knows how to fuse them
    (timm's MobileOneBlock: ``num_conv_branches`` kxk branches, a 1x1 scale branch and a BN identity, and a
    ``reparameterize()`` that folds them into one conv). The chain follows depth, so parallel branches of the
    same kernel would each be an unfoldable skip; fused, the block is one conv like any other."""
    branches = getattr(m, "conv_kxk", None)
    return (callable(getattr(m, "reparameterize", None)) and isinstance(branches, nn.ModuleList)
            and len(branches) > 1 and getattr(m, "reparam_conv", 0) is None)


def _reparameterized(m: nn.Module) -> nn.Module:
    import copy

    fused = copy.deepcopy(m).eval()
    with torch.no_grad():
        fused.reparameterize()
    return fused.train(m.training)


def canonicalize(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with modules whose meaning is standard but whose code hides it replaced by the
    standard modules at the same paths: timm's fused BatchNorm + activation (``nn.Sequential(bn=BatchNorm2d,
    [drop], act)``, so the analysis sees a BN it can fold and an activation it can remove), stride-1 dynamic
    'SAME' convs (timm's Conv2dSame, a plain conv with padding (k-1)/2) and multi-branch re-parameterisable
    blocks with several parallel kxk branches (MobileOne: fused by their own ``reparameterize()``; the
    fine-tunes then train the fused conv). Each replacement is checked numerically (eval mode) and skipped if
    it cannot be built or differs: the module then stays as it is (a conv with its own forward is traced
    through, so its ops are barriers). Returns ``model`` itself when there is nothing to replace."""
    return _replace_checked(model, [(_is_multibranch_reparam, _reparameterized),
                                    (_is_fused_norm_act, _plain_norm_act),
                                    (_is_stride1_dynamic_same_conv, _plain_conv)])


def _input_channels(m: nn.Module) -> int:
    """Channels a replaced module reads: a BN's or conv's own, else its first conv's (a fused block)."""
    own = getattr(m, "num_features", None) or getattr(m, "in_channels", None)
    return own or next(c.in_channels for c in m.modules() if isinstance(c, nn.Conv2d))


def _replace_checked(model: nn.Module, rules) -> nn.Module:
    import copy

    todo, replaced = [], []
    for name, m in model.named_modules():
        if not name or any(name.startswith(r + ".") for r in replaced):
            continue           # inside a module already replaced whole (a fused block's branches)
        make = next((make for test, make in rules if test(m)), None)
        if make is not None:
            todo.append((name, make))
            replaced.append(name)
    if not todo:
        return model
    model = copy.deepcopy(model)
    for name, make in todo:
        m = model.get_submodule(name)
        try:
            plain = make(m)
        except Exception:   # noqa: BLE001 - a rule that does not apply: the module stays (traced as it is)
            continue
        p = next(m.parameters(), None) if next(m.buffers(), None) is None else next(m.buffers())
        channels = _input_channels(m)
        # a seeded input: every trace of the same model (analysis, intended function) decides alike
        x = torch.randn(2, channels, 7, 7, generator=torch.Generator().manual_seed(0)).to(
            dtype=p.dtype if p is not None else torch.float32, device=p.device if p is not None else "cpu")
        with torch.no_grad():
            want, got = m.eval()(x), plain.eval()(x)
            # relative: a fused block's weights carry float32 rounding (~1e-7 of the output's scale)
            same = got.shape == want.shape and float((got - want).norm()) <= 1e-5 * float(want.norm()) + 1e-6
        if same:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, plain)
    return model


def _refuse_hooks(model: nn.Module) -> None:
    """Hooks change what a module computes, but a traced graph inlines non-leaf modules (their hooks never
    run) and the rewrite replaces leaf modules (their hooks are lost): the deployed network would silently
    differ. Refuse, naming the first hooked module."""
    from torch.nn.modules import module as module_mod

    for kind in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
        if getattr(module_mod, kind, None):
            raise UnsupportedModelError(f"a global module hook is registered ({kind.strip('_')}); depthcut rewrites "
                                        f"the network and cannot keep hooks: remove it before compressing")
    for name, m in model.named_modules():
        for attr, what in (("_forward_hooks", "forward hook"), ("_forward_pre_hooks", "forward pre-hook"),
                           ("_backward_hooks", "backward hook"), ("_backward_pre_hooks", "backward pre-hook")):
            if getattr(m, attr, None):
                raise UnsupportedModelError(
                    f"module '{name or '<root>'}' ({type(m).__name__}) has a {what}; depthcut rewrites the network "
                    f"and cannot keep hooks (the deployed model would compute something else): remove them "
                    f"(handle.remove()) before compressing and re-register them on the result")


def _propagate_shapes(gm: GraphModule, input_shape: tuple[int, ...]) -> None:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedModelError(f"{gm.__class__.__name__}.forward takes {len(placeholders)} inputs; "
                                    "depthcut analyses models with exactly one image input")
    dtype = next((p.dtype for p in gm.parameters() if p.is_floating_point()), torch.float32)
    try:
        with torch.no_grad():
            _MetaShapeProp(gm).run(torch.empty(input_shape, device="meta", dtype=dtype))
        return
    except Exception:
        pass  # some ops have no meta kernel or mix devices: fall back to a real forward pass
    for n in gm.graph.nodes:
        n.meta.pop("tensor_meta", None)
    try:
        with torch.no_grad():
            device = next((p.device for p in gm.parameters()), torch.device("cpu"))
            _QuietShapeProp(gm).run(torch.randn(input_shape, dtype=dtype, device=device))
    except Exception as e:
        node = getattr(e, "_depthcut_node", None)
        where = f" at node '{node.name}' (module '{_module_of(node)}')" if node is not None else ""
        first_line = (str(e).strip().splitlines() or [""])[0]   # fx appends "While executing ..." lines
        raise UnsupportedModelError(f"the model does not run on input shape {input_shape}{where}: "
                                    f"{type(e).__name__}: {first_line}; pass the shape it expects "
                                    f"(--input-shape N,C,H,W)") from e


class _QuietShapeProp(torch.fx.Interpreter):
    """Real-tensor shape propagation (fallback) that remembers the failing node instead of printing."""

    def run_node(self, n: Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as e:
            if getattr(e, "_depthcut_node", None) is None:
                e._depthcut_node = n
            raise
        if isinstance(result, torch.Tensor):
            n.meta["tensor_meta"] = _extract_tensor_metadata(result)
        return result


# --------------------------------------------------------------------------------------------------------
# node classification


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, Node) else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _tensor_inputs(node: Node) -> list[Node]:
    return [i for i in node.all_input_nodes if _shape(i) is not None]


def _module(gm: GraphModule, node: Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _act_kind(gm: GraphModule, node: Node) -> str | None:
    if node.op == "call_module":
        m = _module(gm, node)
        for cls, kind in _ACT_MODULES:
            if isinstance(m, cls):
                return kind
        if type(m) is nn.Hardtanh and m.min_val == 0.0 and m.max_val == 6.0:
            return "relu6"
    elif node.op == "call_function":
        if node.target in _ACT_FUNCTIONS:
            return _ACT_FUNCTIONS[node.target]
        if node.target is F.hardtanh and node.args[1:3] == (0.0, 6.0):
            return "relu6"
    elif node.op == "call_method":
        return _ACT_METHODS.get(node.target)
    return None


def _is_add(node: Node) -> bool:
    return ((node.op == "call_function" and node.target in _ADD_FUNCTIONS)
            or (node.op == "call_method" and node.target in _ADD_METHODS))


def _is_transparent(gm: GraphModule, node: Node) -> bool:
    return ((node.op == "call_module" and isinstance(_module(gm, node), _TRANSPARENT_MODULES))
            or (node.op == "call_function" and node.target in _TRANSPARENT_FUNCTIONS)
            or (node.op == "call_method" and node.target in _TRANSPARENT_METHODS))


def _describe_op(gm: GraphModule, node: Node) -> str:
    if node.op == "call_module":
        return f"module '{node.target}' ({type(_module(gm, node)).__name__})"
    if node.op == "call_function":
        name = getattr(node.target, "__name__", str(node.target))
        return f"function {name} at node '{node.name}' in '{_module_of(node)}'"
    if node.op == "call_method":
        return f"method .{node.target}() at node '{node.name}' in '{_module_of(node)}'"
    return f"{node.op} '{node.name}'"


def _conv_padding(m: nn.Conv2d) -> int | None:
    try:
        return conv_padding(m)
    except ValueError:
        return None


def _unsupported_conv(m: nn.Conv2d) -> str | None:
    """Why this conv cannot be a chain member (None if it can)."""
    if type(m).forward is not nn.Conv2d.forward:
        return f"{type(m).__name__} has its own forward (e.g. padding computed at run time)"
    kh, kw = m.kernel_size
    if kh != kw:
        return f"non-square kernel {kh}x{kw}"
    if kh % 2 == 0:
        return f"even kernel {kh}x{kw} (no centre tap to merge residuals into)"
    if tuple(m.dilation) != (1, 1):
        return f"dilation {tuple(m.dilation)}"
    if m.stride[0] != m.stride[1]:
        return f"non-square stride {tuple(m.stride)}"
    if m.padding_mode != "zeros":
        return f"padding mode {m.padding_mode!r}"
    if _conv_padding(m) is None:
        return f"unequal padding {tuple(m.padding)}"
    return None


# --------------------------------------------------------------------------------------------------------
# the chain


def _main_path(gm: GraphModule) -> list[Node]:
    """The backbone: backwards from the output, prefer same-shape inputs, then the most convs (SPEC A1)."""
    nodes = list(gm.graph.nodes)
    # (convs, summed kernel extent, nodes) on the deepest way in: the branch with more convs is the main path;
    # between equally deep parallel convs (RepVGG's 3x3 and 1x1) the larger kernel is, so the smaller one
    # becomes a skip that folds into its centre taps
    depth: dict[Node, tuple[int, int, int]] = {}
    for n in nodes:
        base = max((depth[i] for i in _tensor_inputs(n)), default=(0, 0, 0))
        m = _module(gm, n) if n.op == "call_module" else None
        is_conv = isinstance(m, nn.Conv2d)
        depth[n] = (base[0] + int(is_conv), base[1] + (m.kernel_size[0] if is_conv else 0), base[2] + 1)
    n = next(n for n in reversed(nodes) if n.op == "output")
    path: list[Node] = []
    while True:
        ins = _tensor_inputs(n)
        if not ins:
            break
        shape = _shape(n)
        same = [i for i in ins if shape is not None and _shape(i) == shape]
        n = max(same or ins, key=lambda i: depth[i])     # max keeps the first of equals: first argument
        path.append(n)
    return path[::-1]


@dataclass
class _Walk:
    """Mutable state of the forward walk along the main path."""

    gm: GraphModule
    exclude: frozenset[str]
    convs: list[ConvSpec] = field(default_factory=list)
    conv_nodes: list[Node] = field(default_factory=list)
    acts: list[Activation | None] = field(default_factory=lambda: [None])
    skips: list[Skip] = field(default_factory=list)
    barriers: set[int] = field(default_factory=set)
    reasons: dict[int, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    pos_of: dict[Node, int] = field(default_factory=dict)        # main-path node -> position it belongs to
    value_at: dict[int, Node] = field(default_factory=dict)      # position -> node holding its final value
    side_ok: set[Node] = field(default_factory=set)              # off-path users that the chain accounts for
    reads_ok: set[tuple[Node, Node]] = field(default_factory=set)  # (value, reader) pairs of recognised skips
    stage: str = "start"                                         # conv | bn | add | act | barrier

    @property
    def p(self) -> int:
        return len(self.convs)

    def barrier(self, p: int, reason: str) -> None:
        self.stage = "barrier" if p == self.p else self.stage
        if p <= 0:
            return                       # before the chain: nothing to forbid
        if p not in self.barriers:
            self.barriers.add(p)
            self.reasons[p] = reason
        elif reason not in self.reasons[p]:
            self.reasons[p] += "; " + reason


def find_chain(gm: GraphModule, exclude: Sequence[str] = ()) -> Chain:
    """Read the convolution chain of a traced model (see the module docstring for the rules)."""
    conv_paths = {n: m for n, m in gm.named_modules() if isinstance(m, nn.Conv2d)}
    if not conv_paths:
        raise UnsupportedModelError(f"no convolution chain: {gm.__class__.__name__} has no nn.Conv2d")
    unknown = [p for p in exclude if p not in conv_paths]
    if unknown:
        raise DepthcutError(f"exclude lists {unknown} which are not Conv2d modules of {gm.__class__.__name__}")
    excluded = {p: "excluded by the caller" for p in exclude}
    for _ in range(len(conv_paths) + 1):
        chain = _walk(gm, excluded)
        isolated = _isolated_convs(chain)
        if not isolated:
            break
        for c in isolated:
            excluded[c.path] = ("isolated between barriers (its only candidate is itself), "
                                "left outside the chain")
    for path, why in (getattr(gm, "meta", {}) or {}).get("depthcut_opaque", {}).items():
        chain.notes.append(f"{path}: traced around as one opaque op ({why})")
    if chain.length == 0:
        why = "; ".join(sorted(set(chain.notes))) or "no Conv2d on the main path"
        raise UnsupportedModelError(f"no convolution chain in {gm.__class__.__name__}: {why}")
    return chain


def _isolated_convs(chain: Chain) -> list[ConvSpec]:
    bounds = set(chain.barriers) | {0, chain.length}
    return [c for c in chain.convs
            if c.index - 1 in bounds and c.index in bounds
            and not any(s.start < c.index and s.end > c.index - 1 for s in chain.skips)]


def _walk(gm: GraphModule, excluded: dict[str, str]) -> Chain:
    path = _main_path(gm)
    on_path = set(path)
    w = _Walk(gm, frozenset(excluded))
    for k, n in enumerate(path):
        if n.op == "placeholder":
            w.pos_of[n] = 0
            continue
        m = _module(gm, n)
        if isinstance(m, nn.Conv2d):
            _visit_conv(w, n, m, excluded)
        elif _is_plain_bn(m):
            _visit_bn(w, n, m)
        elif _act_kind(gm, n) is not None:
            _visit_act(w, n)
        elif _is_add(n):
            _visit_add(w, n, path[k - 1], on_path)
        elif _is_transparent(gm, n):
            pass
        else:
            w.barrier(w.p, _describe_op(gm, n))
        w.pos_of[n] = w.p

    L = w.p
    _stride_barriers(w)
    _side_use_barriers(w, path)
    for s in range(len(w.skips)):
        w.skips[s] = _with_foldability(w.skips[s], w.convs)
    for name, m in gm.named_modules():
        if isinstance(m, nn.Conv2d) and name not in {c.path for c in w.convs} | set(w.excluded) \
                and name not in {s.projection for s in w.skips}:
            w.excluded.append(name)
            w.notes.append(f"{name}: on a side branch (not on the main path), outside the chain")
    if L:
        first_in = w.conv_nodes[0].args[0]
        kind = _act_kind(gm, first_in) if isinstance(first_in, Node) else None
        if kind is not None:
            w.acts[0] = Activation(kind, first_in.name, first_in.target if first_in.op == "call_module" else None)
    barriers = sorted(b for b in w.barriers if 0 < b < L)
    return Chain(convs=w.convs, acts=w.acts, skips=w.skips, barriers=barriers,
                 barrier_reasons={b: w.reasons[b] for b in barriers}, excluded=w.excluded, notes=w.notes)


def _visit_conv(w: _Walk, n: Node, m: nn.Conv2d, excluded: dict[str, str]) -> None:
    path = n.target
    reason = excluded.get(path) or _unsupported_conv(m)
    if reason is not None:
        if path not in w.excluded:
            w.excluded.append(path)
            w.notes.append(f"{path}: {reason}")
        w.barrier(w.p, f"conv '{path}' outside the chain ({reason})")
        return
    inp = n.args[0]
    w.value_at[w.p] = inp
    w.convs.append(ConvSpec(
        index=w.p + 1, path=path, node=n.name, in_channels=m.in_channels, out_channels=m.out_channels,
        kernel=m.kernel_size[0], stride=m.stride[0], padding=_conv_padding(m), groups=m.groups,
        bias=m.bias is not None, input_shape=_shape(inp) or ()))
    w.conv_nodes.append(n)
    w.acts.append(None)
    w.stage = "conv"


def _visit_bn(w: _Walk, n: Node, m: nn.BatchNorm2d) -> None:
    conv = w.conv_nodes[-1] if w.conv_nodes else None
    if w.stage != "conv" or n.args[0] is not conv or len(conv.users) != 1:
        w.barrier(w.p, f"BatchNorm2d '{n.target}' does not directly follow a chain conv "
                       "(pre-activation layout or shared conv output)")
        return
    if not m.track_running_stats or m.running_mean is None:
        w.barrier(w.p, f"BatchNorm2d '{n.target}' has no running statistics (cannot be folded)")
        return
    w.convs[-1] = dataclasses.replace(w.convs[-1], bn_path=n.target, bn_node=n.name)
    w.stage = "bn"


def _visit_act(w: _Walk, n: Node) -> None:
    if w.p == 0:
        return                     # before the chain; acts[0] is read off the first conv's input at the end
    if w.stage not in ("conv", "bn", "add"):
        w.barrier(w.p, f"activation {_describe_op(w.gm, n)} after {w.stage} at position {w.p}")
        return
    kind = _act_kind(w.gm, n)
    w.acts[w.p] = Activation(kind, n.name, n.target if n.op == "call_module" else None)
    w.stage = "act"


def _visit_add(w: _Walk, n: Node, main: Node, on_path: set[Node]) -> None:
    t = w.p
    if t == 0:
        return
    operands = list(n.args[:2])
    if len(n.args) != 2 or n.kwargs.get("alpha", 1) != 1:
        w.barrier(t, f"add with extra arguments at node '{n.name}'")
        return
    other = operands[1] if operands[0] is main else operands[0]
    if isinstance(other, (int, float)) and not isinstance(other, bool) and other == 0:
        return          # x + 0: MobileOne's sum of branches starts from 0 where a branch is absent
    if not isinstance(other, Node) or _shape(other) != _shape(n):
        w.barrier(t, f"add of a constant or broadcast value at node '{n.name}' ({_module_of(n)})")
        return
    if w.stage == "act":
        w.barrier(t, f"residual add '{n.name}' after the activation of position {t}")
        _branch_barrier(w, other, on_path, n)
        return
    if w.stage == "barrier":
        # An op that is not a chain member (a squeeze-excite gate, a residual scaling, LayerScale, pooling,
        # an excluded or unsupported conv) sits between c_t and the add: a block containing the whole
        # residual would have to absorb it. The skip stays, but can never be folded.
        if not _record_skip(w, n, other, on_path, foldable=False):
            w.barrier(t, f"residual add '{n.name}' whose skip branch is neither identity nor conv(+BN) "
                         f"(ends in {_describe_op(w.gm, other)})")
            _branch_barrier(w, other, on_path, n)
        return
    if not _record_skip(w, n, other, on_path):
        w.barrier(t, f"residual add '{n.name}' whose skip branch is neither identity nor conv(+BN) "
                     f"(ends in {_describe_op(w.gm, other)})")
        _branch_barrier(w, other, on_path, n)


def _record_skip(w: _Walk, n: Node, other: Node, on_path: set[Node], foldable: bool = True) -> bool:
    """Record the add ``n`` as a Skip (s, t) if ``other`` is the value at an earlier position s (identity)
    or that value through a Conv2d (+ BatchNorm2d) (projection). ``foldable=False`` marks a skip no block
    may contain whole. A barrier op right before the add stays a barrier at t (stage unchanged)."""
    t = w.p
    stage = "add" if foldable else w.stage
    if other in on_path:                                   # identity
        s = w.pos_of.get(other, -1)
        if 0 <= s < t and w.value_at.get(s) is other:
            w.skips.append(Skip(s, t, n.name, foldable=foldable))
            w.reads_ok.add((other, n))
            w.stage = stage
            return True
    proj = _projection(w, other)                           # projection: value at s -> conv (-> BN) -> add
    if proj is not None:
        s, conv, bn = proj
        cm = _module(w.gm, conv) if conv is not None else None
        w.skips.append(Skip(s, t, n.name, projection=conv.target if conv is not None else None,
                            projection_bn=bn.target if bn else None,
                            projection_kernel=cm.kernel_size[0] if cm is not None else 1,
                            projection_stride=cm.stride[0] if cm is not None else 1, foldable=foldable))
        w.side_ok.update(x for x in (conv, bn) if x is not None)
        first = conv if conv is not None else bn
        w.reads_ok.add((first.args[0], first))
        w.stage = stage
        return True
    return False


def _projection(w: _Walk, other: Node) -> tuple[int, Node | None, Node | None] | None:
    """(s, conv node or None, BN node or None) when ``other`` is the value at position s through a Conv2d
    (+ BatchNorm2d), or through a BatchNorm2d alone (RepVGG's identity branch: an identity conv + BN),
    possibly followed by transparent ops (identity, dropout: timm's BatchNormAct2d with act=Identity)."""
    bn = None
    while (_is_transparent(w.gm, other) and len(other.users) == 1 and len(other.all_input_nodes) == 1
           and isinstance(other.args[0], Node) and len(other.args[0].users) == 1):
        w.side_ok.add(other)
        other = other.args[0]
    node = other
    if _is_plain_bn(_module(w.gm, node)):
        bn, node = node, node.args[0]
        s = w.pos_of.get(node, -1)
        if isinstance(node, Node) and s >= 0 and w.value_at.get(s) is node and len(other.users) == 1 \
                and _shape(node) == _shape(other) and bn.args[1:] == () and not bn.kwargs:
            return s, None, bn
        if not isinstance(node, Node) or len(node.users) != 1:
            return None
    m = _module(w.gm, node)
    if not isinstance(m, nn.Conv2d) or len(other.users) != 1 or _unsupported_conv(m) is not None:
        return None
    src = node.args[0]
    s = w.pos_of.get(src, -1)
    if s < 0 or w.value_at.get(s) is not src:
        return None
    return s, node, bn


def _branch_barrier(w: _Walk, other: Node, on_path: set[Node], add: Node) -> None:
    """A skip branch we do not understand: forbid blocks that cross where it leaves the chain."""
    seen, stack, sources = set(), [other], set()
    while stack:
        x = stack.pop()
        if x in seen:
            continue
        seen.add(x)
        if x in on_path:
            sources.add(w.pos_of.get(x, 0))
            continue
        stack.extend(x.all_input_nodes)
        w.side_ok.add(x)
    for s in sources:
        w.barrier(s, f"start of the skip branch ending at add '{add.name}'")


def _stride_barriers(w: _Walk) -> None:
    """SPEC A2: after a strided conv only 1x1 convs may follow inside a block (else a dilated kernel)."""
    L = w.p
    for c in w.convs:
        if c.stride == 1 or c.index >= L:
            continue
        nxt = w.convs[c.index]      # c_{p+1}
        p = c.index + 1 if nxt.kernel == 1 else c.index
        why = (f"stride rule: '{c.path}' has stride {c.stride}; "
               + ("only the following 1x1 conv may join its block" if nxt.kernel == 1
                  else f"the next conv '{nxt.path}' has kernel {nxt.kernel}"))
        if p < L:
            before = w.stage
            w.barrier(p, why)
            w.stage = before


def _side_use_barriers(w: _Walk, path: list[Node]) -> None:
    """A value of the chain read by anything but the next op on the path or a recognised skip must survive
    merging: its position becomes a barrier (feature taps, concat inputs, U-Net skips)."""
    before = w.stage
    for k, n in enumerate(path[:-1]):
        p = w.pos_of.get(n, 0)
        if p == 0 or p >= w.p:
            continue
        for u in n.users:
            if u is not path[k + 1] and u not in w.side_ok and (n, u) not in w.reads_ok:
                w.barrier(p, f"value '{n.name}' is also read by {_describe_op(w.gm, u)} outside the chain")
    w.stage = before


def _with_foldability(skip: Skip, convs: list[ConvSpec]) -> Skip:
    """Identity skips fold into a merged kernel; a projection only when it is a plain 1x1 conv with the
    stride of the convs it bypasses (then it lands on the merged kernel's centre tap). A skip already marked
    unfoldable (an op between its last conv and the add) stays so."""
    if skip.projection is None or not skip.foldable:
        return skip
    inner = 1
    for c in convs[skip.start:skip.end]:
        inner *= c.stride
    ok = skip.projection_kernel == 1 and skip.projection_stride == inner
    return dataclasses.replace(skip, foldable=ok)


# --------------------------------------------------------------------------------------------------------
# one-call analysis


@dataclass
class Analysis:
    """Everything ``depthcut analyze`` reports: the traced model, its chain, valid blocks and candidates."""

    gm: GraphModule
    chain: Chain
    blocks: list[tuple[int, int]]
    candidates: list[Candidate]
    input_shape: tuple[int, ...] = ()

    def summary(self) -> dict[str, Any]:
        ch = self.chain
        return {
            "model": self.gm.__class__.__name__,
            "input_shape": list(self.input_shape),
            "positions": ch.length,
            "blocks": len(self.blocks),
            "candidates": len(self.candidates),
            "convs": [c.path for c in ch.convs],
            "barriers": [{"position": b, "reason": ch.barrier_reasons.get(b, "")} for b in ch.barriers],
            "skips": [{"start": s.start, "end": s.end, "projection": s.projection, "foldable": s.foldable}
                      for s in ch.skips],
            "excluded": list(ch.excluded),
            "notes": list(ch.notes),
            "candidate_list": [{"start": c.start, "end": c.end, "kernel": c.kernel, "stride": c.stride,
                                "depthwise": c.depthwise, "kept": list(c.kept)} for c in self.candidates],
        }

    def describe(self) -> str:
        ch = self.chain
        skips_at: dict[int, list[str]] = {}
        for s in ch.skips:
            tag = f"skip {s.start}->{s.end}" + (f" via {s.projection}" if s.projection else "")
            skips_at.setdefault(s.end, []).append(tag + ("" if s.foldable else " (not foldable)"))
        lines = [f"{self.gm.__class__.__name__}  input {tuple(self.input_shape)}  L={ch.length} positions",
                 f"  p=0  act={ch.acts[0].kind if ch.acts[0] else '-'}"]
        for c in ch.convs:
            act = ch.acts[c.index]
            tags = [f"c{c.index} {c.path}", f"{c.in_channels}->{c.out_channels}", f"k{c.kernel}",
                    f"s{c.stride}", "dw" if c.depthwise else "", "bn" if c.bn_path else "",
                    "reducible" if c.reducible else ""]
            lines.append("  " + "  ".join(t for t in tags if t))
            line = f"  p={c.index}  act={act.kind if act else '-'}"
            if c.index in skips_at:
                line += "  " + ", ".join(skips_at[c.index])
            if c.index in ch.barrier_reasons:
                line += f"  BARRIER: {ch.barrier_reasons[c.index]}"
            lines.append(line)
        if ch.excluded:
            lines.append("outside the chain:")
            lines += [f"  {note}" for note in ch.notes]
        lines.append(f"{len(self.blocks)} valid blocks, {len(self.candidates)} candidates (block, kernel option)")
        return "\n".join(lines)


def analyze(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 224, 224), exclude: Sequence[str] = (),
            batch_size: int | None = None) -> Analysis:
    """Trace, find the chain, enumerate valid blocks and (block, kernel option) candidates."""
    from .blocks import enumerate_candidates, valid_blocks

    shape = tuple(input_shape)
    if batch_size is not None:
        shape = (int(batch_size), *shape[1:])
    gm = trace(model, shape)
    chain = find_chain(gm, exclude)
    return Analysis(gm, chain, valid_blocks(chain), enumerate_candidates(chain, gm), shape)
