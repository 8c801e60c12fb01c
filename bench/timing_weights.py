"""Does a network's speed depend on its weights? Issue 29's comparison timed the same MobileNetV2 x1.5 plan (6-9, 9-12,
36-39, 48-52) at x1.54 as LayerMerge's copy (landed, not yet recovered: raw merged weights) and at x1.61 as the
joint method's (recovered), in the same rounds. Here that plan's merged network before and after the recovery, and
the recovered one again (a copy: the timing harness's own spread), are timed against the original in the same
rounds on ONNX Runtime at one thread, the comparison's setting.

    python bench/timing_weights.py | tee bench/results/timing_weights.log
    python bench/timing_weights.py --reverse | tee bench/results/timing_weights_reversed.log   # added last first
"""
import argparse
import copy
import time

import cnn_frontier as cf
import joint as bj
from depthcut.cnn.build import build_merged, build_unmerged
from depthcut.compression import Compression, recover
from depthcut.config import LayerMergeConfig
from depthcut.latency.compare import time_jointly
from finalist_recipe import PLANS, plan_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reverse", action="store_true", help="add the networks in the reverse order")
    reverse = ap.parse_args().reverse
    args = bj.parser().parse_args([])
    cfg = cf.compare_config("mobilenet_v2_fmnist", args)
    run = Compression("mobilenet_v2_fmnist", LayerMergeConfig(method="layermerge", speedup=1.5,
                                                               **{**cfg.compress, "progress": False}))
    plan = plan_of(run, PLANS["layermerge matched"])
    raw = build_merged(build_unmerged(run.analysis.gm, run.analysis.chain, plan).eval(), run.analysis.chain, plan)
    _, recovered, _ = recover(run, plan)
    networks = {"raw merged (not recovered)": raw.eval(), "recovered": recovered.eval(),
                "recovered, a copy": copy.deepcopy(recovered).eval()}
    if reverse:
        networks = dict(reversed(networks.items()))
    for timing in range(3):
        t0 = time.time()
        est = time_jointly(run.original, networks, run.example, run.backend, sessions=run.config.timing_sessions,
                           rounds=60)
        print(f"timing {timing + 1} ({time.time() - t0:.0f} s): "
              + "; ".join(f"{name} {e.describe()}" for name, e in est.items()), flush=True)


if __name__ == "__main__":
    main()
