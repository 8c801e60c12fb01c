"""Does the latency model's error on a probe follow the machine's pace when the probe was timed? (issue 31)

Each probe of a ``bench/deploy_int8.py`` run records its original's time in the probe. Its *pace* here is that
time over the original's time at the latency model's own pace (the calibration's identity network times the
original's factor, ``LatencyModel.identity_ms * original_factor``): 1 when the machine ran the probe as it ran
the table. Per arm and network: the correlation of the model's error with that pace, the least-squares line,
and the error the line gives at pace 1. ``--test`` checks the line fitted on the ``--fit`` runs against runs it
has not seen (a prospective check: each probe's error against the line's prediction at its pace).

Each source is a git revision whose ``bench/results/deploy_int8/`` holds a run, or a directory of one.

    python bench/pace_error.py --fit 5e84e1a 5bc2874 024d2f1 [--test DIR_OR_REVISION ...]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

from depthcut.cache import atomic_write_result

ROOT = Path(__file__).resolve().parents[1]
RUNS = "bench/results/deploy_int8"


def reports(source: str, name: str = "report.json") -> list[tuple[str, str, dict]]:
    """(cell, arm, file) of every arm of one deploy_int8 run that wrote ``name`` (its report, or ``refused.json``):
    from a directory of the run, or from a git revision of RUNS."""
    if Path(source).is_dir():
        return [(p.parent.parent.name, p.parent.name, json.loads(p.read_text()))
                for p in sorted(Path(source).glob(f"*/*/{name}"))]
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", source, RUNS + "/"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    return [(n.split("/")[-3], n.split("/")[-2],
             json.loads(subprocess.run(["git", "show", f"{source}:{n}"], cwd=ROOT, check=True, capture_output=True,
                                       text=True).stdout)) for n in names if n.endswith("/" + name)]


def arm_name(folder: str) -> str:
    """An arm's name from its folder (deploy_int8.run_arm writes "float32 table -> int8" as float32_table_-_int8)."""
    return folder.replace("_-_", " -> ").replace("_", " ")


def probes(source: str) -> list[dict]:
    """Every probe of a run with its pace and the model's error (arms without a per-call model skipped)."""
    out = []
    for cell, arm, r in reports(source):
        fit = r.get("latency_model_fit") or {}
        identity = next((c["measured_ms"] for c in fit.get("calibration") or [] if c["network"] == "identity"), None)
        if identity is None:
            continue
        at_model_pace = identity * fit.get("original_factor", 1.0)
        out += [{"source": source, "cell": cell, "arm": arm_name(arm),
                 "network": cell.split("-")[0], "pace": p["measured_original_ms"] / at_model_pace,
                 "error": p["model_error"], "rounds": p["measured_rounds"]} for p in r["probes"]]
    return out


def line(group: list[dict]) -> dict | None:
    """The least-squares line of error on pace, its correlation, and the error it gives at pace 1."""
    xs, ys = [p["pace"] for p in group], [p["error"] for p in group]
    if len(group) < 3 or len(set(xs)) < 2:
        return None
    fit = statistics.linear_regression(xs, ys)
    return {"probes": len(group), "correlation": statistics.correlation(xs, ys), "slope": fit.slope,
            "intercept": fit.intercept, "at_pace_1": fit.intercept + fit.slope,
            "pace_range": [min(xs), max(xs)], "largest_error": max(abs(y) for y in ys)}


def groups(found: list[dict]) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = {}
    for p in found:
        out.setdefault((p["arm"], p["network"]), []).append(p)
    return dict(sorted(out.items()))


def markdown(report: dict) -> str:
    lines = [f"# The latency model's error against the machine's pace: `{report['command']}`", "",
             "Pace: a probe's original over the original at the latency model's own pace (1: the machine ran the "
             "probe as it ran the table). Error: the predicted speed-up over the measured one, minus 1.", "",
             "| arm | network | probes | correlation | slope (error per unit of pace) | error at pace 1 | pace range | "
             "largest error |", "|---|---|---|---|---|---|---|---|"]
    for key, f in report["fit"].items():
        arm, network = key.split(" | ")
        lines.append(f"| {arm} | {network} | {f['probes']} | {f['correlation']:+.2f} | {f['slope']:+.2f} | "
                     f"{100 * f['at_pace_1']:+.1f} % | {f['pace_range'][0]:.2f}-{f['pace_range'][1]:.2f} | "
                     f"{100 * f['largest_error']:.1f} % |")
    if report.get("test"):
        lines += ["", "## Runs the line did not see", "",
                  "Each probe's error against the line fitted above at its pace (arms whose line correlates "
                  "at |r| >= 0.5).", "",
                  "| source | arm | network | cell | pace | error | the line's prediction | miss |",
                  "|---|---|---|---|---|---|---|---|"]
        for t in report["test"]:
            lines.append(f"| {t['source']} | {t['arm']} | {t['network']} | {t['cell']} | {t['pace']:.2f} | "
                         f"{100 * t['error']:+.1f} % | {100 * t['predicted']:+.1f} % | "
                         f"{100 * (t['error'] - t['predicted']):+.1f} pts |")
    return "\n".join(lines + [""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fit", nargs="+", required=True, help="runs the lines are fitted on (revisions or dirs)")
    ap.add_argument("--test", nargs="*", default=[], help="runs checked against those lines")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "pace_error"))
    args = ap.parse_args()
    fitted = {f"{arm} | {network}": fit for (arm, network), group in groups(
        [p for s in args.fit for p in probes(s)]).items() if (fit := line(group))}
    tested = []
    for p in (p for s in args.test for p in probes(s)):
        f = fitted.get(f"{p['arm']} | {p['network']}")
        if f and abs(f["correlation"]) >= 0.5:
            tested.append({**p, "predicted": f["intercept"] + f["slope"] * p["pace"]})
    report = {"command": "python bench/pace_error.py --fit " + " ".join(args.fit)
              + (" --test " + " ".join(args.test) if args.test else ""), "fit": fitted, "test": tested}
    atomic_write_result(Path(args.out), report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
