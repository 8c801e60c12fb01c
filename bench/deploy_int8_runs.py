"""The worst of several fresh deploy_int8 runs (issue 31): a committed figure is the worst run's, not the best's.

Each source is one ``bench/deploy_int8.py`` run's per-arm reports: a directory (its ``--runs``) or a git
revision of ``bench/results/deploy_int8/`` (as ``bench/pace_error.py`` reads them). Per arm and run: the cells it
landed, the latency model's largest error on any probed plan, the same beyond each probe's own 95 % interval,
the probes timed again after a slow phase, the arms refused; then the worst over the runs, which is the figure
the README quotes. A run cut short counts the cells it has.

    python bench/deploy_int8_runs.py run3=024d2f1 run4=bench/results/deploy_int8
"""
from __future__ import annotations

import argparse
from pathlib import Path

from depthcut.cache import atomic_write_result

from deploy_int8 import beyond_interval
from pace_error import arm_name, reports

ROOT = Path(__file__).resolve().parents[1]


def per_run(source: str) -> dict[str, dict]:
    """Per arm: cells landed, largest model error, largest beyond the interval, [probes timed again, probes],
    cells refused."""
    out: dict[str, dict] = {}

    def arm(folder: str) -> dict:
        return out.setdefault(arm_name(folder), {"cells": 0, "error": None, "beyond": None, "timed_again": [0, 0],
                                                 "refused": 0})
    for cell, folder, r in reports(source):
        a = arm(folder)
        a["cells"] += 1
        a["error"] = max(a["error"] or 0.0, r["model_error_largest"])
        a["beyond"] = max([a["beyond"] or 0.0] + [abs(beyond_interval(p)) for p in r["probes"]])
        a["timed_again"][0] += sum(bool(p.get("measured_slow_timings")) for p in r["probes"])
        a["timed_again"][1] += len(r["probes"])
    for _, folder, _ in reports(source, "refused.json"):
        arm(folder)["refused"] += 1
    return dict(sorted(out.items()))


def worst(runs: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """Per arm, over the runs: the largest error and beyond-interval error (None where no run landed one)."""
    arms = dict.fromkeys(arm for run in runs.values() for arm in run)

    def largest(arm, key):
        known = [run[arm][key] for run in runs.values() if arm in run and run[arm][key] is not None]
        return max(known) if known else None
    return {arm: {"error": largest(arm, "error"), "beyond": largest(arm, "beyond"),
                  "refused": sum(run[arm]["refused"] for run in runs.values() if arm in run)} for arm in arms}


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def markdown(report: dict) -> str:
    runs, w = report["runs"], report["worst"]
    lines = [f"# deploy_int8 over {len(runs)} fresh runs: `{report['command']}`", "",
             "The latency model's largest error on any probed plan per arm and run (beyond each probe's own 95 % "
             "interval in brackets; the cells the run landed; probes timed again after a slow phase; arms "
             "refused), and the worst over the runs.", "",
             "| arm | " + " | ".join(runs) + " | worst |", "|---|" + "---|" * (len(runs) + 1)]
    for arm in w:
        cells = []
        for run in runs.values():
            r = run.get(arm)
            cells.append("-" if r is None else f"{pct(r['error'])} ({pct(r['beyond'])}), {r['cells']} cells, timed "
                         f"again {r['timed_again'][0]} of {r['timed_again'][1]}"
                         + (f", {r['refused']} refused" if r["refused"] else ""))
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | **{pct(w[arm]['error'])}** ({pct(w[arm]['beyond'])})"
                     + (f", {w[arm]['refused']} refused" if w[arm]["refused"] else "") + " |")
    return "\n".join(lines + [""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sources", nargs="+", help="[LABEL=]RUNS_DIR_OR_REVISION, one per deploy_int8 run")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "deploy_int8_runs"))
    args = ap.parse_args()
    named = [a.split("=", 1) if "=" in a else (a, a) for a in args.sources]
    runs = {label: per_run(source) for label, source in named}
    report = {"command": "python bench/deploy_int8_runs.py " + " ".join(args.sources), "runs": runs,
              "worst": worst(runs)}
    atomic_write_result(Path(args.out), report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
