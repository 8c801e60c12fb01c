"""Importance criteria (SPEC B2) on tiny random decoders: shapes, agreement with real surgery, no leaks."""
from __future__ import annotations

import math

import pytest
import torch

from depthcut.errors import DepthcutError
from depthcut.llm import criteria as C
from depthcut.llm.surgery import remove_blocks, remove_units

VOCAB = 100




def windows(n: int = 3, length: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(2, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", [n for n, c in C.CRITERIA.items() if not c.iterative])
def test_scoring_criteria_return_one_finite_score_per_block(tiny_model, name):
    model = tiny_model("llama", num_layers=5)
    scores = C.get_criterion(name).score(model, windows(), "block")
    assert len(scores) == 5 and all(math.isfinite(s) for s in scores)
    assert len(set(round(s, 9) for s in scores)) > 1  # random blocks differ


@pytest.mark.parametrize("name", ["angular", "sleb"])
def test_selecting_criteria_return_n_distinct_unprotected_blocks(tiny_model, name):
    model = tiny_model("llama", num_layers=8)
    chosen = C.get_criterion(name).select(model, windows(), 2, (2, 1), "block")
    assert len(set(chosen)) == 2
    assert all(u[1] == "block" and 2 <= u[0] < 7 for u in chosen)


def test_angular_picks_the_contiguous_run_with_the_smallest_last_token_angle(tiny_model):
    model = tiny_model("llama", num_layers=6)
    x = windows()
    with torch.no_grad():
        hs = model(input_ids=x, output_hidden_states=True).hidden_states  # hs[L] is after the final norm
    n, L = 2, 6
    d = []
    for start in range(L - n):  # runs that end before the last block: hs entries are raw residual states
        cos = torch.nn.functional.cosine_similarity(hs[start][:, -1], hs[start + n][:, -1], dim=-1)
        d.append(float((torch.arccos(cos.clamp(-1, 1)) / math.pi).mean()))
    ours = C.angular_distances(model, x, n)
    assert ours[:L - n] == pytest.approx(d, abs=1e-5)
    run = C.select_angular(model, x, n)
    assert run == [(s, "block") for s in range(run[0][0], run[0][0] + n)]
    assert ours[run[0][0]] == pytest.approx(min(ours))


def test_block_influence_matches_hidden_states(tiny_model):
    model = tiny_model("qwen2", num_layers=5)
    x = windows()
    with torch.no_grad():
        hs = model(input_ids=x, output_hidden_states=True).hidden_states
    bi = C.score_block_influence(model, x)
    for n in range(4):  # the last block's output in hidden_states is normed, skip it
        cos = torch.nn.functional.cosine_similarity(hs[n], hs[n + 1], dim=-1)
        assert bi[n] == pytest.approx(1 - float(cos.mean()), abs=1e-5)


@pytest.mark.parametrize("model_type", ["llama", "gemma2"])
def test_ppl_criterion_equals_nll_of_the_surgically_pruned_model(tiny_model, model_type):
    model = tiny_model(model_type, num_layers=4)
    x = windows()
    dense = C.nll(model, x)
    scores = C.score_ppl(model, x, "block")
    for n in range(4):
        assert dense + scores[n] == pytest.approx(C.nll(remove_blocks(model, [n]), x), abs=1e-5)
    sub = C.score_ppl(model, x, "sublayer")
    units = C.all_units(model, "sublayer")
    for k in (0, 3, 6):
        assert dense + sub[k] == pytest.approx(C.nll(remove_units(model, [units[k]]), x), abs=1e-5)
    # the skip mask is undone: the model computes its dense function again
    assert C.nll(model, x) == pytest.approx(dense, abs=1e-7)


def test_taylor_matches_full_gradient_and_leaves_no_grad(tiny_model):
    model = tiny_model("llama", num_layers=4)
    x = windows()
    ours = C.score_taylor(model, x)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())  # flags restored
    # reference: ordinary full backward, then Σ|W·∂L/∂W| per block
    ref_model = tiny_model("llama", num_layers=4)
    logits = ref_model(input_ids=x).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    ref = [float(sum((p.detach() * p.grad).abs().sum() for p in layer.parameters()))
           for layer in ref_model.model.layers]
    assert ours == pytest.approx(ref, rel=1e-4)
    sub = C.score_taylor(model, x, "sublayer")
    assert len(sub) == 8 and sub[0] + sub[1] < ours[0]  # halves exclude the norms, so they sum to less


def test_magnitude_is_sum_of_absolute_weights(tiny_model):
    model = tiny_model("llama", num_layers=3)
    scores = C.score_magnitude(model)
    assert scores[1] == pytest.approx(float(sum(p.detach().abs().sum() for p in model.model.layers[1].parameters())))


def test_sleb_is_greedy_and_iterative_against_brute_force(tiny_model):
    model = tiny_model("llama", num_layers=5)
    x = windows()
    trace = []
    chosen = C.select_sleb(model, x, 2, trace=trace)
    # brute force with real surgery: step 1 = best single removal, step 2 = best addition to it
    first = min(range(5), key=lambda i: C.nll(remove_blocks(model, [i]), x))
    second = min((i for i in range(5) if i != first), key=lambda i: C.nll(remove_blocks(model, [first, i]), x))
    assert chosen == [(first, "block"), (second, "block")]
    # step 2 re-scored the already pruned model: its NLLs are for pairs, not the one-shot singles
    assert trace[1][(second, "block")] == pytest.approx(C.nll(remove_blocks(model, [first, second]), x), abs=1e-5)
    assert len(trace[1]) == 4


def test_sleb_on_sublayers_respects_protection(tiny_model):
    model = tiny_model("llama", num_layers=4)
    chosen = C.select_sleb(model, windows(), 3, protect=(1, 1), unit="sublayer")
    assert len(chosen) == 3 and all(1 <= i < 3 and p in ("attn", "mlp") for i, p in chosen)


def test_plus_variants_protect_first_and_last_blocks(tiny_model):
    assert C.get_criterion("taylor+").protect == (4, 2) and C.get_criterion("mag+").protect == (4, 2)
    units = C.all_units(tiny_model("llama", num_layers=8), "block")
    protected = C.protected_units(units, 8, (4, 2))
    assert protected == {(i, "block") for i in (0, 1, 2, 3, 6, 7)}
    scores = [0.0] * 8  # everything equally unimportant: only protection decides
    assert C.rank_removal(scores, units, 2, protected) == [(4, "block"), (5, "block")]
    with pytest.raises(DepthcutError, match="only 2 are not protected"):
        C.rank_removal(scores, units, 3, protected)


def test_block_only_criteria_refuse_sublayers_and_unknown_names(tiny_model):
    model = tiny_model("llama", num_layers=3)
    with pytest.raises(DepthcutError, match="unit='block' only"):
        C.score_block_influence(model, windows(), "sublayer")
    with pytest.raises(DepthcutError, match="unknown criterion"):
        C.get_criterion("nope")
