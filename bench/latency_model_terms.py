"""Which terms and which calibration networks the latency model needs: each stored run refitted three ways.

Each run that ``bench/latency_model.py`` wrote keeps its latency rows, its calibration networks (their merged
blocks and measured milliseconds) and every probed plan's measured speed-up. From those alone (no timing), this
fits the library's model (depthcut.latency.model.model_from_points, the fit compress uses) on the calibration
networks:

* ``without weights``: the block-counting networks with the weight bytes hidden from the fit (the form before
  2026-12-07): other + rows - a * calls - b * bytes;
* ``with weights``: the same networks, + w * weight bytes (the form since);
* ``+ random-worth plans``: with weights, on every calibration network, the plans the DP picks when each merge is
  worth a seeded random amount included (depthcut.latency.model.RANDOM_SERIES; runs since 2026-12-07 time them),

and predicts each probed plan with each (anchored: the identity network as measured at calibration over the
plan's modelled network, LatencyModel.predicted_speedup); where the run timed a compress run's plans
(``--plans-from``), those too, against their measurement alone as the landing probes them. Reports, per file, the
worst error on the calibration networks and on the probed plans (predicted / measured - 1).

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

# name -> (the weights term offered to the fit, the random-worth calibration networks kept)
FORMS = {"without weights": (False, False), "with weights": (True, False), "+ random-worth plans": (True, True)}


def refit(report: dict, run: dict, form: str) -> dict:
    """The run's model refitted in ``form`` on its stored calibration networks, and its errors."""
    weights, scattered = FORMS[form]
    analysis = analysis_of(run["model"], input_shape(report, run))
    candidates = {c.key: c for c in analysis.candidates}
    timed = run["rows_ms"]
    stored = LatencyModel.from_dict(run["latency_model"])

    def rows_of(blocks: list[str]):
        plan = plan_changing(analysis.chain, [candidates[k] for k in blocks])
        return [(c, timed.get(c.key, 0.0)) for c in plan.blocks]

    networks = [(p["network"], rows_of(p["merged"]), p["measured_ms"]) for p in stored.calibration
                if scattered or not p["network"].startswith("random")]
    points = [plan_point(rows, measured, stored.batch_size) for _, rows, measured in networks]
    if not weights:
        points = [dataclasses.replace(p, weights=0.0) for p in points]
    model = model_from_points(points, [rows for _, rows, _ in networks], [n for n, _, _ in networks],
                              stored.batch_size)
    model.original_factor = stored.original_factor
    full = sum(model.row_ms(c, t) for c, t in rows_of([]) if is_trivial(c))

    def predicted(blocks: list[str]) -> float:
        return model.predicted_speedup(sum(model.row_ms(c, t) for c, t in rows_of(blocks)), full)

    return {"calibration": model.self_error, "networks": len(networks),
            "plans": [predicted(p["blocks"]) / p["measured"]["ratio"] - 1 for p in run["plans"]],
            "report_plans": [predicted(p["blocks"]) / p["measured_alone"]["ratio"] - 1
                             for p in run.get("report_plans", [])],
            "weight_us_per_mb": 1e9 * model.weight_ms_per_byte, "call_us": 1e3 * model.call_ms}


def terms_file(path: Path) -> dict:
    report = json.loads(path.read_text())
    runs = [r for r in report["runs"] if "refused" not in r and r.get("plans")]
    if not runs or any("rows_ms" not in r or "merged" not in r["latency_model"]["calibration"][0] for r in runs):
        return {"file": path.name, "skipped": "no run that kept its rows and calibration networks"}
    out = {"file": path.name, "runs": len(runs), "plans": sum(len(r["plans"]) for r in runs),
           "report_plans": sum(len(r.get("report_plans", [])) for r in runs), "stored_by": []}
    stored = [p["error"] for r in runs for p in r["plans"]]
    scattered = any(p["network"].startswith("random") for r in runs for p in r["latency_model"]["calibration"])
    for form in FORMS:
        if FORMS[form][1] and not scattered:
            continue                                    # a run from before the random-worth plans: no such fit
        fits = [refit(report, r, form) for r in runs]
        errors = [e for f in fits for e in f["plans"]]
        report_errors = [e for f in fits for e in f["report_plans"]]
        out[form] = {"calibration_worst": max(f["calibration"] for f in fits),
                     "plans_worst": max(map(abs, errors)),
                     "report_plans_worst": max(map(abs, report_errors)) if report_errors else None,
                     "networks": [f["networks"] for f in fits],
                     "weight_us_per_mb": [f["weight_us_per_mb"] for f in fits]}
        # the stored errors were computed by the code of their day: the form that reproduces them is theirs
        if max(abs(e - s) for e, s in zip(errors, stored)) < 1e-6:
            out["stored_by"].append(form)
    return out


def markdown(results: list[dict]) -> str:
    lines = ["# Which terms and calibration networks the latency model needs: `python bench/latency_model_terms.py`", "",
             "No timing: each stored run's rows and calibration networks (bench/results/latency_model_*.json) "
             "refitted with the library's fit three ways: on the block-counting calibration networks without and "
             "with the weights term (w x the bytes of a plan's kernels: a row timed alone keeps its weights in cache, "
             "a network reads them again), and with weights on every calibration network, the random-worth plans "
             "included (runs since 2026-12-07 time them; the library's calibration since). Every probed plan "
             "predicted with each. Worst error (predicted / measured - 1) over the file's runs, on the calibration "
             "networks, on the run's own plans and, where the run timed a compress run's plans (`--plans-from`), on "
             "those measured alone against the original as compress's landing probes them.", "",
             "| file | runs | plans (compress plans) | form | calibration networks | worst error: calibration | "
             "worst error: plans | worst error: compress plans, alone | w (us/MB) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['file']} | - | - | - | - | - | - | - | skipped: {r['skipped']} |")
            continue
        for form in FORMS:
            if form not in r:
                continue
            f = r[form]
            stored = " (as stored)" if form in r["stored_by"] else ""
            report_plans = "-" if f["report_plans_worst"] is None else f"{f['report_plans_worst']:.1%}"
            lines.append(f"| {r['file']} | {r['runs']} | {r['plans']} ({r.get('report_plans', 0)}) | {form}{stored} | "
                         f"{min(f['networks'])}-{max(f['networks'])} | {f['calibration_worst']:.1%} | "
                         f"**{f['plans_worst']:.1%}** | {report_plans} | "
                         f"{', '.join(f'{w:.0f}' for w in f['weight_us_per_mb'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    over_stored_runs(__doc__.splitlines()[0], terms_file, markdown, "latency_model_terms")


if __name__ == "__main__":
    main()
