"""The latency model's predictions re-derived from stored runs, under the current rule and the earlier one.

Each run that ``bench/latency_model.py`` wrote keeps its latency rows, its calibration networks' measurements
and every probed plan's measurement. From those alone (no timing), this replays the fitted model and predicts
each plan two ways:

* ``anchored`` (depthcut.latency.model.LatencyModel.predicted_speedup, the current rule): the identity plan's
  network *as measured at calibration* over the plan's modelled network;
* ``both modelled`` (the rule before): the modelled identity network over the plan's modelled network.

and reports the worst and mean error (predicted / measured - 1) per file: what anchoring changes on the
same measurements.

    python bench/latency_model_replay.py [bench/results/latency_model_*.json ...]

Writes bench/results/latency_model_replay.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from depthcut import zoo
from depthcut.cnn.build import is_trivial, plan_changing
from depthcut.cnn.graph import analyze
from depthcut.cache import atomic_write_result
from depthcut.latency.model import LatencyModel

ROOT = Path(__file__).resolve().parents[1]
_analyses: dict = {}


def analysis_of(name: str, shape: tuple[int, ...]):
    if (name, shape) not in _analyses:
        entry = zoo.get(name)
        torch.manual_seed(0)
        model = zoo.randomize_batchnorm(entry.create())
        _analyses[name, shape] = analyze(model, shape, exclude=entry.chain_exclude, batch_size=1)
    return _analyses[name, shape]


def input_shape(report: dict, run: dict) -> tuple[int, ...]:
    if run.get("input_shape"):
        return tuple(run["input_shape"])
    entry = zoo.get(run["model"])        # runs written before the shape was kept: the model's own, or --size
    size = report.get("size")
    return (1, entry.input_shape[1]) + ((size, size) if size else tuple(entry.input_shape[2:]))


def replay_run(report: dict, run: dict) -> list[dict]:
    analysis = analysis_of(run["model"], input_shape(report, run))
    candidates = {c.key: c for c in analysis.candidates}
    rows = {k: (candidates[k], t) for k, t in run["rows_ms"].items()}
    model = LatencyModel.from_dict(run["latency_model"])
    full = sum(model.row_ms(c, t) for c, t in rows.values() if is_trivial(c))
    out = []
    for p in run["plans"]:
        plan = plan_changing(analysis.chain, [candidates[k] for k in p["blocks"]])
        body = sum(model.row_ms(c, rows[c.key][1]) for c in plan.blocks)
        measured = p["measured"]["ratio"]
        earlier = model.original_factor * model.network_ms(full) / model.network_ms(body)
        out.append({"budget_ratio": p["budget_ratio"], "measured": measured,
                    "anchored": model.predicted_speedup(body, full) / measured - 1,
                    "both_modelled": earlier / measured - 1, "stored": p["error"]})
    return out


def replay_file(path: Path) -> dict:
    report = json.loads(path.read_text())
    runs = [r for r in report["runs"] if "refused" not in r and r.get("plans")]
    if any("rows_ms" not in r for r in runs):
        return {"file": path.name, "skipped": "written before the runs kept their rows"}
    plans = [p for r in runs for p in replay_run(report, r)]
    if not plans:
        return {"file": path.name, "skipped": "no run with probed plans"}
    summary = {"file": path.name, "runs": len(runs), "refused": len(report["runs"]) - len(runs),
               "plans": len(plans)}
    for rule in ("both_modelled", "anchored"):
        errors = [p[rule] for p in plans]
        summary[rule] = {"worst": max(map(abs, errors)), "mean": statistics.mean(errors)}
    # the stored errors were computed by the code of their day: one of the two rules must reproduce them
    summary["stored_by"] = [rule for rule in ("both_modelled", "anchored")
                            if max(abs(p[rule] - p["stored"]) for p in plans) < 1e-6]
    return summary


def markdown(results: list[dict]) -> str:
    lines = ["# The latency model's predictions replayed on stored runs: `python bench/latency_model_replay.py`", "",
             "No timing: each stored run's rows, fitted model and measured plans (bench/results/latency_model_*.json), "
             "predicted two ways. *Both modelled*: the model's identity network over the plan's (the rule before; "
             "runs written before 2026-12-06). *Anchored*: the identity network as measured at calibration over "
             "the plan's modelled network (depthcut.latency.model.LatencyModel.predicted_speedup). Error = "
             "predicted / measured - 1, worst (mean) over every probed plan of the file's runs.", "",
             "| file | runs (refused) | plans | both modelled | anchored | rule that reproduces the stored errors |",
             "|---|---|---|---|---|---|"]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['file']} | - | - | - | - | skipped: {r['skipped']} |")
            continue
        cell = lambda k: f"{r[k]['worst']:.1%} ({r[k]['mean']:+.1%})"
        lines.append(f"| {r['file']} | {r['runs']} ({r['refused']}) | {r['plans']} | {cell('both_modelled')} | "
                     f"**{cell('anchored')}** | {', '.join(r['stored_by']).replace('_', ' ') or 'neither'} |")
    return "\n".join(lines) + "\n"


# what the drivers over stored runs write among bench/results/latency_model_*.json: not runs themselves
DERIVED = ("latency_model_replay", "latency_model_terms")


def over_stored_runs(description: str, per_file, markdown, name: str) -> None:
    """The command line of a driver over stored ``bench/latency_model.py`` runs: ``per_file(path)`` on each
    file named (default: every run file in bench/results), the results written as ``--out``.{json,md}
    (default bench/results/``name``) with ``markdown(results)``, and printed."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / name))
    args = ap.parse_args()
    files = args.files or sorted((ROOT / "bench" / "results").glob("latency_model_*.json"))
    results = [per_file(f) for f in files if f.stem not in DERIVED]
    atomic_write_result(args.out, {"files": results}, markdown(results))
    print(markdown(results))


def main() -> None:
    over_stored_runs(__doc__.splitlines()[0], replay_file, markdown, "latency_model_replay")


if __name__ == "__main__":
    main()
