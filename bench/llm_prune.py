"""Benchmark: depth pruning criteria on SmolLM2-135M-Instruct (remove 6 of 30 blocks) + SOLAR up-scaling.

For every criterion of depthcut.llm.criteria: which blocks it removes, held-out PPL with no healing and after
the same short LoRA heal, and the time the criterion took. Then the measured prefill / decode speed-up of a
24-block model against the dense one (interleaved, CPU eager, batch 1) vs the ideal 30/24 = 1.25, and the PPL
of the 30 -> 44-layer up-scaled model (overlap 8) before any training.

Everything is CPU. Sizes are flags; the defaults are what a loaded 2-core machine can do in ~20 minutes
(the numbers are then indicative, not paper-grade: small calibration, short held-out set, token heal).
Results: bench/results/llm_prune.{json,md}, rewritten after every stage (a killed run keeps what it did).

    python bench/llm_prune.py [--calib 4x64] [--eval 8x128] [--heal-steps 10] [--heal-batch 2] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from depthcut.cache import atomic_write_result, atomic_write_text
from depthcut.llm import criteria as C
from depthcut.llm.evaluate import eval_windows, perplexity_of_windows, protocol
from depthcut.llm.heal import heal
from depthcut.llm.latency import measure_throughput
from depthcut.llm.loading import load_model
from depthcut.llm.prune import select_units
from depthcut.llm.surgery import remove_units
from depthcut.llm.text import bos_id, calibration_windows, load_corpus, split_text, text_tokens, windows_from_ids

RESULTS = Path(__file__).resolve().parent / "results"
ORDER = ["ppl", "taylor+", "taylor", "mag+", "magnitude", "block_influence", "angular", "sleb"]  # sleb last: slowest


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def size(text: str) -> tuple[int, int]:
    n, length = text.lower().split("x")
    return int(n), int(length)


def markdown(r: dict) -> str:
    a = r["args"]
    lines = ["# depthcut llm prune benchmark: SmolLM2-135M-Instruct, remove 6 of 30 blocks", "",
             f"Machine: CPU only ({r['env']['threads']} torch thread(s), shared 2-core box, load varies), "
             f"torch {r['env']['torch']}, transformers {r['env']['transformers']}. Model: embedded Q4_1 GGUF "
             f"dequantized to float32.", "",
             f"PPL protocol: {r['protocol']['windows']} held-out windows of {r['protocol']['window']} tokens "
             f"(non-overlapping, BOS `{r['protocol']['bos_token']}` prepended, {r['protocol']['scored_tokens_per_window']}"
             f" scored tokens each) of the `lee` news corpus, held-out split (last 40%); calibration: {a['calib']} "
             f"random windows of the first 10%; heal: {a['heal_steps']} LoRA steps (r 8, α 16, dropout 0.05, lr 1e-4) "
             f"x batch {a['heal_batch']} windows of {a['heal_len']} tokens from the middle 50%. Dense PPL "
             f"**{r.get('dense_ppl', float('nan')):.3f}**.", "",
             "| criterion | removed blocks | PPL no heal | PPL healed | criterion time (s) |", "|---|---|---|---|---|"]
    for name in ORDER:
        c = r["criteria"].get(name)
        if not c:
            continue
        key = ",".join(map(str, c["removed"]))
        e = r["evaluations"].get(key, {})
        fmt = lambda v: f"{v:.3f}" if isinstance(v, (int, float)) else "—"
        lines.append(f"| {name} | {key} | {fmt(e.get('ppl_no_heal'))} | {fmt(e.get('ppl_healed'))} | "
                     f"{c['seconds']:.1f} |")
    if "speed" in r:
        s = r["speed"]
        lines += ["", f"Speed (24 vs 30 blocks, CPU eager, batch 1, prompt {a['prompt_len']} tokens, "
                      f"{a['decode_tokens']} decoded tokens, {a['rounds']} interleaved rounds, medians):", "",
                  "| | prefill ms | decode ms/token |", "|---|---|---|"]
        for name, m in s["models"].items():
            extra = (f" (min {m['prefill_min_ms']:.1f})", f" (min {m['decode_min_ms_per_token']:.2f})") \
                if "prefill_min_ms" in m else ("", "")
            lines.append(f"| {name} | {m['prefill_ms']:.1f}{extra[0]} | {m['decode_ms_per_token']:.2f}{extra[1]} |")
        lines += ["", f"Prefill speed-up **{s['prefill_speedup']:.3f}x** ({100 * s['prefill_speedup'] / s['ideal_speedup']:.0f}% "
                      f"of ideal {s['ideal_speedup']:.2f}), decode speed-up **{s['decode_speedup']:.3f}x** "
                      f"({100 * s['decode_speedup'] / s['ideal_speedup']:.0f}% of ideal), from medians."]
        if "prefill_speedup_min" in s:
            lines.append(f"From the fastest round of each model (noise on a shared machine only adds time): "
                         f"prefill {s['prefill_speedup_min']:.3f}x, decode {s['decode_speedup_min']:.3f}x.")
    if "upscale" in r:
        u = r["upscale"]
        lines += ["", f"Up-scaled (SOLAR, overlap 8): {u['layers']} layers, PPL before any training "
                      f"**{u['ppl']:.3f}** (dense 30-layer {r['dense_ppl']:.3f}), same protocol."]
    if r.get("notes"):
        lines += ["", *[f"- {n}" for n in r["notes"]]]
    return "\n".join(lines) + "\n"


def save(r: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_result(RESULTS / "llm_prune", r, markdown(r))


def measure_speed(model, tok, args) -> dict:
    log(f"speed: dense vs {30 - args.remove}-block model, {args.rounds} interleaved rounds")
    some = [(b, "block") for b in range(3, 3 + args.remove)]  # speed depends on the depth, not which blocks
    pruned = remove_units(model, some).eval()
    speed = measure_throughput({"dense (30)": model, f"pruned ({30 - args.remove})": pruned}, tok, args.prompt_len,
                               args.decode_tokens, args.rounds, threads=args.threads)
    d, q = speed["models"].values()
    speed["prefill_speedup"] = d["prefill_ms"] / q["prefill_ms"]
    speed["decode_speedup"] = d["decode_ms_per_token"] / q["decode_ms_per_token"]
    if "prefill_min_ms" in d:
        speed["prefill_speedup_min"] = d["prefill_min_ms"] / q["prefill_min_ms"]
        speed["decode_speedup_min"] = d["decode_min_ms_per_token"] / q["decode_min_ms_per_token"]
    speed["ideal_speedup"] = 30 / (30 - args.remove)
    return speed


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calib", default="4x64", help="calibration windows NxLEN")
    p.add_argument("--eval", default="8x128", help="held-out windows NxLEN")
    p.add_argument("--heal-steps", type=int, default=10)
    p.add_argument("--heal-batch", type=int, default=2)
    p.add_argument("--heal-len", type=int, default=64)
    p.add_argument("--remove", type=int, default=6)
    p.add_argument("--criteria", default=",".join(ORDER))
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-upscale", action="store_true")
    p.add_argument("--markdown-only", action="store_true", help="re-render the .md from the existing .json")
    p.add_argument("--speed-only", action="store_true", help="re-measure only the speed-up into the existing .json")
    args = p.parse_args(argv)
    if args.markdown_only:
        r = json.loads((RESULTS / "llm_prune.json").read_text())
        atomic_write_text(RESULTS / "llm_prune.md", markdown(r))
        return r
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import transformers
    r: dict = {"args": vars(args), "criteria": {}, "evaluations": {}, "notes": [],
               "env": {"torch": torch.__version__, "transformers": transformers.__version__,
                       "threads": torch.get_num_threads()}}

    log("loading SmolLM2-135M-Instruct")
    model, tok = load_model(None)
    if args.speed_only:
        old = json.loads((RESULTS / "llm_prune.json").read_text())
        old["speed"] = measure_speed(model, tok, args)
        old["args"].update({k: getattr(args, k) for k in ("prompt_len", "decode_tokens", "rounds", "threads")})
        save(old)
        return old
    calib_text, heal_text, eval_text = split_text(load_corpus("lee"), (0.1, 0.5, 0.4))
    n_cal, len_cal = size(args.calib)
    n_eval, len_eval = size(args.eval)
    calib = calibration_windows(tok, calib_text, n_cal, len_cal, seed=0)
    held_out = eval_windows(tok, eval_text, len_eval, n_eval)
    heal_ids = text_tokens(tok, heal_text)
    heal_windows = windows_from_ids(heal_ids, args.heal_steps * args.heal_batch, args.heal_len, 0, bos_id(tok))
    r["protocol"] = protocol(tok, len_eval, len(held_out), True, "lee")
    log("dense PPL")
    r["dense_ppl"] = perplexity_of_windows(model, held_out)["ppl"]
    save(r)

    # speed and up-scaling first (cheap); then criteria one by one, each evaluated and healed at once, so a
    # run cut short still has complete rows
    r["speed"] = measure_speed(model, tok, args)
    save(r)

    if not args.skip_upscale:
        log("up-scaling 30 -> 44 layers (overlap 8)")
        from depthcut.llm.upscale import depth_upscale
        big = depth_upscale(model, 8).eval()
        r["upscale"] = {"layers": big.config.num_hidden_layers, "overlap": 8,
                        "ppl": perplexity_of_windows(big, held_out)["ppl"]}
        del big
        save(r)

    for name in args.criteria.split(","):
        crit = C.get_criterion(name)
        log(f"criterion {name}")
        start = time.perf_counter()
        removed, info = select_units(model, calib, crit, "block", crit.protect, args.remove)
        r["criteria"][name] = {"removed": [u[0] for u in removed], "seconds": time.perf_counter() - start,
                               "protect": list(crit.protect), **info}
        save(r)
        key = ",".join(str(u[0]) for u in removed)
        if key in r["evaluations"]:
            continue
        log(f"evaluate removal {key}")
        pruned = remove_units(model, removed).eval()
        e = {"ppl_no_heal": perplexity_of_windows(pruned, held_out)["ppl"]}
        r["evaluations"][key] = e
        save(r)
        if args.heal_steps > 0:
            start = time.perf_counter()
            healed = heal(pruned, heal_windows, args.heal_steps, args.heal_batch, seed=0, log=sys.stderr)
            e["heal_seconds"] = time.perf_counter() - start
            e["ppl_healed"] = perplexity_of_windows(healed, held_out)["ppl"]
            save(r)
    log("done")
    return r


if __name__ == "__main__":
    main()
