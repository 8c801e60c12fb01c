"""Would the reachability check's measurement correct the latency model? (issue 31)

Before the importance table, compress times the fastest plan the latency table allows alone against the original
(depthcut.compression.check_reachable). That is a measured point the table's model never sees. This reads a
finished ``bench/deploy_int8.py`` run (its ``--runs`` folders and its ``--cache``, from which every arm's latency
rows and fitted model load without timing anything) and, per OpenVINO arm:

1. what the model predicted for that fastest plan (``reachable_predicted`` in reports written since 2026-12-07)
   against what it measured;
2. the model's error on every landing probe as it stands, and corrected through the reachability point: the
   predicted fraction of the original's time, f = 1 / speed-up, rescaled so that the line through the original
   (f = 1) passes through the measured fastest plan, f' = 1 - k (1 - f), k = (1 - f_measured) / (1 - f_predicted)
   at the fastest plan.

    python bench/reachable_point.py --runs <deploy_int8 --runs> --cache <deploy_int8 --cache>

Writes bench/results/reachable_point.{json,md} (``--out``).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from depthcut.cache import atomic_write_result
from depthcut.compression import Compression, fastest_plan, predicted_speedup

from deploy_int8 import arm_config

ROOT = Path(__file__).resolve().parents[1]
ARM_DIRS = {"openvino_int8": "openvino int8", "openvino_float32": "openvino float32"}


def corrected(predicted: float, fastest_predicted: float, fastest_measured: float) -> float:
    """A predicted speed-up rescaled through the original and the measured fastest plan (module doc)."""
    k = (1 - 1 / fastest_measured) / (1 - 1 / fastest_predicted)
    return 1 / (1 - k * (1 - 1 / predicted))


def one_arm(report_path: Path, args) -> dict:
    report = json.loads(report_path.read_text())
    cell, arm = report_path.parent.parent.name, ARM_DIRS[report_path.parent.name]
    model, rest = cell.split("-x", 1)
    target, seed = float(rest.split("-seed")[0]), int(rest.split("-seed")[1])
    config = arm_config(SimpleNamespace(recovery_epochs=0.5, adaptive_models=["mobilenet_v2_fmnist"],
                                        cache=args.cache, timing_threads=args.timing_threads), model, target, seed, arm)
    run = Compression(model, replace(config, progress=False))
    rows = run.rows                                       # cached: rows and model load, nothing is timed
    reach = report["reachable"]
    fastest = report.get("reachable_predicted") or predicted_speedup(rows, fastest_plan(run, rows).latency_ms,
                                                                     reach["original_ms"])
    probes = report["probes"]
    return {"cell": cell, "arm": arm, "reachable_measured": reach["ratio"], "reachable_predicted": fastest,
            "reachable_error": fastest / reach["ratio"] - 1,
            "errors": [p["model_error"] for p in probes],
            "corrected_errors": [corrected(p["predicted"], fastest, reach["ratio"]) / p["measured_ratio"] - 1
                                 for p in probes]}


def markdown(result: dict) -> str:
    lines = ["# The reachability check's point and the latency model (issue 31)", "",
             f"`python bench/reachable_point.py --runs {result['runs']} --cache {result['cache']}` on a finished "
             "`bench/deploy_int8.py` run. *fastest plan*: the reachability check's plan, the model's prediction "
             "against its measurement alone; *as built*: the model's error on each landing probe; *corrected*: the "
             "same predictions rescaled through the original and the measured fastest plan.", "",
             "| cell | arm | fastest plan: predicted / measured | as built | corrected |", "|---|---|---|---|---|"]
    for a in result["arms"]:
        lines.append(f"| {a['cell']} | {a['arm']} | x{a['reachable_predicted']:.2f} / x{a['reachable_measured']:.2f} "
                     f"({a['reachable_error']:+.1%}) | " + ", ".join(f"{e:+.1%}" for e in a["errors"]) + " | "
                     + ", ".join(f"{e:+.1%}" for e in a["corrected_errors"]) + " |")
    for arm in sorted({a["arm"] for a in result["arms"]}):
        mine = [a for a in result["arms"] if a["arm"] == arm]
        lines += ["", f"- {arm}: worst error as built **{max(abs(e) for a in mine for e in a['errors']):.1%}**, "
                      f"corrected **{max(abs(e) for a in mine for e in a['corrected_errors']):.1%}**"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="the --runs folder of a finished bench/deploy_int8.py run")
    ap.add_argument("--cache", required=True, help="the --cache folder of the same run")
    ap.add_argument("--timing-threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "reachable_point"))
    args = ap.parse_args()
    arms = [one_arm(p, args) for p in sorted(Path(args.runs).glob("*/openvino_*/report.json"))]
    for a in arms:
        print(f"{a['cell']} {a['arm']}: fastest {a['reachable_error']:+.1%}; worst as built "
              f"{max(map(abs, a['errors'])):.1%}, corrected {max(map(abs, a['corrected_errors'])):.1%}", flush=True)
    result = {"runs": args.runs, "cache": args.cache, "arms": arms}
    atomic_write_result(args.out, result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
