"""LLM depth pruning on a GPU in bfloat16 (issue 10): ``depthcut.llm.prune`` end to end on CUDA.

For SmolLM2-135M and Gemma-3-270M - their architectures (bench/configs/*.json, read from the real
checkpoints' configs) with seeded random weights, because the weights cannot travel to the GPU machine
(over its 64 MiB transfer limit) and no hub is reachable there; speed and cached-decode correctness do not
depend on the weights, perplexities here do and mean nothing - it runs the whole ``prune`` pipeline in
bfloat16 on the device: calibration and the angular criterion, removal of 20% of the blocks, a short LoRA
heal, interleaved prefill and decode timing at batch 1 (prompt 128, 32 decoded tokens) against the ideal
L / (L - k), saving, and the checks on the saved checkpoint (stock reload, prefill-then-decode against
full-sequence logits, in bf16 tolerance).

Text: the gensim ``lee`` corpus and the SmolLM2 tokenizer, from ``--assets`` (copied there by
``--prepare-assets`` on a machine that has them; the Gemma model reads SmolLM2's token ids, all < its vocab).

    python bench/llm_gpu_check.py --prepare-assets         # here: copy the corpus and tokenizer
    PYTHONPATH=. python3 bench/llm_gpu_check.py            # on the GPU machine (carry .cache/gpu_assets)
    python bench/llm_gpu_check.py --device cpu --quick     # a CPU dry run of the script

Writes ``--out`` (JSON + Markdown).
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from depthcut.llm.prune import PruneConfig, prune  # noqa: E402

MODELS = {"SmolLM2-135M": "smollm2_135m.json", "Gemma-3-270M": "gemma3_270m.json"}
ASSETS = ROOT / ".cache" / "gpu_assets"


def prepare_assets(folder: Path) -> None:
    import shutil

    from depthcut.llm.loading import load_model
    from depthcut.llm.text import load_corpus

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lee_background.txt").write_text(load_corpus("lee"))
    _, tokenizer = load_model(None)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(Path(tmp) / name, folder / name)
    print(f"assets in {folder}")


def random_model(config_file: str, dtype: torch.dtype, device: str, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = json.loads((ROOT / "bench" / "configs" / config_file).read_text())
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()
    model.generation_config.eos_token_id = None
    return model


def check(name: str, config_file: str, args, tokenizer) -> dict:
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[args.dtype]
    model = random_model(config_file, dtype, args.device)
    blocks = model.config.num_hidden_layers
    with tempfile.TemporaryDirectory() as out:
        cfg = PruneConfig(remove=round(0.2 * blocks), criterion="angular", unit="block",
                          heal_steps=2 if args.quick else 20, heal_batch=4,
                          corpus=str(Path(args.assets) / "lee_background.txt"),
                          calib_windows=4 if args.quick else 16, calib_length=128,
                          eval_windows=4 if args.quick else 16, eval_length=128,
                          prompt_len=32 if args.quick else 128, decode_tokens=4 if args.quick else 32,
                          latency_rounds=2 if args.quick else 15, device=args.device, dtype=args.dtype, out=out)
        t0 = time.time()
        result = prune(model, tokenizer, cfg)
        seconds = time.time() - t0
        saved = sorted(p.name for p in Path(out).iterdir())
    r = result.report
    row = {k: r[k] for k in ("num_blocks_before", "num_blocks_after", "removed_units", "prefill_speedup",
                             "decode_speedup", "ideal_speedup", "prefill_fraction_of_ideal",
                             "decode_fraction_of_ideal", "reload_max_rel_logit_error", "decode_max_rel_logit_error",
                             "reload_decode_max_rel_logit_error", "verify_tolerance", "device_name", "dtype",
                             "ppl_before", "ppl_after")}
    row.update({"model": name, "seconds": seconds, "saved_files": saved,
                "speed": r["speed"]["models"], "timing_protocol": r["speed"]["protocol"]})
    print(f"{name}: removed {len(r['removed_units'])} of {blocks} blocks; prefill x{r['prefill_speedup']:.3f}, "
          f"decode x{r['decode_speedup']:.3f} (ideal x{r['ideal_speedup']:.3f}); decode check "
          f"{r['reload_decode_max_rel_logit_error']:.1e} (tolerance {r['verify_tolerance']:.0e}); {seconds:.0f} s",
          flush=True)
    return row


def markdown(report: dict) -> str:
    lines = [f"# LLM pruning on {report['device_name']} in {report['dtype']}: `python bench/llm_gpu_check.py`", "",
             f"torch {report['torch']}, transformers {report['transformers']}. The models' architectures with "
             f"seeded random weights (the real weights cannot reach the GPU machine): speed and cached-decode "
             f"correctness do not depend on them; the perplexities of random weights mean nothing and are not "
             f"shown. Batch 1, prompt {report['prompt_len']}, {report['decode_tokens']} decoded tokens, medians "
             f"of interleaved rounds; ideal = L / (L - k).", "",
             "| model | blocks | prefill speed-up | decode speed-up | ideal | prefill / ideal | decode / ideal "
             "| reload error | cached-decode error (saved) | tolerance | prune time |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in report["models"]:
        lines.append(f"| {m['model']} | {m['num_blocks_before']} -> {m['num_blocks_after']} | "
                     f"x{m['prefill_speedup']:.3f} | x{m['decode_speedup']:.3f} | x{m['ideal_speedup']:.3f} | "
                     f"{m['prefill_fraction_of_ideal']:.0%} | {m['decode_fraction_of_ideal']:.0%} | "
                     f"{m['reload_max_rel_logit_error']:.1e} | {m['reload_decode_max_rel_logit_error']:.1e} | "
                     f"{m['verify_tolerance']:.0e} | {m['seconds']:.0f} s |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--assets", default=str(ASSETS))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--quick", action="store_true", help="tiny settings for a CPU dry run")
    ap.add_argument("--prepare-assets", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "llm_gpu_check"))
    args = ap.parse_args()
    if args.prepare_assets:
        prepare_assets(Path(args.assets))
        return
    import transformers
    from transformers import AutoTokenizer

    from depthcut.llm.device import describe, resolve_device

    tokenizer = AutoTokenizer.from_pretrained(args.assets)
    report = {"device_name": describe(resolve_device(args.device)), "dtype": args.dtype, "torch": torch.__version__,
              "transformers": transformers.__version__, "python": platform.python_version(),
              "prompt_len": 32 if args.quick else 128, "decode_tokens": 4 if args.quick else 32, "models": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        report["models"].append(check(name, MODELS[name], args, tokenizer))
        out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
        out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out}.md")


if __name__ == "__main__":
    main()
