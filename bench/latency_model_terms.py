"""Which terms the latency model needs: each stored run refitted with and without the weights term.

Each run that ``bench/latency_model.py`` wrote keeps its latency rows, its calibration networks (their merged
blocks and measured milliseconds) and every probed plan's measured speed-up. From those alone (no timing), this
fits the library's model (depthcut.latency.model.model_from_points, the fit compress uses) on the calibration
networks twice:

* ``with weights``: the current form, other + rows - a * calls - b * bytes + w * weight bytes;
* ``without``: the same networks with the weight bytes hidden from the fit (the form before 2026-12-07),

and predicts each probed plan with each (anchored: the identity network as measured at calibration over the
plan's modelled network, LatencyModel.predicted_speedup). Reports, per file, the worst error on the calibration
networks and on the probed plans (predicted / measured - 1).

    python bench/latency_model_terms.py [bench/results/latency_model_*.json ...]

Writes bench/results/latency_model_terms.{json,md}.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from depthcut.cnn.build import is_trivial, plan_changing
from depthcut.latency.model import LatencyModel, model_from_points, plan_point

from latency_model_replay import analysis_of, input_shape, over_stored_runs

FORMS = ("without", "with weights")


def refit(report: dict, run: dict, form: str) -> dict:
    """The run's model refitted in ``form`` on its stored calibration networks, and its errors."""
    analysis = analysis_of(run["model"], input_shape(report, run))
    candidates = {c.key: c for c in analysis.candidates}
    timed = run["rows_ms"]
    stored = LatencyModel.from_dict(run["latency_model"])

    def rows_of(blocks: list[str]):
        plan = plan_changing(analysis.chain, [candidates[k] for k in blocks])
        return [(c, timed.get(c.key, 0.0)) for c in plan.blocks]

    networks = [(p["network"], rows_of(p["merged"]), p["measured_ms"]) for p in stored.calibration]
    points = [plan_point(rows, measured, stored.batch_size) for _, rows, measured in networks]
    if form == "without":
        points = [dataclasses.replace(p, weights=0.0) for p in points]
    model = model_from_points(points, [rows for _, rows, _ in networks], [n for n, _, _ in networks],
                              stored.batch_size)
    model.original_factor = stored.original_factor
    full = sum(model.row_ms(c, t) for c, t in rows_of([]) if is_trivial(c))
    plans = [model.predicted_speedup(sum(model.row_ms(c, t) for c, t in rows_of(p["blocks"])), full)
             / p["measured"]["ratio"] - 1 for p in run["plans"]]
    return {"calibration": model.self_error, "plans": plans,
            "weight_us_per_mb": 1e9 * model.weight_ms_per_byte, "call_us": 1e3 * model.call_ms}


def terms_file(path: Path) -> dict:
    report = json.loads(path.read_text())
    runs = [r for r in report["runs"] if "refused" not in r and r.get("plans")]
    if not runs or any("rows_ms" not in r or "merged" not in r["latency_model"]["calibration"][0] for r in runs):
        return {"file": path.name, "skipped": "no run that kept its rows and calibration networks"}
    out = {"file": path.name, "runs": len(runs), "plans": sum(len(r["plans"]) for r in runs), "stored_by": []}
    stored = [p["error"] for r in runs for p in r["plans"]]
    for form in FORMS:
        fits = [refit(report, r, form) for r in runs]
        errors = [e for f in fits for e in f["plans"]]
        out[form] = {"calibration_worst": max(f["calibration"] for f in fits),
                     "plans_worst": max(map(abs, errors)),
                     "weight_us_per_mb": [f["weight_us_per_mb"] for f in fits]}
        # the stored errors were computed by the code of their day: the form that reproduces them is theirs
        if max(abs(e - s) for e, s in zip(errors, stored)) < 1e-6:
            out["stored_by"].append(form)
    return out


def markdown(results: list[dict]) -> str:
    lines = ["# Which terms the latency model needs: `python bench/latency_model_terms.py`", "",
             "No timing: each stored run's rows and calibration networks (bench/results/latency_model_*.json) "
             "refitted with the library's fit, with and without the weights term (w x the bytes of a plan's "
             "kernels: a row timed alone keeps its weights in cache, a network reads them again), and every probed "
             "plan predicted with each. Worst error (predicted / measured - 1) over the file's runs, on the "
             "calibration networks and on the probed plans; w as fitted per run.", "",
             "| file | runs | plans | without: calibration | without: plans | with weights: calibration "
             "| with weights: plans | w (us/MB) | form that reproduces the stored errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['file']} | - | - | - | - | - | - | - | skipped: {r['skipped']} |")
            continue
        a, b = r["without"], r["with weights"]
        lines.append(f"| {r['file']} | {r['runs']} | {r['plans']} | {a['calibration_worst']:.1%} | "
                     f"{a['plans_worst']:.1%} | {b['calibration_worst']:.1%} | **{b['plans_worst']:.1%}** | "
                     f"{', '.join(f'{w:.0f}' for w in b['weight_us_per_mb'])} | {', '.join(r['stored_by']) or 'neither'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    over_stored_runs(__doc__.splitlines()[0], terms_file, markdown, "latency_model_terms")


if __name__ == "__main__":
    main()
