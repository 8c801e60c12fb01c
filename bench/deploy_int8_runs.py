"""The worst of several fresh deploy_int8 runs (issue 31): a committed figure is the worst run's, not the best's.

Each input is one finished ``bench/deploy_int8.py`` result (its JSON). Per arm and run: the latency model's
largest error on any probed plan, the same beyond each probe's own 95 % interval, the probes timed again after a
slow phase, the arms refused; then the worst over the runs, which is the figure the README quotes.

    python bench/deploy_int8_runs.py run3=bench/results/deploy_int8_run3.json run4=bench/results/deploy_int8.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from depthcut.cache import atomic_write_result

from deploy_int8 import timed_again

ROOT = Path(__file__).resolve().parents[1]


def per_run(result: dict) -> dict[str, dict]:
    """Per arm: largest model error, largest beyond the interval, (probes timed again, probes), refused count."""
    s, again = result["summary"], timed_again(result["cells"])
    refused = [r.rsplit(" seed ", 1)[1].split(" ", 1)[1] for r in s["refused"]]
    return {arm: {"error": s["model_error_largest"][arm],
                  "beyond": s.get("model_error_beyond_interval_largest", {}).get(arm),
                  "timed_again": list(again.get(arm, (0, 0))), "refused": refused.count(arm)}
            for arm in s["model_error_largest"]}


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
             "interval in brackets; probes timed again after a slow phase; arms refused), and the worst over the "
             "runs. Each run: `bench/deploy_int8.py` from empty caches, its command in its own file.", "",
             "| arm | " + " | ".join(runs) + " | worst |", "|---|" + "---|" * (len(runs) + 1)]
    for arm in w:
        cells = []
        for run in runs.values():
            r = run.get(arm)
            cells.append("-" if r is None else f"{pct(r['error'])} ({pct(r['beyond'])}), timed again "
                         f"{r['timed_again'][0]} of {r['timed_again'][1]}"
                         + (f", {r['refused']} refused" if r["refused"] else ""))
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | **{pct(w[arm]['error'])}** ({pct(w[arm]['beyond'])})"
                     + (f", {w[arm]['refused']} refused" if w[arm]["refused"] else "") + " |")
    return "\n".join(lines + [""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="+", help="finished bench/deploy_int8.py results, [LABEL=]JSON")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "deploy_int8_runs"))
    args = ap.parse_args()
    named = [a.split("=", 1) if "=" in a else (Path(a).stem, a) for a in args.results]
    runs = {label: per_run(json.loads(Path(path).read_text())) for label, path in named}
    report = {"command": "python bench/deploy_int8_runs.py " + " ".join(args.results), "runs": runs,
              "worst": worst(runs)}
    atomic_write_result(Path(args.out), report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
