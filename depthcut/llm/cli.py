"""``depthcut llm prune`` and ``depthcut llm upscale``.

``add_llm_commands(subparsers)`` registers the ``llm`` command group on the main depthcut parser; each leaf
sets ``func`` (the main CLI calls ``args.func(args)`` and turns DepthcutError into a one-line message).
``main(argv)`` runs the group standalone: ``python -m depthcut.llm.cli prune --remove 6 --out DIR``.
Heavy imports (torch, transformers) happen inside the commands, so ``depthcut --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


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
    from .prune import PruneConfig, prune

    if args.config:
        config = PruneConfig.load(args.config)
        if args.out:
            config.out = args.out
    else:
        fields = dict(model=args.model, remove=args.remove, latency_budget_ms=args.latency_budget,
                      latency_phase=args.phase, unit=args.unit, out=args.out, corpus=args.corpus, seed=args.seed,
                      threads=args.threads, device=args.device, dtype=args.dtype)
        if args.criterion:
            fields["criterion"] = args.criterion
        if args.heal_steps is not None:
            fields["heal_steps"] = args.heal_steps
        if args.protect is not None:
            fields["protect"] = tuple(args.protect)
        if args.calib:
            fields["calib_windows"], fields["calib_length"] = args.calib
        if args.eval:
            fields["eval_windows"], fields["eval_length"] = args.eval
        if args.prompt_len:
            fields["prompt_len"] = args.prompt_len
        if args.rounds:
            fields["latency_rounds"] = args.rounds
        config = PruneConfig(**fields)
    if not config.out:
        from ..errors import DepthcutError
        raise DepthcutError("--out DIR is required (the pruned checkpoint and report go there)")
    result = prune(config)
    r = result.report
    print(f"removed {', '.join(f'{i}:{p}' for i, p in r['removed_units'])} ({r['criterion']}); PPL "
          f"{r['ppl_before']:.2f} -> {r['ppl_after']:.2f}; speed-up prefill {r['prefill_speedup']:.2f}x, decode "
          f"{r['decode_speedup']:.2f}x (ideal {r['ideal_speedup']:.2f}x); checkpoint and report in {config.out}")
    return 0


def cmd_upscale(args: argparse.Namespace) -> int:
    from ..errors import DepthcutError
    from .evaluate import perplexity
    from .loading import load_model
    from .mergekit import parse_passthrough_yaml, sequence_to_ranges, write_passthrough_yaml
    from .surgery import duplicate_layers, save_pretrained
    from .text import load_corpus, split_text
    from .upscale import upscale, upscale_plan

    model, tokenizer = load_model(args.model)
    n = model.config.num_hidden_layers
    if args.from_mergekit:
        with open(args.from_mergekit) as f:
            sequence, base = parse_passthrough_yaml(f.read())
        print(f"plan from {args.from_mergekit} (base {base}): {sequence_to_ranges(sequence)}", file=sys.stderr)
        bigger = duplicate_layers(model, sequence)
    else:
        sequence = upscale_plan(n, args.overlap)
        bigger = upscale(model, args.overlap)
    bigger.eval()
    report = {"model": args.model or "embedded:SmolLM2-135M-Instruct", "layers_before": n,
              "layers_after": bigger.config.num_hidden_layers, "layer_sequence": sequence,
              "overlap": None if args.from_mergekit else args.overlap}
    if tokenizer is not None and args.eval[0] > 0:
        eval_text = split_text(load_corpus(args.corpus), (0.6, 0.4))[1]
        before = perplexity(model, tokenizer, eval_text, args.eval[1], args.eval[0], corpus=args.corpus)
        after = perplexity(bigger, tokenizer, eval_text, args.eval[1], args.eval[0], corpus=args.corpus)
        report.update(ppl_base=before["ppl"], ppl_upscaled_before_training=after["ppl"],
                      protocol=after["protocol"])
    if args.mergekit_yaml:
        with open(args.mergekit_yaml, "w") as f:
            f.write(write_passthrough_yaml(sequence, args.model or "HuggingFaceTB/SmolLM2-135M-Instruct"))
    if args.out:
        save_pretrained(bigger, tokenizer, args.out)
        with open(os.path.join(args.out, "upscale_report.json"), "w") as f:
            json.dump(report, f, indent=1)
    elif not args.mergekit_yaml:
        raise DepthcutError("give --out DIR (checkpoint) and/or --mergekit-yaml FILE (plan)")
    ppl = (f"; held-out PPL {report['ppl_base']:.2f} (base) -> {report['ppl_upscaled_before_training']:.2f} "
           f"(up-scaled, before training)") if "ppl_base" in report else ""
    print(f"up-scaled {n} -> {report['layers_after']} layers{ppl}")
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
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="load, score, heal, time and save in this precision")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=None, help="a PruneConfig JSON file (overrides the flags except --out)")
    p.add_argument("--out", default=None, help="output directory (checkpoint, report.md, report.json)")
    p.set_defaults(func=cmd_prune)

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
    u.set_defaults(func=cmd_upscale)

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
    return llm


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: ``main(["prune", "--remove", "6", "--out", "DIR"])`` (no leading ``llm``)."""
    parser = argparse.ArgumentParser(prog="depthcut")
    add_llm_commands(parser.add_subparsers(dest="command", required=True))
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "llm":
        argv = ["llm", *argv]
    from ..cli import run_command

    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
