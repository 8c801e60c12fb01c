"""The cheap score's shared prefix (depthcut.importance.prefix): every candidate's output from the kept
activations of the original equals, bit for bit, its network run from the input with batch statistics."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from depthcut.cnn.build import build_unmerged, is_trivial, single_block_plan
from depthcut.cnn.graph import analyze
from depthcut.importance.prefix import SharedPrefix, unchanged_nodes
from depthcut.train import batch_statistics, evaluate
from depthcut.zoo import randomize_batchnorm
from depthcut.zoo.mobilenetv2 import mobilenet_v2


def tiny_net():
    from test_compression import TinyNet

    torch.manual_seed(0)
    return randomize_batchnorm(TinyNet(), seed=0), (1, 1, 8, 8)


def small_mobilenet():       # inverted residuals, depthwise convs, ReLU6(inplace=True)
    torch.manual_seed(0)
    return randomize_batchnorm(mobilenet_v2(num_classes=10, width_mult=0.25, in_chans=1), seed=0), (1, 1, 16, 16)


@pytest.mark.parametrize("make", [tiny_net, small_mobilenet], ids=["tiny", "mobilenet"])
def test_every_candidate_from_the_kept_prefix_equals_its_network_run_from_the_input(make):
    model, shape = make()
    analysis = analyze(model.eval(), shape)
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(40, *shape[1:], generator=g), torch.randint(0, 10, (40,), generator=g))
    prefix = SharedPrefix(analysis.gm, data, batch_size=16)          # batches of 16, 16 and 8
    assert prefix.enabled and len(prefix.batches) == 3
    kept_once = sum(v.numel() * v.element_size() for v in prefix.batches[0][0].values() if torch.is_tensor(v))
    assert prefix.kept_bytes > 2 * kept_once        # three batches kept (the last one half as large)
    candidates = [c for c in analysis.candidates if not is_trivial(c)]
    assert len(candidates) >= 5
    candidates = candidates[::max(1, len(candidates) // 12)]       # spread over the chain
    reused = []
    for candidate in candidates:
        built = build_unmerged(analysis.gm, analysis.chain, single_block_plan(analysis.chain, candidate))
        x = torch.cat([x for _, x, _ in prefix.batches])
        with torch.no_grad(), batch_statistics(built.eval()):
            expected = [built(x[i:i + 16]) for i in range(0, 40, 16)]
        got = [logits for logits, _ in prefix.outputs(built)]
        assert all(torch.equal(a, b) for a, b in zip(got, expected)), candidate.key
        assert prefix.accuracy(built) == evaluate(built, data, batch_size=16, batch_statistics=True)
        reused.append(len(unchanged_nodes(prefix.original, built)))
    # the prefix is used: candidates later in the chain reuse more of the original than the first one
    assert max(reused) > min(reused) > 0
    # the kept outputs are untouched by the candidates' evaluations (in-place ops get copies)
    again = SharedPrefix(analysis.gm, data, batch_size=16)
    for (kept, _, _), (fresh, _, _) in zip(prefix.batches, again.batches):
        assert all(torch.equal(kept[k], fresh[k]) for k in kept if isinstance(kept[k], torch.Tensor))


def test_the_original_itself_is_read_whole_and_a_changed_module_is_not_reused():
    model, shape = tiny_net()
    analysis = analyze(model.eval(), shape)
    data = TensorDataset(torch.randn(8, *shape[1:]), torch.zeros(8, dtype=torch.long))
    prefix = SharedPrefix(analysis.gm, data, batch_size=8)
    import copy

    same = copy.deepcopy(analysis.gm)
    assert unchanged_nodes(prefix.original, same.eval()) == {n.name for n in same.graph.nodes if n.op != "output"}
    with torch.no_grad():
        next(same.parameters()).add_(1.0)        # the stem's conv: it and everything after it is changed
    assert unchanged_nodes(prefix.original, same.eval()) == {n.name for n in same.graph.nodes if n.op == "placeholder"}


def test_too_large_a_prefix_falls_back_to_evaluating_from_the_input():
    model, shape = tiny_net()
    analysis = analyze(model.eval(), shape)
    data = TensorDataset(torch.randn(24, *shape[1:]), torch.randint(0, 10, (24,)))
    prefix = SharedPrefix(analysis.gm, data, batch_size=8, max_bytes=1000)
    assert not prefix.enabled and prefix.batches == [] and prefix.kept_bytes == 0
    candidate = next(c for c in analysis.candidates if not is_trivial(c))
    built = build_unmerged(analysis.gm, analysis.chain, single_block_plan(analysis.chain, candidate))
    assert prefix.accuracy(built) == evaluate(built, data, batch_size=8, batch_statistics=True)


@pytest.mark.parametrize("make", [tiny_net, small_mobilenet], ids=["tiny", "mobilenet"])
def test_a_candidate_built_on_the_originals_modules_scores_as_its_copy_and_leaves_the_original_as_it_was(make):
    """The cheap score builds each candidate over the original's own modules (no copy of the network): the same
    outputs, bit for bit, as the copied build, and afterwards the original holds the same modules, weights,
    statistics, batch counters and modes."""
    from depthcut.config import LayerMergeConfig
    from depthcut.importance.scorer import CandidateAccuracy

    model, shape = make()
    analysis = analyze(model.eval(), shape)
    g = torch.Generator().manual_seed(2)
    data = TensorDataset(torch.randn(24, *shape[1:], generator=g), torch.randint(0, 10, (24,), generator=g))
    before = {k: v.clone() for k, v in analysis.gm.state_dict().items()}
    modules = {name: (m, m.training) for name, m in analysis.gm.named_modules()}
    prefix = SharedPrefix(analysis.gm, data, batch_size=8)
    candidates = [c for c in analysis.candidates if not is_trivial(c)]
    for candidate in candidates:
        plan = single_block_plan(analysis.chain, candidate)
        shared = build_unmerged(analysis.gm, analysis.chain, plan, share_weights=True)
        copied = build_unmerged(analysis.gm, analysis.chain, plan)
        assert any(a is b for a in shared.modules() for b in analysis.gm.modules())
        assert not any(a is b for a in copied.modules() for b in analysis.gm.modules())
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(prefix.outputs(shared), prefix.outputs(copied))), \
            candidate.key
        assert evaluate(shared, data, batch_size=8) == evaluate(copied, data, batch_size=8)
    for proxy in ("bn-batch", "none"):
        scorer = CandidateAccuracy(model, shape, (), data, data, LayerMergeConfig(importance=proxy), "cpu", analysis)
        for candidate in candidates[:4]:
            scorer(candidate)
    after = analysis.gm.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert {name: (m, m.training) for name, m in analysis.gm.named_modules()} == modules
