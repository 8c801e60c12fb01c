"""``depthcut llm prune``, ``depthcut llm upscale`` and ``depthcut llm select``: thin layers over the verbs.

``add_llm_commands(subparsers)`` registers the ``llm`` command group on the main depthcut parser; each leaf
sets ``func`` (the main CLI calls ``args.func(args)`` and turns DepthcutError into a one-line message).
``main(argv)`` runs the group standalone: ``python -m depthcut.llm.cli prune --remove 6 --out DIR``.
Heavy imports (torch, transformers) happen inside the commands, so ``depthcut --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..command import run_command


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _windows(text: str) -> tuple[int, int]:
    try:
        n, length = (int(s) for s in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"windows must look like 16x128 (count x tokens), got {text!r}") from None
    return n, length


def cmd_prune(args: argparse.Namespace) -> int:
    """A thin layer: flags -> PruneConfig -> ``prune``; the verb saves and verifies the checkpoint."""
    from ..errors import DepthcutError
    from .prune import PruneConfig, prune

    if args.config:
        config = PruneConfig.load(args.config)
        if args.out:
            config.out = args.out
    else:
        fields = dict(model=args.model, remove=args.remove, latency_budget_ms=args.latency_budget,
                      latency_phase=args.phase, unit=args.unit, out=args.out, corpus=args.corpus, seed=args.seed,
                      threads=args.threads, device=args.device, dtype=args.dtype, progress=not args.quiet)
        optional = {"criterion": args.criterion, "heal_steps": args.heal_steps, "prompt_len": args.prompt_len,
                    "latency_rounds": args.rounds, "lm_eval_include": args.lm_eval_include,
                    "lm_eval_limit": args.lm_eval_limit, "cache_dir": args.cache_dir,
                    "protect": tuple(args.protect) if args.protect is not None else None,
                    "lm_eval_tasks": tuple(args.lm_eval) if args.lm_eval else None}
        fields.update({k: v for k, v in optional.items() if v is not None})
        if args.calib:
            fields["calib_windows"], fields["calib_length"] = args.calib
        if args.eval:
            fields["eval_windows"], fields["eval_length"] = args.eval
        config = PruneConfig(**fields)
    if not config.out:
        raise DepthcutError("--out DIR is required (the pruned checkpoint and report go there)")
    r = prune(None, None, config).report
    print(f"removed {', '.join(f'{i}:{p}' for i, p in r['removed_units'])} ({r['criterion']}); PPL "
          f"{r['ppl_before']:.2f} -> {r['ppl_after']:.2f}; speed-up prefill {r['prefill_speedup']:.2f}x, decode "
          f"{r['decode_speedup']:.2f}x (ideal {r['ideal_speedup']:.2f}x); checkpoint and report in {config.out}")
    return 0


def cmd_upscale(args: argparse.Namespace) -> int:
    """A thin layer: flags -> UpscaleConfig -> ``upscale``."""
    from pathlib import Path

    from ..errors import DepthcutError
    from .upscale import UpscaleConfig, upscale

    if not args.out and not args.mergekit_yaml:
        raise DepthcutError("give --out DIR (checkpoint) and/or --mergekit-yaml FILE (plan)")
    config = UpscaleConfig(model=args.model, overlap=args.overlap, from_mergekit=args.from_mergekit,
                           eval_windows=args.eval[0], eval_length=args.eval[1], corpus=args.corpus, out=args.out,
                           progress=not args.quiet)
    result = upscale(None, None, config)
    if args.mergekit_yaml:
        Path(args.mergekit_yaml).write_text(result.mergekit_yaml())
    r = result.report
    ppl = (f"; held-out PPL {r['ppl_base']:.2f} (base) -> {r['ppl_upscaled_before_training']:.2f} "
           f"(up-scaled, before training)") if "ppl_base" in r else ""
    print(f"up-scaled {r['layers_before']} -> {r['layers_after']} layers{ppl}")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    """Which units a criterion removes, without pruning: in memory, or streamed one block at a time."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from ..errors import DepthcutError
    from .device import resolve_dtype
    from .loading import hub_cache_path
    from .stream import stream_select
    from .text import calibration_windows, load_corpus, split_text

    path = Path(args.model)
    if not path.exists():
        path = hub_cache_path(args.model)
    if not path.is_dir():
        raise DepthcutError(f"llm select --stream reads a checkpoint folder of safetensors, got {args.model}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    calib_text = split_text(load_corpus(args.corpus), (0.1, 0.5, 0.4))[0]
    windows = calibration_windows(tokenizer, calib_text, args.calib[0], args.calib[1], args.seed, True)
    units, sm = stream_select(path, windows, args.criterion, args.remove, unit="block",
                              dtype=resolve_dtype(args.dtype), device=args.device or "cpu")
    print(json.dumps({"criterion": args.criterion, "remove": [list(u) for u in sorted(units)],
                      "peak_parameter_bytes": sm.peak_bytes, "model_parameter_bytes": sm.parameter_bytes()}))
    return 0


def add_llm_commands(subparsers) -> argparse.ArgumentParser:
    """Register ``llm prune`` and ``llm upscale`` under ``subparsers`` (an argparse subparsers action)."""
    llm = subparsers.add_parser("llm", help="depth pruning and depth up-scaling of Hugging Face causal LMs")
    sub = llm.add_subparsers(dest="llm_command", required=True)
    _add_prune(sub)
    _add_upscale(sub)
    _add_select(sub)
    return llm


def _add_prune(sub) -> None:
    p = sub.add_parser("prune", help="remove decoder blocks/sublayers, LoRA-heal, measure PPL and speed-up")
    p.add_argument("--model", default=None, help="HF checkpoint directory, .gguf file, or a Hugging Face id already in the local HF cache "
                        "(default: embedded SmolLM2-135M)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--remove", type=_positive_int, default=None, help="remove exactly N units")
    target.add_argument("--latency-budget", type=float, default=None, metavar="MS",
                        help="latency budget in ms (per decoded token, or per prompt with --phase prefill)")
    p.add_argument("--phase", choices=["decode", "prefill"], default="decode", help="what --latency-budget limits")
    p.add_argument("--criterion", default=None,
                   help="auto, ppl, sleb, taylor, taylor+, magnitude, mag+, block_influence, angular "
                        "(default auto: each cheap criterion proposes a selection; the lowest calibration NLL wins)")
    p.add_argument("--unit", choices=["block", "sublayer"], default="block")
    p.add_argument("--protect", type=int, nargs=2, metavar=("FIRST", "LAST"), default=None,
                   help="never remove the first/last blocks (default: the criterion's, 4 2 for taylor+/mag+)")
    p.add_argument("--heal-steps", type=int, default=None, help="LoRA steps (default 50; 0 = no healing)")
    p.add_argument("--calib", type=_windows, default=None, help="calibration windows, e.g. 16x128")
    p.add_argument("--eval", type=_windows, default=None, help="held-out windows, e.g. 32x128")
    p.add_argument("--corpus", default="lee", help="corpus name (lee, wiki-stemmed) or a UTF-8 text file")
    p.add_argument("--prompt-len", type=int, default=None, help="prefill prompt length for timing (default 128)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch threads while timing")
    p.add_argument("--cache-dir", default=None,
                   help="latency cache of budget runs (default: $DEPTHCUT_CACHE or ~/.cache/depthcut)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="load, score, heal, time and save in this precision")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lm-eval", nargs="+", default=None, metavar="TASK",
                   help="lm-eval zero-shot tasks on the dense and the pruned model: depthcut_heldout, "
                        "depthcut_next_sentence (written from the held-out split), or registry/--lm-eval-include "
                        "tasks whose data is on this machine")
    p.add_argument("--lm-eval-include", default=None, metavar="DIR", help="a folder of lm-eval task YAMLs")
    p.add_argument("--lm-eval-limit", type=_positive_int, default=None, metavar="N", help="documents per task")
    p.add_argument("--quiet", action="store_true", help="no stage lines on stderr")
    p.add_argument("--config", default=None, help="a PruneConfig JSON file (overrides the flags except --out)")
    p.add_argument("--out", default=None, help="output directory (checkpoint, report.md, report.json)")
    p.set_defaults(func=cmd_prune)


def _add_upscale(sub) -> None:
    u = sub.add_parser("upscale", help="SOLAR depth up-scaling; reports PPL before any training")
    u.add_argument("--model", default=None, help="HF checkpoint directory, .gguf file, or a Hugging Face id already in the local HF cache "
                        "(default: embedded SmolLM2-135M)")
    u.add_argument("--overlap", type=int, default=8, help="m: drop the last m of copy A and first m of copy B")
    u.add_argument("--from-mergekit", default=None, metavar="YAML", help="read the layer plan from a mergekit "
                   "passthrough YAML instead of --overlap")
    u.add_argument("--mergekit-yaml", default=None, metavar="YAML", help="write the plan as mergekit passthrough YAML")
    u.add_argument("--eval", type=_windows, default=(16, 128), help="held-out windows for PPL (0x128 = skip)")
    u.add_argument("--corpus", default="lee")
    u.add_argument("--out", default=None, help="output directory for the up-scaled checkpoint")
    u.add_argument("--quiet", action="store_true", help="no stage lines on stderr")
    u.set_defaults(func=cmd_upscale)


def _add_select(sub) -> None:
    s = sub.add_parser("select", help="which blocks a criterion removes, scored with one block in memory at a "
                                      "time (for models that do not fit)")
    s.add_argument("--model", required=True, help="checkpoint folder (safetensors) or a Hugging Face id in the cache")
    s.add_argument("--criterion", default="angular", help="angular, block_influence, ppl, magnitude, mag+")
    s.add_argument("--remove", type=_positive_int, required=True)
    s.add_argument("--calib", type=_windows, default=(16, 128), help="calibration windows, e.g. 16x128")
    s.add_argument("--corpus", default="lee")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    s.add_argument("--device", default=None)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_select)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: ``main(["prune", "--remove", "6", "--out", "DIR"])`` (no leading ``llm``)."""
    parser = argparse.ArgumentParser(prog="depthcut")
    add_llm_commands(parser.add_subparsers(dest="command", required=True))
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "llm":
        argv = ["llm", *argv]
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
