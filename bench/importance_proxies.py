"""Benchmark: what each importance proxy costs and how well it ranks (SPEC A6).

For every candidate of the embedded ResNet-20 (Fashion-MNIST), score it with each proxy — ``finetune`` at two
step counts, ``bn-recalibration`` and ``none`` — and report the wall time per table and the Spearman rank
correlation of each proxy's scores with the longest fine-tune's (the reference). Writes
bench/results/importance_proxies.{json,md}.

    python bench/importance_proxies.py [--model resnet20_fmnist] [--reference-steps 40]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from depthcut.cnn.graph import analyze  # noqa: E402
from depthcut.config import LayerMergeConfig  # noqa: E402
from depthcut.data import make_splits  # noqa: E402
from depthcut.models import resolve_model  # noqa: E402
from depthcut.cnn.build import is_trivial  # noqa: E402
from depthcut.importance import importance_store  # noqa: E402
from depthcut.importance.scorer import importance_manifest, score_candidates  # noqa: E402
from depthcut.train import evaluate  # noqa: E402


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet20_fmnist")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--reference-steps", type=int, default=40)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    torch.manual_seed(0)
    resolved = resolve_model(args.model)
    base = LayerMergeConfig(data=args.data, progress=False)
    splits = make_splits(args.data, base.finetune_size, base.score_size, seed=0, train_limit=base.train_limit)
    analysis = analyze(resolved.model, resolved.input_shape, exclude=resolved.chain_exclude)
    proxies = [("finetune", args.reference_steps), ("finetune", base.importance_steps),
               ("bn-recalibration", 0), ("none", 0)]
    tables, rows = {}, []
    with tempfile.TemporaryDirectory() as cache:          # fresh cache: every table is really computed
        for proxy, steps in proxies:
            cfg = LayerMergeConfig(data=args.data, importance=proxy, importance_steps=max(steps, 1),
                                   cache_dir=cache, progress=False)
            t0 = time.time()
            store = importance_store(importance_manifest(resolved.model, analysis, cfg), Path(cache))
            base_acc = evaluate(resolved.model, splits.score)
            scores = score_candidates(resolved.model, analysis, analysis.candidates, base_acc, splits, cfg, store,
                                      resolved.chain_exclude)
            label = f"{proxy} ({steps} steps)" if proxy == "finetune" else proxy
            tables[label] = scores
            rows.append({"proxy": label, "seconds": time.time() - t0})
            print(f"{label}: {rows[-1]['seconds']:.0f} s", flush=True)
    keys = [c.key for c in analysis.candidates if not is_trivial(c)]
    reference = rows[0]["proxy"]
    for r in rows:
        r["spearman_vs_reference"] = spearman([tables[r["proxy"]][k] for k in keys],
                                              [tables[reference][k] for k in keys])
        r["seconds_per_candidate"] = r["seconds"] / len(keys)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "candidates_scored": len(keys), "reference": reference,
            "score_images": base.score_size, "finetune_images": base.finetune_size,
            "batch_size": base.importance_batch_size, "torch": torch.__version__, "threads": torch.get_num_threads()}
    (out / "importance_proxies.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"Importance proxies on {args.model}: {len(keys)} candidates, scored on {base.score_size} held-out "
             f"images; rank agreement with `{reference}` (Spearman).", "",
             "| proxy | table time | per candidate | Spearman vs reference |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['proxy']} | {r['seconds']:.0f} s | {r['seconds_per_candidate']:.2f} s | "
                     f"{r['spearman_vs_reference']:.3f} |")
    text = "\n".join(lines) + "\n"
    (out / "importance_proxies.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
