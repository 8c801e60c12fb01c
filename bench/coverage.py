"""Coverage sweep: which CNNs people actually use does depthcut analyse, and are their merges exact?

For every torchvision classification model and the timm CNNs listed in TIMM_MODELS (random weights, random
non-trivial BatchNorm statistics):

* analysis at 224x224: chain positions, valid blocks, (block, kernel option) candidates, or the one-line
  reason it is refused;
* exactness against the intended function (depthcut.cnn.intended, float64) of RANDOM_PLANS random plans made
  of short blocks (<= 3 convs: the float64 composition of the longest blocks of a ResNet-152 would need tens
  of GB), on the merged and the unmerged form, at a smaller input (SIZE_EXACT; the chain does not depend on
  it).

Needs torchvision and timm, which do not import with the project's local CPU torch build: ``make coverage``
builds a separate environment with PyPI's torch (see the Makefile). Writes bench/results/coverage.{json,md};
resumable: models already in the JSON are skipped (``--fresh`` recomputes).
"""
from __future__ import annotations

import argparse
import gc
import json
import random
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from depthcut.cache import atomic_write_result  # noqa: E402
from depthcut.cnn.build import build_merged, build_unmerged, is_trivial, plan_from_blocks  # noqa: E402
from depthcut.cnn.graph import analyze  # noqa: E402
from depthcut.cnn.intended import STRUCTURE_TOLERANCE, plan_structure_errors, structure_ok, verify_plan  # noqa: E402
from depthcut.errors import DepthcutError  # noqa: E402

SIZE = 224
SIZE_EXACT = 96
MAX_PARAMS = 1.5e8     # float64 reference + two float64 copies of the network must fit in 24 GB
RANDOM_PLANS = 2
MAX_BLOCK = 3

# timm CNNs (>= 40): the mobile families, ResNet variants, grouped / SE / re-parameterisable / CSP / NAS nets
TIMM_MODELS = [
    "resnet18", "resnet50", "resnet50d", "resnext50_32x4d", "seresnet50", "seresnext50_32x4d", "ecaresnet50d",
    "skresnet18", "res2net50_14w_8s", "resnetv2_50", "regnetx_002", "regnety_002", "dla34", "dpn68",
    "densenet121", "vgg11_bn", "repvgg_a0", "mobileone_s0", "mobilenetv2_100", "mobilenetv3_large_100",
    "mobilenetv3_small_100", "efficientnet_b0", "efficientnet_lite0", "tf_efficientnet_b0", "mnasnet_100",
    "fbnetc_100", "spnasnet_100", "tinynet_a", "rexnet_100", "hardcorenas_a", "lcnet_050", "ghostnet_100",
    "ese_vovnet19b_dw", "cspresnet50", "cspdarknet53", "darknet53", "convnext_atto", "hrnet_w18_small",
    "xception41", "inception_v3", "mixnet_s", "semnasnet_100", "selecsls42b", "resnest14d", "gernet_s",
    "nf_resnet26", "resnetv2_50x1_bit",     # weight-standardised convs (ScaledStdConv2d, StdConv2d): issue 28
]


def calibrate_bn(model: torch.nn.Module, seed: int = 0, size: int | None = None) -> torch.nn.Module:
    """Non-trivial but well-conditioned BatchNorm: running statistics measured on random images (so every
    BN normalises what actually reaches it), then a random affine scale and shift. With arbitrary random
    statistics instead, a 200-layer network becomes chaotic and amplifies float64 rounding (1e-16) to 1e-2,
    which would hide the structural check in noise."""
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None                      # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, size or SIZE_EXACT, size or SIZE_EXACT, generator=gen))
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
            if m.affine:
                m.weight.copy_(torch.rand(m.num_features, generator=gen) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


def build(source: str, name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if source == "torchvision":
        import torchvision

        return torchvision.models.get_model(name, weights=None)
    import timm

    return timm.create_model(name, pretrained=False)


MAX_WEIGHTS = 2e7   # merged kernels above 20M weights (80 MB in float32) are left out of the random plans


def short_random_plan(analysis, seed: int):
    """A random plan of blocks of at most MAX_BLOCK convs whose merged kernels stay small (RegNet-Y-128GF's
    grouped 3x3 merged with its dense 1x1 is a 7392x7392x3x3 dense kernel: 3.9 GB in float64)."""
    by_start: dict[int, list] = {}
    for c in analysis.candidates:
        weights = c.in_channels * c.out_channels // (c.in_channels if c.depthwise else c.groups) * c.kernel ** 2
        if c.end - c.start <= MAX_BLOCK and (weights <= MAX_WEIGHTS or is_trivial(c)):
            by_start.setdefault(c.start, []).append(c)
    rng, blocks, pos = random.Random(seed), [], 0
    while pos < analysis.chain.length:
        blocks.append(rng.choice(by_start[pos]))
        pos = blocks[-1].end
    return plan_from_blocks(analysis.chain, blocks)


def check(source: str, name: str) -> dict:
    t0 = time.time()
    row = {"source": source, "model": name}
    try:
        model = build(source, name)
        params = sum(p.numel() for p in model.parameters())
        size = SIZE_EXACT
        if params <= MAX_PARAMS:
            for size in (SIZE_EXACT, SIZE, 299):    # ViT, Inception: only their own resolution (or larger)
                try:
                    model = calibrate_bn(model, size=size)
                    break
                except (RuntimeError, AssertionError, ValueError):
                    continue
    except Exception as e:  # noqa: BLE001 - a model this library version cannot build
        return row | {"status": "not built", "reason": f"{type(e).__name__}: {e}"[:300]}
    try:
        analysis = analyze(model, (1, 3, SIZE, SIZE))
    except DepthcutError as e:
        return row | {"status": "refused", "reason": " ".join(str(e).split())[:300], "seconds": time.time() - t0}
    nontrivial = sum(not is_trivial(c) for c in analysis.candidates)
    row |= {"positions": analysis.chain.length, "blocks": len(analysis.blocks),
            "candidates": len(analysis.candidates), "merge_candidates": nontrivial,
            "barriers": len(analysis.chain.barriers)}
    if nontrivial == 0:
        return row | {"status": "no candidates", "reason": _why(analysis), "seconds": time.time() - t0}
    if params > MAX_PARAMS:
        return row | {"status": "not checked", "reason": f"{params / 1e6:.0f}M parameters: the float64 copies of "
                      f"the exactness check exceed this machine's 24 GB", "seconds": time.time() - t0}
    del analysis
    gc.collect()
    small = analyze(model, (1, 3, size, size))
    shape = (1, 3, size, size)
    checks, deployed = [], []
    for seed in range(RANDOM_PLANS):
        plan = short_random_plan(small, seed)
        checks.append(plan_structure_errors(model, small.gm, small.chain, plan, shape))
        merged = build_merged(build_unmerged(small.gm, small.chain, plan).eval(), small.chain, plan)
        deployed.append(verify_plan(merged, model, small.chain, plan, shape))
    ok = all(structure_ok(c) for c in checks)
    return row | {"status": "exact" if ok else "WRONG",
                  "max_block_error": max(c["blocks"] for c in checks),
                  "max_intended_error": max(max(c["merged"], c["unmerged"]) for c in checks),
                  "allowed_by_rounding": min(c["allowed"] for c in checks),
                  "max_deployed_float32_error": max(deployed), "seconds": time.time() - t0}


def _why(analysis) -> str:
    reasons = list(analysis.chain.barrier_reasons.values()) + list(analysis.chain.notes)
    return "; ".join(sorted(set(reasons)))[:300] or "every conv is isolated between barriers"


def markdown(rows: list[dict], versions: dict) -> str:
    def table(source: str) -> list[str]:
        sel = [r for r in rows if r["source"] == source]
        with_cands = sum(r.get("merge_candidates", 0) > 0 for r in sel)
        exact = sum(r["status"] == "exact" for r in sel)
        wrong = sum(r["status"] == "WRONG" for r in sel)
        out = [f"## {source}: {len(sel)} models, {with_cands} with merge candidates, {exact} exact on random plans, "
               f"{wrong} wrong", "", "| model | status | positions | candidates | merge candidates | block error "
               "| whole network (rounding allows) | deployed float32 | reason (refused / no candidates) |",
               "|---|---|---|---|---|---|---|---|---|"]

        def e(r, key):
            return f"{r[key]:.1e}" if key in r else ""

        for r in sel:
            whole = f"{e(r, 'max_intended_error')} ({e(r, 'allowed_by_rounding')})" if "max_intended_error" in r else ""
            out.append(f"| {r['model']} | {r['status']} | {r.get('positions', '')} | {r.get('candidates', '')} | "
                       f"{r.get('merge_candidates', '')} | {e(r, 'max_block_error')} | {whole} | "
                       f"{e(r, 'max_deployed_float32_error')} | {r.get('reason', '')} |")
        return out + [""]

    head = [f"# Coverage sweep: `python bench/coverage.py` ({', '.join(f'{k} {v}' for k, v in versions.items())})",
            "", f"Analysis at {SIZE}x{SIZE}; exactness: {RANDOM_PLANS} random plans of blocks of at most {MAX_BLOCK} "
            f"convs (merged kernels of at most {MAX_WEIGHTS:.0e} weights) per model at {SIZE_EXACT}x{SIZE_EXACT}, "
            f"merged and unmerged forms built in float64 against the intended function in float64. 'exact': every "
            f"block within {STRUCTURE_TOLERANCE:.0e} of the intended block on the same input, and the whole network "
            f"within what float64 rounding of that size explains (measured by perturbing the intended network's "
            f"block outputs; random-weight networks amplify it a lot). The deployed float32 network adds the "
            f"rounding of the merged kernels. Random weights; BN statistics measured on random images, random BN "
            f"affine (`calibrate_bn`).", ""]
    return "\n".join(head + table("torchvision") + table("timm")) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "coverage"))
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated model names")
    args = ap.parse_args()
    import timm
    import torchvision

    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__}
    out = Path(args.out)
    done = {} if args.fresh or not out.with_suffix(".json").exists() else \
        {(r["source"], r["model"]): r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    todo = [("torchvision", n) for n in torchvision.models.list_models(module=torchvision.models)]
    todo += [("timm", n) for n in TIMM_MODELS]
    if args.only:
        keep = set(args.only.split(","))
        todo = [t for t in todo if t[1] in keep]
    torch.set_grad_enabled(False)
    for k, (source, name) in enumerate(todo, 1):
        if (source, name) in done and not args.only:
            continue
        try:
            row = check(source, name)
        except Exception as e:  # noqa: BLE001 - a crash is a finding: record it, go on
            row = {"source": source, "model": name, "status": "CRASH",
                   "reason": f"{type(e).__name__}: {' '.join(str(e).split())}"[:300],
                   "traceback": traceback.format_exc()[-2000:]}
        done[(source, name)] = row
        print(f"[{k}/{len(todo)}] {source}:{name}: {row['status']} {row.get('merge_candidates', '')} "
              f"{row.get('max_intended_error', '')} {row.get('reason', '')[:120]}", flush=True)
        rows = sorted(done.values(), key=lambda r: (r["source"] != "torchvision", r["model"]))
        atomic_write_result(out, {"versions": versions, "rows": rows}, markdown(rows, versions))
        gc.collect()


if __name__ == "__main__":
    main()
