"""The intended function of a plan, built independently of the rewrite, and the check against it (SPEC A4).

The network depthcut deploys must be the original network with *only* the plan's changes: activations strictly
inside a block removed, pruned convs (with their BatchNorm) removed, and each block's padding moved to the
block's input. ``depthcut.cnn.build`` produces it by a rewrite (BlockModule, footprints, kernel algebra), and
merged == unmerged only checks that rewrite against itself: an op the rewrite deletes in both forms (a
squeeze-excite gate, a residual scaling) passes. This module builds the same function another way — by
editing a fresh torch.fx trace of the *original* model node by node, keeping every op it does not have to
touch — and compares:

* pruned conv -> its output node is rewired to the conv's input (the BN goes with it);
* activation strictly inside a block -> rewired to its input;
* padding moved: the block's input gets one ``F.pad`` of T = p1 + s1*p2 + s1*s2*p3 + ... (over the kept
  convs), read by the block's own nodes only, and the kept convs run unpadded;
* residual adds inside a block: the operands are centre-cropped to a common size (a projection's input is
  cropped before the projection, so it reads the same padded frame), with sizes read off the tensors at run
  time instead of computed from footprints.

Two checks, both in float64 (so no math mode - TF32, reduced-precision reductions - can make a correct merge
look wrong or a wrong one look right):

* :func:`plan_structure_errors` / :func:`structure_ok`: the rewrite with rounding taken out (merged kernels
  kept in float64): every block exact to :data:`STRUCTURE_TOLERANCE`. A failure is a depthcut bug.
* :func:`check_deployed`: the network that will be deployed, its merged kernels rounded to the model's dtype
  once. Its error is judged against a *control*, the intended network's own float32-vs-float64 difference
  (:func:`float32_control`): ``depthcut.compress`` refuses a plan whose deployed error is above
  ``max(TOLERANCE, CONTROL_MARGIN x control)`` (:func:`allowed_error`). On a trained network the control is
  ~1e-7, so the bar is :data:`TOLERANCE` (1e-5); on a badly conditioned one (random-weight timm seresnet50,
  efficientnet_b1: the intended network's float32 output is 1e-3 to 4e-2 from its float64 one) no float32
  network can be closer than that, and a bar of 1e-5 would refuse sound plans.

BORDERS. A merged block pads once, at its input (SPEC A4: the padding moves to the block's first conv), so at
the borders it computes something else than the original convs, each padding its own input: the intended
function is the original with the padding *moved*, and that is what is fine-tuned and deployed (exactly). The
difference to the original padding stays within a few pixels of the border, unless a global operation comes
after the block: squeeze-excite's average pool spreads it over the interior (an SE-ResNet block: relative
9e-4 at 24x24, 1.1e-4 at 192x192). Recovery absorbs it; :func:`check_deployed` reports it as ``borders``.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import DepthcutError
from .chain import Chain, Plan
from .merge import conv_padding

# float64 on both sides; the deployed weights were rounded to the model's dtype once: ~1e-7 relative for
# float32, ~1e-4 for float16 (eps 1e-3), ~1e-3 for bfloat16 (eps 8e-3). A deleted op costs far more.
TOLERANCE = 1e-5
TOLERANCE_BY_DTYPE = {torch.float16: 2e-3, torch.bfloat16: 2e-2}


def tolerance_for(model: nn.Module) -> float:
    """The verification tolerance for a model's parameter dtype."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return TOLERANCE_BY_DTYPE.get(dtype, TOLERANCE)


def centre_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The centred ``height`` x ``width`` window of ``x`` (the left/top margin is the floor of half the
    difference, which is where a strided conv's first output is centred)."""
    top, left = (x.shape[-2] - height) // 2, (x.shape[-1] - width) // 2
    if top < 0 or left < 0:
        raise ValueError(f"cannot crop {tuple(x.shape[-2:])} to {height}x{width}")
    return x[..., top:top + height, left:left + width]


def crop_to_match(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a`` centre-cropped to ``b``'s spatial size when it is larger, else ``a`` (the operands of an add
    inside a block: applied to both, the larger one is cropped)."""
    if a.shape[-2] > b.shape[-2] or a.shape[-1] > b.shape[-1]:
        return centre_crop(a, min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    return a


def crop_for_projection(src: torch.Tensor, target: torch.Tensor, stride: int) -> torch.Tensor:
    """The window of ``src`` a stride-``stride`` 1x1 projection maps onto ``target``'s spatial size."""
    h, w = (target.shape[-2] - 1) * stride + 1, (target.shape[-1] - 1) * stride + 1
    return centre_crop(src, h, w) if src.shape[-2:] != (h, w) else src


def intended_network(model: nn.Module, chain: Chain, plan: Plan, input_shape: Sequence[int],
                     move_padding: bool = True) -> fx.GraphModule:
    """The original ``model`` with only ``plan``'s changes (module docstring), as a GraphModule sharing no
    state with ``model``. BatchNorms stay as they are (they run in whatever mode the result is put in).
    ``move_padding=False``: the same removals with every conv keeping its own padding - not what a merged
    block can compute at its borders, but what a user's original network does there (see BORDERS)."""
    from .build import is_trivial
    from .graph import trace

    gm = trace(copy.deepcopy(model).eval(), tuple(input_shape))
    nodes = {n.name: n for n in gm.graph.nodes}
    missing = [c.node for c in chain.convs if c.node not in nodes]
    if missing:
        raise DepthcutError(f"the plan's chain does not match this model's graph (no node {missing[0]!r})")
    boundaries: dict[tuple[int, int], tuple[str, str]] = {}
    for block in plan.blocks:
        if not is_trivial(block):
            boundaries[(block.start, block.end)] = _apply_block(gm, nodes, chain, block, move_padding)
    gm.meta["depthcut_blocks"] = boundaries      # (start, end) -> (input node, output node): local checks
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm


def _apply_block(gm: fx.GraphModule, nodes: dict[str, fx.Node], chain: Chain, block,
                 move_padding: bool = True) -> tuple[str, str]:
    """Edit one block in place; returns the names of its input node and of the node holding its output."""
    start, end = block.start, block.end
    specs = chain.convs[start:end]
    block_input = nodes[specs[0].node].args[0]
    contained = [s for s in chain.skips if s.folded_by(start, end)]
    # the value at `end` (before its activation): the last contained add ending there, else c_end's output
    ends_here = [nodes[s.add_node] for s in contained if s.end == end]
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    out = max(ends_here, key=order.get) if ends_here else nodes[specs[-1].bn_node or specs[-1].node]

    # 1. pruned convs (and their BN) and 2. interior activations become wires
    for p, spec in zip(range(start + 1, end + 1), specs):
        if p not in block.kept:
            last = nodes[spec.bn_node or spec.node]
            out = _wire(last, nodes[spec.node].args[0], out)
    for p in range(start + 1, end):
        act = chain.acts[p]
        if act is not None:
            node = nodes[act.node]
            out = _wire(node, node.args[0], out)

    if not move_padding:
        return block_input.name, out.name
    # 3. padding moved to the block input and 4. residual adds inside the block centre-cropped
    _pad_block_input(gm, [spec for p, spec in zip(range(start + 1, end + 1), specs) if p in block.kept],
                     block_input, out, order)
    _crop_residuals(gm, nodes, contained)
    return block_input.name, out.name


def _pad_block_input(gm: fx.GraphModule, kept: list, block_input: fx.Node, out: fx.Node,
                     order: dict[fx.Node, int]) -> None:
    """The kept convs' padding as one pad of the block input (T over them), the convs then unpadded."""
    total, scale = 0, 1
    for spec in kept:
        conv = gm.get_submodule(spec.path)
        total += scale * conv_padding(conv)
        scale *= conv.stride[0]
        conv.padding = (0, 0)
    if not total:
        return
    members = _between(block_input, out)
    first_member = min(members, key=order.get) if members else out
    with gm.graph.inserting_before(first_member):
        padded = gm.graph.call_function(F.pad, (block_input, [total] * 4))
    for user in list(block_input.users):
        if user in members:
            user.replace_input_with(block_input, padded)


def _crop_residuals(gm: fx.GraphModule, nodes: dict[str, fx.Node], contained: list) -> None:
    """Centre-crop the operands of the residual adds inside a block (the unpadded main path is smaller);
    a projection shortcut crops its input first, then re-runs its own ops."""
    projections = {s.add_node: s for s in contained if s.projection}
    for add in (nodes[s.add_node] for s in contained):
        skip = projections.get(add.name)
        a, b = add.args[:2]
        if skip is None:
            with gm.graph.inserting_before(add):
                a2 = gm.graph.call_function(crop_to_match, (a, b))
                b2 = gm.graph.call_function(crop_to_match, (b, a2))
            add.args = (a2, b2, *add.args[2:])
            continue
        proj_node = nodes[_node_of(gm, skip.projection)]
        branch = a if _reaches(a, proj_node) else b          # the operand computed from the projection
        main = b if branch is a else a
        stride = gm.get_submodule(skip.projection).stride[0]
        with gm.graph.inserting_before(add):
            src = gm.graph.call_function(crop_for_projection, (proj_node.args[0], main, stride))
            new = gm.graph.call_module(skip.projection, (src,))
            # re-run the projection's own ops (its BN, transparent ops) on the cropped input, in order
            for op in _chain_between(proj_node, branch):
                new = gm.graph.node_copy(op, lambda n, new=new, op=op: new if n is op.args[0] else n)
        add.replace_input_with(branch, new)


def _reaches(node: fx.Node, target: fx.Node) -> bool:
    """``node`` is ``target`` or computed from it through single-input ops."""
    while True:
        if node is target:
            return True
        inputs = node.all_input_nodes
        if len(inputs) != 1:
            return False
        node = inputs[0]


def _chain_between(start: fx.Node, end: fx.Node) -> list[fx.Node]:
    """The single-input ops after ``start`` up to ``end`` (inclusive), in execution order."""
    ops = []
    while end is not start:
        ops.append(end)
        end = end.all_input_nodes[0]
    return ops[::-1]


def _wire(node: fx.Node, replacement: fx.Node, out: fx.Node) -> fx.Node:
    """Rewire every use of ``node`` to ``replacement``; returns the block output after the change."""
    node.replace_all_uses_with(replacement)
    return replacement if node is out else out


def _between(source: fx.Node, sink: fx.Node) -> set[fx.Node]:
    """Nodes that depend on ``source`` and that ``sink`` depends on (``sink`` included): the block's ops."""
    up, stack = set(), [sink]
    while stack:
        n = stack.pop()
        if n in up or n is source:
            continue
        up.add(n)
        stack.extend(n.all_input_nodes)
    down, stack = set(), [u for u in source.users]
    while stack:
        n = stack.pop()
        if n in down or n not in up:
            continue
        down.add(n)
        stack.extend(n.users)
    return down


def _node_of(gm: fx.GraphModule, module_path: str | None) -> str | None:
    if module_path is None:
        return None
    for n in gm.graph.nodes:
        if n.op == "call_module" and n.target == module_path:
            return n.name
    return None


STRUCTURE_TOLERANCE = 1e-9   # float64 end to end: a correct rewrite agrees to ~1e-14 block by block
SENSITIVITY_EPS = 1e-12      # relative perturbation used to measure how the network amplifies rounding


class _Capture(fx.Interpreter):
    """Runs a GraphModule, keeping the values of the named nodes (optionally perturbing them first)."""

    def __init__(self, gm: fx.GraphModule, names: set[str], perturb: float = 0.0, seed: int = 0):
        super().__init__(gm)
        self.names, self.perturb, self.values = names, perturb, {}
        self.gen = torch.Generator().manual_seed(seed)

    def run_node(self, n: fx.Node):
        value = super().run_node(n)
        if n.name in self.names and isinstance(value, torch.Tensor):
            if self.perturb:
                noise = torch.randn(value.shape, generator=self.gen, dtype=value.dtype).to(value.device)
                value = value * (1 + self.perturb * noise)
            self.values[n.name] = value.clone()   # a later in-place op (``x += skip``) must not change it
        return value


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@torch.no_grad()
def plan_structure_errors(model: nn.Module, traced: nn.Module, chain: Chain, plan: Plan,
                          input_shape: Sequence[int], samples: int = 2, seed: int = 0) -> dict[str, float]:
    """The rewrite's exactness with rounding taken out, in float64 end to end (merged kernels never rounded
    to float32), against the intended function:

    * ``blocks``: the largest relative error of one block - the deployed block module run on the intended
      network's own block input, against the intended block output. Local, so no amplification: a correct
      block agrees to ~1e-15.
    * ``unmerged`` / ``merged``: whole-network relative errors. Random-weight networks can amplify float64
      rounding by 1e7 or more; ``allowed`` is what rounding of the size of the block errors can explain,
      measured by perturbing the intended network's block outputs (100x margin). An op deleted or misplaced
      outside the blocks (an SE gate, a scaling) costs ~1e-1, far above it.

    :func:`structure_ok` applies both criteria."""
    from .build import BLOCK_PREFIX, build_merged, build_unmerged

    reference = intended_network(model, chain, plan, input_shape).double().eval()
    boundaries = reference.meta.get("depthcut_blocks", {})
    names = {n for pair in boundaries.values() for n in pair}
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((samples, *tuple(input_shape)[1:]), generator=gen, dtype=torch.float64)
    device = next((p.device for p in reference.parameters()), torch.device("cpu"))
    x = x.to(device)
    capture = _Capture(reference, names)
    want = capture.run(x)
    outputs = {n for _, n in boundaries.values()}
    perturbed = _Capture(reference, outputs, perturb=SENSITIVITY_EPS, seed=seed + 1).run(x)
    sensitivity = _rel(perturbed, want) / SENSITIVITY_EPS

    def local(net: nn.Module) -> float:
        worst = 0.0
        for (start, end), (inp, out) in boundaries.items():
            name = f"{BLOCK_PREFIX}_{start}_{end}"
            module = dict(net.named_modules()).get(name)
            got = module(capture.values[inp]) if module is not None else capture.values[inp]
            worst = max(worst, _rel(got, capture.values[out]))
        return worst

    source = copy.deepcopy(traced).double().to(device)
    unmerged = build_unmerged(source, chain, plan).eval()
    del source
    errors = {"unmerged": _rel(unmerged(x), want), "blocks": local(unmerged)}
    merged = build_merged(unmerged, chain, plan)
    del unmerged
    errors["merged"] = _rel(merged(x), want)
    errors["blocks"] = max(errors["blocks"], local(merged))
    errors["allowed"] = max(STRUCTURE_TOLERANCE, 100 * sensitivity * max(errors["blocks"], 1e-16))
    return errors


def structure_ok(errors: dict[str, float]) -> bool:
    """Every block exact to STRUCTURE_TOLERANCE, and both whole networks within what rounding explains."""
    return (errors["blocks"] <= STRUCTURE_TOLERANCE and errors["unmerged"] <= errors["allowed"]
            and errors["merged"] <= errors["allowed"])


CONTROL_MARGIN = 10.0   # the deployed error may reach 10x the intended network's own float32 error


@torch.no_grad()
def verify_plan(deployed: nn.Module, model: nn.Module, chain: Chain, plan: Plan, input_shape: Sequence[int],
                samples: int = 2, seed: int = 0) -> float:
    """Relative error between ``deployed`` and the intended function of ``plan`` on ``model``, both in
    float64 and eval mode, on ``samples`` random images of ``input_shape`` (nothing passed in is modified)."""
    reference = intended_network(model, chain, plan, input_shape).double().eval()
    return _compare(deployed, reference, input_shape, samples, seed)


@torch.no_grad()
def float32_control(network: nn.Module, input_shape: Sequence[int], samples: int = 2, seed: int = 0) -> float:
    """How far ``network`` evaluated in float32 is from itself in float64: what float32 alone does to this
    function. A well-conditioned network gives ~1e-7; a random-weight 50-layer one without trained
    BatchNorm statistics amplifies rounding to 1e-3 or more, and no float32 deployment of it can do better."""
    return _compare(copy.deepcopy(network).float(), copy.deepcopy(network).double().eval(), input_shape,
                    samples, seed, dtype=torch.float32)


def allowed_error(model: nn.Module, control: float) -> float:
    """The largest deployed error accepted: the dtype's tolerance, or CONTROL_MARGIN times what float32
    rounding does to the intended network itself (``control``), whichever is larger."""
    return max(tolerance_for(model), CONTROL_MARGIN * control)


@torch.no_grad()
def check_deployed(deployed: nn.Module, model: nn.Module, chain: Chain, plan: Plan, input_shape: Sequence[int],
                   samples: int = 2, seed: int = 0) -> dict[str, float]:
    """The deployed network (merged kernels rounded to the model's dtype) against the intended function,
    judged against the control (:func:`float32_control` of the intended network): ``deployed`` (its error),
    ``control``, ``allowed`` (:func:`allowed_error`), and ``borders``: its distance from the same removals
    with the original padding (BORDERS), reported, never refused."""
    reference = intended_network(model, chain, plan, input_shape).double().eval()
    control = float32_control(reference, input_shape, samples, seed)
    unmoved = intended_network(model, chain, plan, input_shape, move_padding=False).double().eval()
    return {"deployed": _compare(deployed, reference, input_shape, samples, seed), "control": control,
            "allowed": allowed_error(model, control),
            "borders": _compare(deployed, unmoved, input_shape, samples, seed)}


def _compare(candidate: nn.Module, reference: nn.Module, input_shape: Sequence[int], samples: int,
             seed: int, dtype: torch.dtype = torch.float64) -> float:
    """||candidate(x) - reference(x)|| / ||reference(x)||, the reference in float64 and the candidate in
    ``dtype`` (float64 unless asked); ``candidate`` is copied only when it is not in ``dtype`` already, and
    its train/eval mode is restored."""
    floating = [p for p in candidate.parameters() if p.is_floating_point()]
    if not all(p.dtype == dtype for p in floating):
        candidate = copy.deepcopy(candidate).to(dtype)
    was_training = candidate.training
    candidate.eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((samples, *tuple(input_shape)[1:]), generator=gen, dtype=torch.float64)
    device = next((p.device for p in candidate.parameters()), torch.device("cpu"))
    try:
        want = reference.to(device)(x.to(device))
        got = candidate(x.to(device, dtype)).double()
    finally:
        candidate.train(was_training)
    if got.shape != want.shape:
        return float("inf")
    return float((got - want).norm() / want.norm().clamp_min(1e-300))


class VerificationError(DepthcutError):
    """The network about to be deployed is not the function the plan intends (a depthcut bug)."""


def relative_error(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """||a(x) - b(x)|| / ||a(x)|| evaluated in float64 on copies: no math mode (TF32 on GPUs, reduced
    precision reductions) can make a correct merge look wrong or a wrong one look right."""
    a64, b64 = copy.deepcopy(a).double().eval(), copy.deepcopy(b).double().eval()
    x64 = x.double().to(next((p.device for p in a64.parameters()), x.device))
    with torch.no_grad():
        ya, yb = a64(x64), b64(x64)
    return float((ya - yb).norm() / ya.norm().clamp_min(1e-300))


def verify_for_deployment(original: nn.Module, analysis, plan: Plan, input_shape) -> dict[str, float]:
    """The plan's rewrite against the intended function (this module), in float64 end to end: every
    block exact and the whole network within what rounding explains, else VerificationError. Also returns
    the error of the network that will be deployed (its kernels rounded to the model's dtype; reported)."""
    from .build import build_merged, build_unmerged, is_trivial

    errors = plan_structure_errors(original, analysis.gm, analysis.chain, plan, input_shape)
    blocks = ", ".join(b.key for b in plan.blocks if not is_trivial(b))
    if not structure_ok(errors):
        raise VerificationError(
            f"the chosen plan ({blocks}) is not the intended function: largest block error {errors['blocks']:.2e}, "
            f"whole network {max(errors['merged'], errors['unmerged']):.2e} (rounding explains "
            f"{errors['allowed']:.1e}), in float64; refusing to deploy it. This is a depthcut bug: please report "
            f"it with the model")
    deployed = build_merged(build_unmerged(analysis.gm, analysis.chain, plan).eval(), analysis.chain, plan)
    checked = check_deployed(deployed, original, analysis.chain, plan, input_shape)
    if not checked["deployed"] <= checked["allowed"]:
        raise VerificationError(
            f"the deployed network of the chosen plan ({blocks}) differs from the intended function by "
            f"{checked['deployed']:.2e} in float64, above the {checked['allowed']:.1e} that float32 rounding "
            f"explains (the intended network's own float32 error is {checked['control']:.1e}); refusing to "
            f"deploy it. This is a depthcut bug: please report it with the model")
    return {"structure": max(errors["merged"], errors["unmerged"]), "blocks": errors["blocks"], **checked}
