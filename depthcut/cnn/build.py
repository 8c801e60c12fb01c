"""Replay a plan on a traced model (SPEC A1, A4, A10).

Two forms of the compressed network:

* **unmerged** (``build_unmerged``): every non-trivial block of the plan becomes a :class:`BlockModule` that
  still holds its kept convs and BatchNorms as trainable submodules, with the activations strictly inside the
  block removed, the pruned convs gone, and the *padding shifted*: the first kept conv carries all of the
  block's padding and the later ones none; residual identities inside the block are centre-aligned (zero-padded
  or cropped) to the value they are added to. This is exactly the function the merged conv computes, so
  fine-tuning happens on the deployed function.
* **merged** (``build_merged``): every BlockModule becomes one ``nn.Conv2d`` (BN folded, convs composed,
  skips folded into the centre taps), and every remaining conv -> BatchNorm pair is folded, so the deployed
  network has no BN left.

Both are ``torch.fx.GraphModule``s; blocks are found in the graph through the fx node names recorded in the
:class:`~depthcut.cnn.chain.Chain`.
"""
from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any, Iterable, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import DepthcutError, UnsupportedModelError
from .chain import Candidate, Chain, Plan, Skip
from .graph import ACTIVATION_FUNCTIONS, ACTIVATION_METHODS, ACTIVATION_MODULES
from .merge import ConvParams, conv_padding, from_conv, merge_sequence, regroup, to_module

BLOCK_PREFIX = "dc_block"


# ----------------------------------------------------------------------------------------------------------
# The unmerged, padding-shifted block
# ----------------------------------------------------------------------------------------------------------

class BlockModule(nn.Module):
    """Convs c_{start+1}..c_end of one block, in trainable form.

    ``layers[q-1]`` is (conv, bn or None) for the conv reaching local position q, or None when that conv is
    pruned to identity. ``skips`` are (a, b, projection conv or None, projection bn or None) in local
    positions: the value at a (0 = block input) is added at b. No activation runs inside.
    """

    def __init__(self, layers: Sequence[tuple[nn.Conv2d, nn.Module | None] | None],
                 skips: Sequence[tuple[int, int, nn.Conv2d | None, nn.Module | None]] = (),
                 channels: int | None = None, start: int = 0, end: int = 0):
        super().__init__()
        self.start, self.end, self.channels = start, end, channels
        self.convs, self.bns, self.projections = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        self.slot: list[int] = []            # local position q-1 -> index into convs, -1 = pruned
        for layer in layers:
            if layer is None:
                self.slot.append(-1)
                continue
            conv, bn = layer
            self.slot.append(len(self.convs))
            self.convs.append(conv)
            self.bns.append(bn if bn is not None else nn.Identity())
        self.skip_plan: list[tuple[int, int, int, int]] = []   # (a, b, projection index or -1, crop)
        self._proj_stride: list[int] = []
        self._identity_projection: list[bool] = []     # a BN-only branch: its conv is a fixed identity
        for a, b, proj, proj_bn in skips:
            index = -1
            identity_branch = proj is None and proj_bn is not None
            if identity_branch:                           # a BN-only branch: an identity 1x1 conv, then the BN
                c = proj_bn.num_features
                proj = nn.Conv2d(c, c, 1, bias=False).to(proj_bn.running_mean.device, proj_bn.running_mean.dtype)
                with torch.no_grad():
                    proj.weight.copy_(torch.eye(c, device=proj.weight.device)[:, :, None, None])
                proj.weight.requires_grad_(False)
            if proj is not None:
                if _square(proj.kernel_size) != 1 or conv_padding(proj) != 0:
                    raise ValueError(f"projection {proj} must be a 1x1 conv without padding to be merged")
                index = len(self.projections)
                self.projections.append(nn.Sequential(proj, proj_bn if proj_bn is not None else nn.Identity()))
                self._proj_stride.append(_square(proj.stride))
                self._identity_projection.append(identity_branch)
            self.skip_plan.append((a, b, index, 0))
        self._shift_padding()

    def _shift_padding(self) -> None:
        """Move the whole block's padding (p1 + s1*p2 + s1*s2*p3 ... over the kept convs) to the block input:
        ``forward`` zero-pads x once and every conv runs unpadded. On a block whose first conv is kept this is
        the same as giving that conv all the padding; when the leading convs are pruned it also makes a
        projection skip read the padded frame, so its (BN) bias covers the border exactly as in the merged
        conv (padding the first *kept* conv instead would leave the bias out of the border). Then work out
        how much each skip source must be cropped to line up with the value it is added to."""
        total, scale = 0, 1
        for conv in self.convs:
            total += scale * conv_padding(conv)
            scale *= _square(conv.stride)
        for conv in self.convs:
            conv.padding = (0, 0)
        self.pad = total
        # Footprint (K, S) of every position on the padded input frame X: element o reads X[o*S : o*S + K].
        foot = [(1, 1)]
        for k in self.slot:
            K, S = foot[-1]
            if k >= 0:
                conv = self.convs[k]
                kernel, stride = _square(conv.kernel_size), _square(conv.stride)
                K, S = K + (kernel - 1) * S, S * stride
            foot.append((K, S))
        # A skip source is cropped by (Kb - Ka) / (2 Sa) of its own pixels so that centres coincide; the crop
        # happens *before* a projection, which then reads the same padded frame as the main path.
        plan = []
        for a, b, index, _ in self.skip_plan:
            (Ka, Sa), (Kb, Sb) = foot[a], foot[b]
            step = self._proj_stride[index] if index >= 0 else 1
            if Sa * step != Sb or (Kb - Ka) % (2 * Sa):
                raise ValueError(f"skip {a}->{b} of block ({self.start}, {self.end}) cannot be centre-aligned "
                                 f"(footprints {Ka}/{Sa} vs {Kb}/{Sb})")
            plan.append((a, b, index, (Kb - Ka) // (2 * Sa)))
        self.skip_plan = plan
        self.footprints = foot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sources = {a for a, _, _, _ in self.skip_plan}
        y = F.pad(x, [self.pad] * 4) if self.pad else x
        values = {0: y}
        for q, k in enumerate(self.slot, start=1):
            if k >= 0:
                y = self.bns[k](self.convs[k](y))
            for a, b, index, crop in self.skip_plan:
                if b == q:
                    s = F.pad(values[a], [-crop] * 4) if crop else values[a]   # negative padding crops
                    y = y + (s if index < 0 else self.projections[index](s))
            if q in sources:
                values[q] = y
        return y

    def merged_params(self) -> ConvParams:
        """The single affine conv equal to this block in eval mode (BN running statistics)."""
        layers = [None if k < 0 else from_conv(self.convs[k], _bn(self.bns[k])) for k in self.slot]
        skips = []
        for a, b, index, _ in self.skip_plan:
            proj = None
            if index >= 0:
                conv, bn = self.projections[index]
                proj = from_conv(conv, _bn(bn))
            skips.append((a, b, proj))
        merged = merge_sequence(layers, skips, channels=self.channels)   # every part unpadded ...
        return replace(merged, padding=self.pad)                          # ... on the padded input

    @property
    def merged_groups(self) -> int:
        """Groups of the merged conv: gcd of the kept convs' groups; a folded projection conv makes it dense
        (depthcut.cnn.blocks.merged_groups, the same rule the latency rows use)."""
        dense = any(index >= 0 and not self._identity_projection[index] for _, _, index, _ in self.skip_plan)
        g = 0
        for conv in self.convs:
            g = math.gcd(g, conv.groups)
        return 1 if dense or g == 0 else g

    def extra_repr(self) -> str:
        return f"block=({self.start}, {self.end}), kept={self.slot}, skips={self.skip_plan}"


def _bn(m: nn.Module) -> nn.Module | None:
    return None if isinstance(m, nn.Identity) else m


def _square(v) -> int:
    if isinstance(v, int):
        return v
    if isinstance(v, str) or v[0] != v[1]:
        raise ValueError(f"only square integer kernel/stride/padding are supported, got {v!r}")
    return int(v[0])


# ----------------------------------------------------------------------------------------------------------
# Plans
# ----------------------------------------------------------------------------------------------------------

def original_candidate(chain: Chain, p: int) -> Candidate:
    """The trivial block (p-1, p) that keeps c_p as it is (with its activation)."""
    c = chain.conv(p)
    act = chain.acts[p] if p < len(chain.acts) else None
    return Candidate(start=p - 1, end=p, kept=(p,), kernel=c.kernel, stride=c.stride, depthwise=c.depthwise,
                     groups=c.groups,
                     in_channels=c.in_channels, out_channels=c.out_channels, input_shape=tuple(c.input_shape),
                     activation=act.kind if act is not None else None)


def is_trivial(candidate: Candidate) -> bool:
    return candidate.end == candidate.start + 1 and tuple(candidate.kept) == (candidate.end,)


def identity_plan(chain: Chain) -> Plan:
    """Every conv its own block: replays to the original network."""
    return Plan([original_candidate(chain, p) for p in range(1, chain.length + 1)],
                [c.path for c in chain.convs])


def plan_from_blocks(chain: Chain, candidates: Iterable[Candidate]) -> Plan:
    """A plan from the chosen candidates (any order); raises DepthcutError if they do not partition 0..L."""
    plan = Plan(sorted(candidates, key=lambda c: c.start), [c.path for c in chain.convs])
    try:
        plan.validate()
    except ValueError as e:
        raise DepthcutError(f"invalid plan: {e}") from None
    return plan


def plan_changing(chain: Chain, candidates: Iterable[Candidate]) -> Plan:
    """Apply only ``candidates`` (non-overlapping blocks); every other conv stays its own (original) block."""
    candidates = list(candidates)
    covered = {p for c in candidates for p in range(c.start + 1, c.end + 1)}
    return plan_from_blocks(chain, candidates + [original_candidate(chain, p) for p in range(1, chain.length + 1)
                                                 if p not in covered])


def single_block_plan(chain: Chain, candidate: Candidate) -> Plan:
    """Apply only ``candidate``; every other conv stays its own (original) block (importance, SPEC A6)."""
    return plan_changing(chain, [candidate])


def check_plan(chain: Chain, plan: Plan) -> None:
    """The plan was made for this chain: same conv paths, and a partition of 0..L."""
    paths = [c.path for c in chain.convs]
    for n, (want, have) in enumerate(zip(plan.conv_paths, paths), start=1):
        if want != have:
            raise DepthcutError(f"plan does not match the model: chain conv c_{n} is {have!r}, the plan expects "
                                f"{want!r}")
    if len(plan.conv_paths) != len(paths):
        n = min(len(paths), len(plan.conv_paths))
        first = plan.conv_paths[n] if len(plan.conv_paths) > n else paths[n]
        raise DepthcutError(f"plan does not match the model: plan has {len(plan.conv_paths)} chain convs, the "
                            f"model {len(paths)} (first unmatched path {first!r})")
    try:
        plan.validate()
    except ValueError as e:
        raise DepthcutError(f"invalid plan: {e}") from None


# ----------------------------------------------------------------------------------------------------------
# Graph surgery
# ----------------------------------------------------------------------------------------------------------

def _as_graph_module(model: nn.Module, share_weights: bool = False) -> fx.GraphModule:
    if isinstance(model, fx.GraphModule):
        if not share_weights:
            return copy.deepcopy(model)
        # a copy of the graph over the same modules: fx installs each called module itself, under fresh
        # containers, so rewiring and dropping nodes leaves the model as it was (its modules are not copied)
        gm = fx.GraphModule(model, copy.deepcopy(model.graph), type(model).__name__)
        gm.training = model.training            # (the flag alone: .train() would reach the shared modules)
        return gm
    from .graph import symbolic_trace

    try:
        return symbolic_trace(copy.deepcopy(model))
    except UnsupportedModelError:
        raise
    except Exception as e:  # noqa: BLE001 - any tracing failure is the user's model
        raise UnsupportedModelError(f"cannot trace {type(model).__name__} with torch.fx: {e}") from None


def _contained_skips(chain: Chain, start: int, end: int) -> list[Skip]:
    inside = []
    for s in chain.skips:
        if s.folded_by(start, end):
            inside.append(s)
        elif start <= s.start and s.end <= end and (start, end) != (s.start, s.end):
            raise DepthcutError(f"block ({start}, {end}) contains the residual ({s.start}, {s.end}) added at "
                                f"{s.add_node}, which cannot be folded (projection {s.projection}, or an op "
                                f"before the add)")
        elif start < s.end and s.start < end and not (s.start <= start and end <= s.end):
            raise DepthcutError(f"block ({start}, {end}) partially covers the residual ({s.start}, {s.end}) "
                                f"added at {s.add_node}")
    return inside


def _replace_block(gm: fx.GraphModule, chain: Chain, block: Candidate, forbidden: set[str]) -> None:
    """Swap the nodes of one block for a single BlockModule call (or a plain wire for an identity block)."""
    nodes = {n.name: n for n in gm.graph.nodes}
    start, end = block.start, block.end
    specs = chain.convs[start:end]
    if any(not start < k <= end for k in block.kept):
        raise DepthcutError(f"block {block.key}: kept convs {block.kept} lie outside c_{start + 1}..c_{end}")
    for spec in specs:
        if spec.node not in nodes:
            raise DepthcutError(f"conv {spec.path} (fx node {spec.node}) is not in the traced graph; was the plan "
                                f"made for another model?")
    skips = _contained_skips(chain, start, end)
    first = nodes[specs[0].node]
    block_input = first.args[0]
    # The block's output: the last contained add at `end`, else the conv (BN) of c_end.
    ends_here = [nodes[s.add_node] for s in skips if s.end == end]
    if ends_here:
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        out = max(ends_here, key=order.get)
    else:
        out = nodes[specs[-1].bn_node or specs[-1].node]

    layers: list[tuple[nn.Conv2d, nn.Module | None] | None] = []
    for p, spec in zip(range(start + 1, end + 1), specs):
        if p not in block.kept:
            layers.append(None)
            continue
        conv = copy.deepcopy(gm.get_submodule(spec.path))
        bn = copy.deepcopy(gm.get_submodule(spec.bn_path)) if spec.bn_path else None
        layers.append((conv, bn))
    local_skips = []
    for s in skips:
        proj = copy.deepcopy(gm.get_submodule(s.projection)) if s.projection else None
        proj_bn = copy.deepcopy(gm.get_submodule(s.projection_bn)) if s.projection_bn else None
        local_skips.append((s.start - start, s.end - start, proj, proj_bn))

    if not block.kept and not local_skips:
        new: fx.Node = block_input                   # every conv pruned: the block is the identity
    else:
        try:
            module = BlockModule(layers, local_skips, channels=specs[0].in_channels, start=start, end=end)
        except ValueError as e:
            raise DepthcutError(f"block {block.key} ({specs[0].path}..{specs[-1].path}) cannot be built: {e}") \
                from None
        name = f"{BLOCK_PREFIX}_{start}_{end}"
        gm.add_submodule(name, module)
        with gm.graph.inserting_before(out):
            new = gm.graph.call_module(name, (block_input,))
    out.replace_all_uses_with(new)
    _erase_dead(gm, out, forbidden | _non_members(gm, chain, block, specs, skips), block)
    left = [spec.path for spec in specs if spec.node in {n.name for n in gm.graph.nodes}]
    if left:
        raise UnsupportedModelError(f"block {block.key}: conv {left[0]} is still used outside the block "
                                    f"(its output feeds another branch), so the block cannot be merged")


def _erase_dead(gm: fx.GraphModule, root: fx.Node, forbidden: set[str], block: Candidate) -> None:
    """Erase ``root`` and, transitively, every input left without users (the block's interior)."""
    stack, erased = [root], set()
    while stack:
        n = stack.pop()
        if n in erased or n.users or n.op in ("placeholder", "output"):
            continue
        if n.name in forbidden:
            raise UnsupportedModelError(f"replacing block {block.key} would drop node {n.name} "
                                        f"({n.op} {getattr(n.target, '__name__', n.target)}), which is not a "
                                        f"member of the block")
        inputs = n.all_input_nodes
        gm.graph.erase_node(n)
        erased.add(n)
        stack.extend(inputs)


def _non_members(gm: fx.GraphModule, chain: Chain, block: Candidate, specs, skips: list[Skip]) -> set[str]:
    """Every node of the graph that is not a member of ``block``: the rewrite may erase only the block's convs
    and BNs, its interior activations, its contained residual adds with their projections, and transparent
    ops (identity, dropout). Anything else between its input and output (an SE gate, a scaling) is an op the
    analysis should have kept out of the block; erasing it would deploy a wrong function."""
    from .graph import _is_transparent

    members = {spec.node for spec in specs} | {spec.bn_node for spec in specs if spec.bn_node}
    members |= {chain.acts[p].node for p in range(block.start + 1, block.end) if chain.acts[p] is not None}
    members |= {s.add_node for s in skips}
    paths = {s.projection for s in skips} | {s.projection_bn for s in skips}
    members |= {n.name for n in gm.graph.nodes if n.op == "call_module" and n.target in paths}
    return {n.name for n in gm.graph.nodes if n.name not in members and not _is_transparent(gm, n)}


def _forbidden_nodes(chain: Chain, block: Candidate) -> set[str]:
    """Nodes that a block's replacement must never erase: everything of the chain outside the block."""
    names = {c.node for c in chain.convs[:block.start] + chain.convs[block.end:]}
    names |= {c.bn_node for c in chain.convs[:block.start] + chain.convs[block.end:] if c.bn_node}
    names |= {a.node for p, a in enumerate(chain.acts) if a is not None and not block.start < p < block.end}
    names |= {s.add_node for s in chain.skips if not s.folded_by(block.start, block.end)}
    return names


def build_unmerged(model: nn.Module, chain: Chain, plan: Plan, share_weights: bool = False) -> fx.GraphModule:
    """The trainable, padding-shifted form of ``plan`` on ``model`` (a traced GraphModule or the original
    nn.Module, which is then traced with ``torch.fx.symbolic_trace``). The input is never modified.

    ``share_weights`` (a GraphModule ``model``): the modules outside the plan's blocks are ``model``'s own,
    not copies - for evaluating a candidate without changing any weight or statistic (the cheap importance
    score), where copying the whole network was a sixth of its time. Training it trains ``model``."""
    check_plan(chain, plan)
    share_weights = share_weights and isinstance(model, fx.GraphModule)
    gm = _as_graph_module(model, share_weights)
    for block in plan.blocks:
        if not is_trivial(block):
            _replace_block(gm, chain, block, _forbidden_nodes(chain, block))
    if not share_weights:       # (deleting a module a shared one holds would change the model)
        gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return gm


def fold_batchnorms(gm: fx.GraphModule) -> int:
    """Fold every ``Conv2d -> BatchNorm2d`` pair of call_module nodes (the conv feeding only the BN) into
    one conv with bias. Returns how many were folded."""
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or type(gm.get_submodule(node.target)).forward is not nn.BatchNorm2d.forward:
            continue            # (a BatchNorm2d subclass with its own forward, e.g. a fused BN + act, is not a BN)
        src = node.args[0]
        # only a stock Conv2d: a subclass with its own forward (timm's Conv2dSame pads at run time) is not
        # the affine map its weights describe
        if not (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1
                and type(gm.get_submodule(src.target)).forward is nn.Conv2d.forward):
            continue
        conv, bn = gm.get_submodule(src.target), gm.get_submodule(node.target)
        try:
            params = from_conv(conv, bn)
        except ValueError:
            continue
        if sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == src.target) > 1:
            continue   # a conv module called twice cannot take one BN's statistics
        gm.add_submodule(src.target, to_module(params, conv.weight.dtype, detect_depthwise=False))
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded += 1
    return folded


def build_merged(unmerged: nn.Module, chain: Chain | None = None, plan: Plan | None = None) -> fx.GraphModule:
    """The deployed form: every BlockModule becomes one ``nn.Conv2d`` and every conv -> BN pair is folded.
    Uses BN running statistics (inference semantics); the result is in eval mode, on ``unmerged``'s device.
    The kernel algebra runs on the CPU (float64), whatever device the network lives on."""
    if chain is not None and plan is not None:
        check_plan(chain, plan)
    device = next((p.device for p in unmerged.parameters()), torch.device("cpu"))
    gm = _as_graph_module(unmerged).cpu()
    default_dtype = next((p.dtype for p in gm.parameters() if p.is_floating_point()), torch.float32)
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), BlockModule):
            block: BlockModule = gm.get_submodule(node.target)
            dtype = next((p.dtype for p in block.parameters() if p.is_floating_point()), default_dtype)
            # the structure follows the block (merged_groups, the latency row's rule), never the weights'
            # values: timm zero-initialises each residual block's last BatchNorm, so an untrained block's
            # merged kernel is exactly diagonal and would come out depthwise, then dense after recovery - the
            # landing would time a cheaper network than the one deployed (issue 33: x1.12 probed, x0.92 final)
            params = regroup(block.merged_params(), block.merged_groups)
            gm.add_submodule(node.target, to_module(params, dtype, detect_depthwise=False))
    fold_batchnorms(gm)
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return gm.to(device).eval()


# ----------------------------------------------------------------------------------------------------------
# Replay
# ----------------------------------------------------------------------------------------------------------

def replay(model: nn.Module, plan_json: str | Plan, input_shape: Sequence[int],
           exclude: Sequence[str] | None = None, merged: bool = True) -> fx.GraphModule:
    """Rebuild the compressed network of a saved plan on the original ``model``: trace it, find its chain,
    check the plan was made for it (DepthcutError naming the first mismatching conv path), build.

    ``exclude`` are conv paths kept outside the chain (as given to the analysis); when None it is taken from
    ``plan.meta["exclude"]`` or, failing that, inferred as the chain convs the plan does not list."""
    from .graph import find_chain, trace

    try:
        plan = plan_json if isinstance(plan_json, Plan) else Plan.from_json(plan_json)
    except (ValueError, KeyError, TypeError) as e:
        raise DepthcutError(f"cannot read the plan: {e}") from None
    if exclude is None:
        exclude = plan.meta.get("exclude")
    gm = trace(model, tuple(input_shape))
    chain = find_chain(gm, tuple(exclude or ()))
    paths = [c.path for c in chain.convs]
    if exclude is None and paths != plan.conv_paths and set(plan.conv_paths) < set(paths):
        # the plan lists a subset of this chain's convs: the others were excluded when it was made
        chain = find_chain(gm, tuple(p for p in paths if p not in set(plan.conv_paths)))
    check_plan(chain, plan)
    unmerged = build_unmerged(gm, chain, plan)
    return build_merged(unmerged.eval(), chain, plan) if merged else unmerged


# ----------------------------------------------------------------------------------------------------------
# Statistics for reports
# ----------------------------------------------------------------------------------------------------------

COUNTED_ACTIVATIONS = ACTIVATION_MODULES + (nn.PReLU,)    # the analysis's activations, and PReLU (a barrier there)


def count_layers(model: nn.Module, input_shape: Sequence[int] = (1, 3, 224, 224)) -> dict[str, int]:
    """Convs and activations executed, parameters, and multiply-accumulates of one forward pass on an input
    of ``input_shape`` (conv and linear layers only)."""
    counts: dict[str, Any] = {"convs": 0, "activations": 0, "macs": 0}

    def on_conv(m: nn.Conv2d, inputs, output) -> None:
        counts["convs"] += 1
        kh, kw = m.kernel_size
        counts["macs"] += output.numel() * (m.in_channels // m.groups) * kh * kw

    def on_linear(m: nn.Linear, inputs, output) -> None:
        counts["macs"] += output.numel() * m.in_features

    def on_act(m, inputs, output) -> None:
        counts["activations"] += 1

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(on_conv))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(on_linear))
        elif isinstance(m, COUNTED_ACTIVATIONS):
            hooks.append(m.register_forward_hook(on_act))
    # Functional activations are invisible to hooks; in a GraphModule they are nodes we can count.
    if isinstance(model, fx.GraphModule):
        counts["activations"] += sum(
            1 for n in model.graph.nodes
            if (n.op == "call_function" and n.target in ACTIVATION_FUNCTIONS)
            or (n.op == "call_method" and n.target in ACTIVATION_METHODS))
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        x = torch.randn(tuple(input_shape), dtype=param.dtype if param is not None else torch.float32,
                        device=param.device if param is not None else "cpu")
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    counts["params"] = sum(p.numel() for p in model.parameters())
    return counts
