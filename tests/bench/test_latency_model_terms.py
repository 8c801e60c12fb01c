"""bench/latency_model_terms.py: a stored run refitted with and without the weights term and the random-worth
plans."""
from __future__ import annotations

import json

import pytest

import latency_model_terms as terms
from depthcut.cnn.build import is_trivial
from depthcut.latency.model import model_from_points, plan_point, weight_bytes


def test_the_weights_term_refits_a_run_whose_networks_read_their_weights_again(tmp_path):
    """Networks that pay 50 us per MB of weights beyond their rows' single-call costs: refitted with the
    weights term, the stored calibration networks and the probed plans are predicted exactly and the stored
    errors (computed with that form) are reproduced; hidden from the fit, both are missed."""
    shape = (1, 1, 28, 28)
    analysis = terms.analysis_of("resnet20_fmnist", shape)
    rows = {c.key: 0.03 + 1e-4 * c.kernel * c.out_channels / 16 for c in analysis.candidates if c.kept}
    by_key = {c.key: c for c in analysis.candidates}
    trivial = [c for c in analysis.candidates if is_trivial(c)]

    def blocks(merged):
        return [by_key[k] for k in merged] + [c for c in trivial if not any(
            by_key[k].start <= c.start < by_key[k].end for k in merged)]

    def truth(merged):
        return 0.02 + sum(rows[c.key] - 0.01 + 5e-8 * weight_bytes(c) for c in blocks(merged) if c.kept)
    merges = [c for c in analysis.candidates if not is_trivial(c) and c.kept and c.end - c.start >= 2]
    chosen = []
    for c in sorted(merges, key=lambda c: -weight_bytes(c)):    # non-overlapping merges, the heaviest first
        if not any(c.start < d.end and d.start < c.end for d in chosen):
            chosen.append(c)
    networks = [("identity", [])] + [(f"net{i}", [c.key for c in chosen[:i]]) for i in range(1, len(chosen) + 1)]
    networks += [(f"alone{i}", [c.key]) for i, c in enumerate(chosen)]
    networks += [(f"random 1 at {i}0%", [c.key for c in chosen[i::2]]) for i in (1, 2)]
    plans = [[c.key for c in chosen[::2]], [c.key for c in chosen[1::3]]]
    points = [plan_point([(c, rows.get(c.key, 0.0)) for c in blocks(m)], truth(m), 1) for _, m in networks]
    model = model_from_points(points, [[(c, rows.get(c.key, 0.0)) for c in blocks(m)] for _, m in networks],
                              [n for n, _ in networks], 1)
    assert model.weight_ms_per_byte == pytest.approx(5e-8, rel=1e-6)
    full = sum(model.row_ms(c, rows[c.key]) for c in trivial)
    run = {"run": 1, "model": "resnet20_fmnist", "input_shape": list(shape), "rows_ms": rows,
           "latency_model": model.to_dict(),
           "plans": [{"budget_ratio": 0.5, "measured": {"ratio": truth([]) / truth(p)}, "blocks": p,
                      "error": model.predicted_speedup(sum(model.row_ms(c, rows.get(c.key, 0.0)) for c in blocks(p)),
                                                       full) / (truth([]) / truth(p)) - 1} for p in plans],
           # a compress run's plan, measured alone 10 % faster than the networks' truth
           "report_plans": [{"blocks": plans[0], "measured_alone": {"ratio": 1.1 * truth([]) / truth(plans[0])}}]}
    path = tmp_path / "latency_model_x.json"
    path.write_text(json.dumps({"runs": [run]}))
    out = terms.terms_file(path)
    assert out["with weights"]["calibration_worst"] < 1e-9 and out["with weights"]["plans_worst"] < 1e-9
    assert out["with weights"]["weight_us_per_mb"] == [pytest.approx(50, rel=1e-6)]
    assert out["without weights"]["calibration_worst"] > 0.01 and out["without weights"]["plans_worst"] > 0.01
    # the random-worth networks: left out of the block-counting fits, in the last one; all three reproduce them
    assert out["+ random-worth plans"]["networks"] == [len(networks)]
    assert out["with weights"]["networks"] == out["without weights"]["networks"] == [len(networks) - 2]
    assert out["+ random-worth plans"]["plans_worst"] < 1e-9
    assert out["with weights"]["report_plans_worst"] == pytest.approx(1 - 1 / 1.1, rel=1e-6)
    assert out["stored_by"] == ["with weights", "+ random-worth plans"]
    assert "| latency_model_x.json | 1 | 2 (1) | with weights (as stored) |" in terms.markdown([out])
    # a run from before the random-worth plans has no such fit
    run["latency_model"]["calibration"] = [p for p in run["latency_model"]["calibration"]
                                           if not p["network"].startswith("random")]
    path.write_text(json.dumps({"runs": [run]}))
    assert "+ random-worth plans" not in terms.terms_file(path)
