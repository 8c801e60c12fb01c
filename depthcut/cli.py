"""Command line: ``depthcut analyze | compress | llm prune | llm upscale``.

User errors (DepthcutError) print one clear line and exit non-zero without a traceback; set
DEPTHCUT_DEBUG=1 to see the traceback anyway.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .command import run_command
from .errors import DepthcutError


from .importance.table import PROXIES
from .methods import get_method, method_names

def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape must look like 1,3,224,224, got {text!r}") from None
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"input shape must be N,C,H,W with positive sizes, got {text!r}")
    return shape


def cmd_analyze(args: argparse.Namespace) -> int:
    from .cnn.graph import analyze
    from .models import resolve_model

    resolved = resolve_model(args.model, pretrained=False)
    shape = args.input_shape or resolved.input_shape
    if shape is None:
        raise DepthcutError(f"no input shape known for {args.model!r}: pass --input-shape N,C,H,W")
    analysis = analyze(resolved.model, shape, exclude=resolved.chain_exclude)
    if args.json:
        print(json.dumps(analysis.summary(), indent=1))
    else:
        print(analysis.describe())
    return 0


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"shard I/N needs 0 <= I < N, got {text}")
    return i, n


def config_from_args(args: argparse.Namespace, **per_run: Any):
    """The LayerMergeConfig the shared run options describe (``--config FILE`` instead, when given); flags left
    out keep the config's defaults. ``per_run``: the fields only one verb sets (speed-up, method...)."""
    from .config import LayerMergeConfig

    if args.config:
        return LayerMergeConfig.load(args.config)
    fields = {
        "backend": args.backend, "quantize": args.quantize, "batch_size": args.batch_size, "data": args.data,
        "importance": args.importance, "importance_steps": args.importance_steps,
        "importance_mode": args.importance_mode, "adaptive_tolerance": args.adaptive_tolerance,
        "recovery_epochs": args.recovery_epochs, "distill": not args.no_distill,
        "input_shape": args.input_shape, "cache_dir": args.cache_dir, "seed": args.seed,
        "importance_seed": args.importance_seed,
        "threads": args.threads, "timing_threads": args.timing_threads, "progress": not args.quiet,
        "train_limit": args.train_limit, "test_limit": args.test_limit, "finetune_size": args.finetune_size,
        "score_size": args.score_size,
        "timing_rounds": args.timing_rounds, "timing_sessions": args.timing_sessions, "device": args.device,
        "amp": args.amp, "channels_last": args.channels_last or None, "latency_model": args.latency_model,
        "executor": args.executor, "workers": args.workers, "ray_address": args.address,
        "recovery_procs": args.recovery_procs, "adapt_head": args.adapt_head or None,
        "adapt_epochs": args.adapt_epochs, **per_run}
    return LayerMergeConfig(**{k: v for k, v in fields.items() if v is not None})


def cmd_compress(args: argparse.Namespace) -> int:
    from .compression import compress

    if args.task == "generation":                 # a diffusion U-Net (depthcut.diffusion)
        from .diffusion.cli import compress_generation
        return compress_generation(args)

    config = config_from_args(args, speedup=args.speedup, latency_ms=args.latency_ms, method=args.method,
                              shard=args.shard)
    result = compress(args.model or "resnet20_fmnist", config, out=args.out)
    r = result.report
    if "shard" in r:
        print(f"importance shard {r['shard'][0]}/{r['shard'][1]}: {r['computed']} entries computed here; "
              f"{r['entries_present']} of {r['entries_needed']} present in {r['store']} (a run without --shard "
              f"assembles the table and goes on)")
        return 0
    print(f"speed-up x{r['speedup']:.2f} [95% CI {r['speedup_low']:.2f}-{r['speedup_high']:.2f}] on {r['backend']} (batch {r['batch_size']}): "
          f"{r['latency_ms_before']:.3f} -> {r['latency_ms_after']:.3f} ms; accuracy "
          f"{r['accuracy_before']:.2f} -> {r['accuracy_after']:.2f}"
          + (f" (int8: {r['int8']['accuracy_int8_before']:.2f} -> {r['int8']['accuracy_int8_after']:.2f})"
             if r.get("int8") else "") + f"; report in {args.out}/report.md")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .comparison import CompareConfig, compare

    if args.compare_config:
        config = CompareConfig.load(args.compare_config)
    else:
        shared = {k: v for k, v in config_from_args(args).to_dict().items() if k not in ("method", "speedup")}
        config = CompareConfig(methods=tuple(args.methods), speedups=tuple(args.speedup), seeds=tuple(args.seeds or [args.seed or 0]),
                               match_tolerance=args.match_tolerance, joint_rounds=args.joint_rounds,
                               matching=args.match, fresh_timings=args.fresh_timings,
                               share_networks=args.share_networks, control=args.control,
                               compress={k: v for k, v in shared.items() if k not in ("latency_ms",
                                         "speed_tolerance", "shard", "seed")})
    comparison = compare(args.model or "resnet20_fmnist", config, out=args.out,
                         command="depthcut " + " ".join(getattr(args, "argv", [])))
    for target in config.speedups:
        cells = [f"{r['method']} {r['accuracy']:.2f} at x{r['speedup']:.2f}" if r["accuracy"] is not None
                 else f"{r['method']} did not land" for r in comparison.table(target)]
        print(f"x{target:g}: " + "; ".join(cells) + f" - most accurate: {comparison.best(target) or 'none'}"
              + ("" if comparison.matched(target) else " (speeds not matched: see the report)"))
    print(f"report in {args.out}/report.md")
    return 0


REPORTED_PACKAGES = ("depthcut", "torch", "transformers", "peft", "onnxruntime", "onnxscript", "onnx", "numpy",
                     "hypothesis", "torchvision", "timm")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages whose releases change depthcut's results (without importing them)."""
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def cmd_env(args: argparse.Namespace) -> int:
    versions = package_versions()
    print(json.dumps(versions, indent=1) if args.json else
          " ".join(f"{k}={v}" for k, v in versions.items() if v != "not installed"))
    return 0


def add_run_options(c: argparse.ArgumentParser) -> None:
    """The options of one compression run (a LayerMergeConfig), shared by ``compress`` and ``compare``."""
    c.add_argument("--data", default="fashion-mnist", help="fashion-mnist, mnist, digits, or an image folder")
    c.add_argument("--backend", default="onnxruntime", help="eager, compile, onnxruntime, openvino, tensorrt")
    c.add_argument("--quantize", default=None, choices=["int8"],
                   help="deploy int8 (onnxruntime / openvino): tables, landing and timing measure int8 networks")
    c.add_argument("--latency-model", default=None, choices=["auto", "per-call", "additive"],
                   help="rows minus the runtime's per-call cost, calibrated on whole networks, falling back to "
                        "plain sums when the networks contradict the table (auto, default); per-call refuses "
                        "instead; additive: plain sums")
    c.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when a GPU is present "
                   "and the backend runs on it, else cpu)")
    c.add_argument("--amp", default=None, choices=["bf16", "fp16"], help="mixed-precision fine-tuning")
    c.add_argument("--channels-last", action="store_true", help="fine-tune and time in channels_last")
    c.add_argument("--batch-size", type=int, default=None)
    c.add_argument("--input-shape", type=_shape, default=None)
    c.add_argument("--importance", default=None, choices=list(PROXIES),
                   help="; ".join(f"{name}: {cost}" for name, cost in PROXIES.items()))
    c.add_argument("--importance-steps", type=int, default=None)
    c.add_argument("--importance-mode", default=None, choices=["full", "adaptive"],
                   help="full: fine-tune every candidate (default); adaptive: a cheap score for every candidate, "
                        "fine-tunes only for a random sample and the candidates that can change the plan")
    c.add_argument("--adaptive-tolerance", type=float, default=None,
                   help="accuracy points (generation: importance) the adaptive plan may give away to stop "
                        "refining earlier (default 0)")
    c.add_argument("--finetune-size", type=int, default=None,
                   help="held-out images for the importance fine-tunes (default: min(5000, half the training set))")
    c.add_argument("--score-size", type=int, default=None,
                   help="held-out images for scoring them (default: min(2000, a fifth of the training set))")
    c.add_argument("--adapt-head", action="store_true",
                   help="when the model's outputs are not the data's classes, train a new head for them first "
                        "(alone, the rest frozen; named in the report) instead of refusing")
    c.add_argument("--adapt-epochs", type=float, default=None, help="epochs of that head training (default 2)")
    c.add_argument("--recovery-epochs", type=float, default=None)
    c.add_argument("--train-limit", type=int, default=None, help="use only N training images for recovery")
    c.add_argument("--test-limit", type=int, default=None,
                   help="measure accuracy on a fixed sample of N test images (quick runs; the report says N)")
    c.add_argument("--no-distill", action="store_true")
    c.add_argument("--timing-rounds", type=int, default=None,
                   help="interleaved rounds of each end-to-end timing (default 100)")
    c.add_argument("--timing-sessions", type=int, default=None,
                   help="runtime sessions per model in each timing, each in turn for a block of rounds, so that the "
                        "interval covers the spread between sessions (default 4)")
    c.add_argument("--executor", default=None, choices=["local", "process", "ray"],
                   help="where the importance entries run: in this process (default), a pool of --workers "
                        "processes, or Ray tasks (a GPU each where the cluster has GPUs)")
    c.add_argument("--workers", type=int, default=None, help="processes for --executor process (default 2)")
    c.add_argument("--recovery-procs", type=int, default=None,
                   help="data-parallel processes for the recovery fine-tune (torch.distributed: gloo on CPU, "
                        "one GPU each on CUDA; default 1)")
    c.add_argument("--address", default=None, help="--executor ray: the cluster's address (default: local "
                   "Ray, or RAY_ADDRESS)")
    c.add_argument("--config", default=None, help="a LayerMergeConfig JSON file (overrides the flags)")
    c.add_argument("--cache-dir", default=None)
    c.add_argument("--threads", type=int, default=None)
    c.add_argument("--timing-threads", type=int, default=None,
                   help="ONNX Runtime's threads for every timing (default: --threads); training keeps --threads")
    c.add_argument("--seed", type=int, default=None)
    c.add_argument("--importance-seed", type=int, default=None,
                   help="seed of the importance table (default: --seed); fix it to share one table across seeds")
    c.add_argument("--quiet", action="store_true")
    c.add_argument("--out", required=True)


def add_compress_command(sub) -> None:
    c = sub.add_parser("compress", help="LayerMerge: remove activations and convs, merge, recover, export")
    c.add_argument("--task", default="classification", choices=["classification", "generation"],
                   help="generation: a diffusion U-Net (diffusers UNet2DModel folder, or the embedded ddpm_fmnist), "
                        "speed-up of its DDIM sampling loop, Fréchet distance of samples")
    c.add_argument("--model", default=None, help="default: resnet20_fmnist (classification), ddpm_fmnist "
                                                 "(generation)")
    c.add_argument("--sampling-steps", type=int, default=None, help="generation: DDIM steps per timed run (20)")
    c.add_argument("--recovery-steps", type=int, default=None, help="generation: recovery fine-tune steps (500)")
    c.add_argument("--recovery-kd-weight", type=float, default=None,
                   help="generation: weight of the original U-Net's prediction in the recovery target (0)")
    c.add_argument("--recovery-ema", type=float, default=None,
                   help="generation: the recovered U-Net is an exponential moving average of its weights over "
                        "the recovery with this decay (0.999; 0: the last step's weights)")
    c.add_argument("--importance-reference", default=None, choices=["finetuned", "original"],
                   help="generation: score a row's fine-tuned loss against the original after the same fine-tune "
                        "(finetuned, default) or untouched (original)")
    c.add_argument("--fd-samples", type=int, default=None, help="generation: samples per Fréchet distance (256)")
    target = c.add_mutually_exclusive_group()
    target.add_argument("--speedup", type=float, default=None, help="target end-to-end speed-up (default 1.5)")
    target.add_argument("--latency-ms", type=float, default=None, help="target end-to-end latency in ms")
    c.add_argument("--method", default=None, choices=method_names(),
                   help="layermerge (default); baselines through the same pipeline: " + ", ".join(
                       f"{m}: {get_method(m).summary}" for m in method_names() if m != "layermerge"))
    c.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                   help="compute only shard I of N of the importance table into --cache-dir (shared by the "
                        "machines), then stop; a run without --shard assembles the table and goes on")
    add_run_options(c)
    c.set_defaults(func=cmd_compress)


def add_compare_command(sub) -> None:
    m = sub.add_parser("compare", help="compress with several methods at the same measured speed-ups and report "
                                       "which is most accurate (each timed with the others in the same rounds)")
    m.add_argument("--model", default=None, help="default: resnet20_fmnist")
    m.add_argument("--speedup", type=float, nargs="+", default=[1.5, 2.0], help="target speed-ups (1.5 2.0)")
    m.add_argument("--methods", nargs="+", default=["layermerge", "channel"], choices=method_names(),
                   help="registered methods to compare (layermerge channel)")
    m.add_argument("--seeds", type=int, nargs="+", default=None, help="one run of each method per seed (--seed)")
    m.add_argument("--match-tolerance", type=float, default=0.03,
                   help="every method lands within [target, target x (1 + this)] (0.03)")
    m.add_argument("--joint-rounds", type=int, default=60, help="rounds of each joint timing (60)")
    m.add_argument("--match", choices=("band", "select"), default="band",
                   help="band: each method's landed network, timed jointly; select: one network per method chosen "
                        "at a common measured point within 2-3 %%, each recovered once (depthcut.matching)")
    m.add_argument("--fresh-timings", type=int, default=1,
                   help="--match select: fresh joint timings of the chosen networks, minutes apart (1)")
    m.add_argument("--share-networks", action="store_true",
                   help="--match select with --importance-seed: later seeds recover the first seed's networks")
    m.add_argument("--control", action="store_true",
                   help="also the original, fine-tuned with the same recovery (x1.0)")
    m.add_argument("--compare-config", default=None, help="a CompareConfig JSON file (overrides the flags)")
    add_run_options(m)
    m.set_defaults(func=cmd_compare)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="depthcut", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("env", help="versions of the packages that change results (for bug reports, CI logs)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_env)

    a = sub.add_parser("analyze", help="show the conv chain, barriers and candidate counts of a CNN")
    a.add_argument("model", help="registered name, package.module:factory, or a torch.export .pt2 file")
    a.add_argument("--input-shape", type=_shape, default=None, help="N,C,H,W (default: the model's)")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.set_defaults(func=cmd_analyze)

    add_compress_command(sub)
    add_compare_command(sub)
    try:
        from .llm.cli import add_llm_commands
    except ImportError:  # the llm extra is optional
        add_llm_commands = None
    if add_llm_commands is not None:
        add_llm_commands(sub)
    return p


PLUGINS_VARIABLE = "DEPTHCUT_PLUGINS"


def load_plugins(names: str | None = None) -> list[str]:
    """Import the modules named in ``DEPTHCUT_PLUGINS`` (comma-separated): a module that registers a latency
    backend, a method or a model source (``register_backend``, ``register_method``...) extends the command
    line without a change to depthcut. A module that does not import is one clear error."""
    import importlib

    names = os.environ.get(PLUGINS_VARIABLE, "") if names is None else names
    loaded = []
    for name in filter(None, (n.strip() for n in names.split(","))):
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - any failure of a user's module is reported the same way
            raise DepthcutError(f"{PLUGINS_VARIABLE}: cannot import plugin module {name!r} "
                                f"({type(e).__name__}: {e})") from None
        loaded.append(name)
    return loaded


def main(argv: list[str] | None = None) -> int:
    try:
        load_plugins()
    except DepthcutError as e:
        print(f"depthcut: error: {' '.join(str(e).split())}", file=sys.stderr)
        return e.exit_code
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)      # what the user typed, for the reports
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
