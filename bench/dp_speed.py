"""Speed of the search DPs (pure numpy, CPU).

Times, as the median of repeated runs:
  * the LayerMerge DP on a random 400-row table over L = 50 positions with 2000 steps (SPEC A7 target <= 0.2 s),
  * the LayerMerge DP on the real MobileNetV2-1.0 GPU table (171 rows, L = 50) with a synthetic importance,
  * the two-stage DP (stage 1 + stage 2, 4 activation-state pairs per block) on the same table,
  * answering one budget (best: on the solved grid, and with the budget-centred re-solve it does by default)
    and the whole Pareto frontier from a solved table.
Writes bench/results/dp_speed.json and prints a table.

    python bench/dp_speed.py [--repeats 7] [--steps 2000]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import time
from pathlib import Path

import numpy as np

from depthcut.search.layermerge import solve
from depthcut.search.tables import Row, load_kim23_csv
from depthcut.search.twostage import solve_two_stage

TABLES = Path(__file__).resolve().parents[1] / "tests" / "data" / "kim23_latency_tables"
OUT = Path(__file__).resolve().parent / "results" / "dp_speed.json"


def random_table(n_rows: int = 400, length: int = 50, seed: int = 0) -> list[Row]:
    """Every single-conv block, then random longer blocks (span <= 8) with 1-4 options until n_rows."""
    rng = random.Random(seed)
    rows = [Row(p - 1, p, rng.uniform(0.2, 1.5), 1.0) for p in range(1, length + 1)]
    while len(rows) < n_rows:
        i = rng.randrange(length)
        j = min(length, i + rng.randint(2, 8))
        for k in range(rng.randint(1, 4)):
            if len(rows) == n_rows:
                break
            rows.append(Row(i, j, rng.uniform(0.2, 4.0), math.exp(-rng.uniform(0, 0.05) * (j - i)), option=k))
    return rows


def median_time(fn, repeats: int) -> float:
    fn()   # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=2000)
    args = ap.parse_args()
    results = []

    rows = random_table()
    t = median_time(lambda: solve(rows, 50, steps=args.steps), args.repeats)
    results.append({"case": "layermerge random", "rows": len(rows), "L": 50, "steps": args.steps, "seconds": t})
    frontier = solve(rows, 50, steps=args.steps)
    budget = (frontier.min_latency_ms + frontier.max_latency_ms) / 2
    results.append({"case": "best(budget), grid only", "rows": len(rows), "L": 50, "steps": args.steps,
                    "seconds": median_time(lambda: frontier.best(budget, refine=False), args.repeats)})
    # A new budget each call, so the budget-centred re-solve is never a cache hit.
    fresh = iter(budget * (1 + 1e-6 * k) for k in range(10 ** 6))
    results.append({"case": "best(budget), re-solved", "rows": len(rows), "L": 50, "steps": args.steps,
                    "seconds": median_time(lambda: frontier.best(next(fresh)), args.repeats)})
    results.append({"case": "pareto() on solved", "rows": len(rows), "L": 50, "steps": args.steps,
                    "seconds": median_time(frontier.pareto, args.repeats),
                    "points": len(frontier.pareto())})

    mbv2, length = load_kim23_csv(TABLES / "mbv2_1.0_time_fish_gpu1_1228.csv")
    rng = np.random.default_rng(0)
    mbv2 = [Row(r.start, r.end, r.latency_ms, float(np.exp(-0.01 * (r.end - r.start - 1) * rng.uniform(0.5, 2))),
                ref=r.ref) for r in mbv2]
    t = median_time(lambda: solve(mbv2, length, steps=args.steps), args.repeats)
    results.append({"case": "layermerge MBV2-1.0 table", "rows": len(mbv2), "L": length, "steps": args.steps,
                    "seconds": t})
    h = {(r.start, r.end, a, b): -0.1 * (r.end - r.start - 1) - 0.05 * (2 - a - b) for r in mbv2
         for a in (0, 1) for b in (0, 1)}
    t = median_time(lambda: solve_two_stage(mbv2, length, h, steps=args.steps), args.repeats)
    results.append({"case": "two-stage MBV2-1.0 table", "rows": len(mbv2), "L": length, "steps": args.steps,
                    "seconds": t})

    meta = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
            "cpus": os.cpu_count(), "repeats": args.repeats, "statistic": "median wall-clock seconds"}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    tmp.replace(OUT)

    print(f"{'case':<28} {'rows':>5} {'L':>3} {'steps':>6} {'median ms':>10}")
    for r in results:
        print(f"{r['case']:<28} {r['rows']:>5} {r['L']:>3} {r['steps']:>6} {1e3 * r['seconds']:>10.2f}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
