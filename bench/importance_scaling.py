"""Importance table on Ray: 2 workers against 1 on this machine, and the same scores as the local executor
(issue 8: >= 1.6x with 2 workers on the 2-core machine, identical scores).

The embedded ResNet-20 on Fashion-MNIST, the default proxy (20-step fine-tune on the fine-tune split, accuracy on
the scoring split), ``--candidates`` of its candidates, each configuration into a fresh cache: the local executor
(one process, one thread), a local Ray instance with 1 CPU (one task at a time) and with 2 CPUs (two at a time;
Ray gives each task OMP_NUM_THREADS=1). Wall time of the whole table, the speed-up of 2 workers over 1, and
whether every score equals the local one. Writes ``--out``.json/.md.

    python bench/importance_scaling.py [--candidates 24]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

OUT = ROOT / "bench" / "results" / "importance_scaling"


def table(executor_name: str, cpus: int, candidates: int) -> tuple[dict[str, float], float]:
    import torch

    from depthcut.cnn.graph import analyze
    from depthcut.config import LayerMergeConfig
    from depthcut.data import make_splits
    from depthcut.importance import importance_store
    from depthcut.models import resolve_model
    from depthcut.importance.scorer import importance_manifest, score_candidates
    from depthcut.train import evaluate

    torch.set_num_threads(1)
    resolved = resolve_model("resnet20_fmnist")
    analysis = analyze(resolved.model, resolved.input_shape, exclude=resolved.chain_exclude)
    config = LayerMergeConfig(executor=executor_name, progress=False)
    splits = make_splits(config.data, config.finetune_size, config.score_size, seed=config.seed,
                         image_size=tuple(resolved.input_shape[2:]))
    todo = [c for c in analysis.candidates if not (c.end == c.start + 1 and tuple(c.kept) == (c.end,))][:candidates]
    base = evaluate(resolved.model, splits.score)
    with tempfile.TemporaryDirectory() as cache:
        store = importance_store(importance_manifest(resolved.model, analysis, config), cache)
        if executor_name == "ray":
            import ray
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            start = time.perf_counter()
            scores = score_candidates(resolved.model, analysis, todo, base, splits, config, store,
                                      resolved.chain_exclude)
            seconds = time.perf_counter() - start
        finally:
            if executor_name == "ray":
                ray.shutdown()
    return {c.key: scores[c.key] for c in todo}, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=24)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    runs = {}
    for label, name, cpus in (("local, 1 process", "local", 1), ("ray, 1 worker", "ray", 1),
                              ("ray, 2 workers", "ray", 2)):
        scores, seconds = table(name, cpus, args.candidates)
        runs[label] = {"seconds": seconds, "scores": scores}
        print(f"{label}: {seconds:.1f} s", flush=True)
    local = runs["local, 1 process"]["scores"]
    result = {label: {"seconds": r["seconds"], "identical_to_local": r["scores"] == local}
              for label, r in runs.items()}
    speedup = runs["ray, 1 worker"]["seconds"] / runs["ray, 2 workers"]["seconds"]
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"candidates": args.candidates, "runs": result,
                                                    "speedup_2_vs_1_workers": speedup}, indent=1))
    lines = [f"# Importance table on Ray (`python bench/importance_scaling.py`, {args.candidates} candidates of the "
             "embedded ResNet-20, 20-step fine-tunes, 2-core machine)", "",
             "| executor | seconds | scores identical to local |", "|---|---|---|"]
    lines += [f"| {label} | {r['seconds']:.1f} | {'yes' if r['identical_to_local'] else 'NO'} |"
              for label, r in result.items()]
    lines += ["", f"2 Ray workers vs 1: **x{speedup:.2f}** (target >= 1.6)."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
