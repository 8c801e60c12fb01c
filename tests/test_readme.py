"""Every command in the README's "Command line" section runs as shown, on small settings.

The commands are read from README.md itself, so an example that drifts from the code fails here. Each runs
as a real subprocess (``python -m depthcut ...``) with its placeholders filled in (``mypkg.models:build`` ->
a small test model, ``path/to/images`` -> a generated image folder, output folders -> tmp_path, ``--device cuda``
-> ``cpu`` on a machine without a GPU, a Hugging Face id -> a local HF cache holding the embedded SmolLM2) and with
flags appended that shrink its budget (argparse keeps the last value of a repeated flag).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"

# Compress commands time on a simulated backend (tests/simulated_backend.py, loaded in the subprocess as a
# plugin): whether a real backend reaches a target depends on the machine's load (a README example at x1.15
# was refused on a busy machine), and no test may depend on the machine's speed. The real backends' timing
# is tested on its own (tests/latency).
SIMULATED = "sleepy-ort"
# flags appended per command: same meaning, smaller budget
SMALL = {
    "compress": ["--importance", "none", "--recovery-epochs", "0.02", "--finetune-size", "64", "--score-size",
                 "64", "--train-limit", "512", "--test-limit", "256", "--timing-rounds", "20", "--quiet", "--backend",
                 SIMULATED],
    "compare": ["--importance", "none", "--recovery-epochs", "0.02", "--finetune-size", "64", "--score-size", "64",
                "--train-limit", "512", "--test-limit", "256", "--timing-rounds", "20", "--joint-rounds", "6",
                "--quiet", "--backend", SIMULATED],
    "llm prune": ["--heal-steps", "2", "--calib", "2x32", "--eval", "2x32", "--rounds", "1", "--prompt-len", "16",
                  "--lm-eval-limit", "4"],
    "llm upscale": ["--eval", "2x64"],
    "llm select": ["--calib", "2x64"],
}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Command line", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("depthcut "):
                commands.append(line)
    return commands


def test_the_readme_lists_commands():
    kinds = {" ".join(shlex.split(c)[1:3]) if shlex.split(c)[1] == "llm" else shlex.split(c)[1]
             for c in readme_commands()}
    assert {"analyze", "compress", "llm prune", "llm upscale"} <= kinds


def _image_folder(root: Path) -> Path:
    from PIL import Image

    for c, name in enumerate(("cats", "dogs")):
        (root / name).mkdir(parents=True)
        for i in range(100):     # 160 training images: room for the 64 + 64 held-out ones
            Image.new("RGB", (20, 20), (200 * c, 2 * i, 90)).save(root / name / f"{i}.png")
    return root


def _hub_cache(root: Path, repo_id: str) -> Path:
    """A Hugging Face cache holding ``repo_id`` as the embedded SmolLM2 checkpoint (converted once, cached)."""
    from depthcut.llm.loading import _cache_dir_for, default_model_path, load_model

    load_model(None)                                    # makes sure the converted checkpoint exists
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "snapshots").mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40)).symlink_to(_cache_dir_for(default_model_path()), target_is_directory=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return root


def _original_ms(args: list[str]) -> float:
    """The command's model's latency at its input shape on the simulated backend the test times with."""
    import cli_models

    from depthcut.latency import get_backend, time_models

    model = getattr(cli_models, args[args.index("--model") + 1].split(":")[1])().eval()
    shape = tuple(int(d) for d in args[args.index("--input-shape") + 1].split(","))
    timing = time_models({"original": model}, torch.randn(shape), get_backend(SIMULATED), rounds=2, repeats=2)
    return timing["original"].median_ms


@pytest.mark.slow
@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs(command, tmp_path):
    args = shlex.split(command)[1:]
    kind = " ".join(args[:2]) if args[0] == "llm" else args[0]
    fills = {"mypkg.models:build": "cli_models:rgb_net", "path/to/images": str(_image_folder(tmp_path / "images"))
             if "path/to/images" in args else ""}
    args = [fills.get(a, a) for a in args]
    if "--device" in args and not torch.cuda.is_available():       # the GPU example, run on this CPU
        args[args.index("--device") + 1] = "cpu"
    for flag in ("--out", "--mergekit-yaml"):
        if flag in args:
            i = args.index(flag) + 1
            args[i] = str(tmp_path / args[i].strip("/"))
    if kind == "llm select":    # the README selects on smol-24/ made by the prune example: use the embedded model
        from depthcut.llm.loading import _cache_dir_for, default_model_path, load_model
        load_model(None)
        args[args.index("--model") + 1] = str(_cache_dir_for(default_model_path()))
    if "--latency-ms" in args:
        # An absolute budget depends on the model and the backend: keep the flag, with the value x1.3 needs.
        args[args.index("--latency-ms") + 1] = f"{_original_ms(args) / 1.3:.3f}"
    args += SMALL.get(kind, [])
    if kind in ("compress", "compare"):
        args += ["--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "DEPTHCUT_PLUGINS": "simulated_backend"}
    hub_ids = [a for a in args if a.startswith("HuggingFaceTB/")]
    if hub_ids:                 # a model id: served from a Hugging Face cache made here, offline
        env.update(HF_HUB_CACHE=str(_hub_cache(tmp_path / "hub", hub_ids[0])), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "depthcut", *args], capture_output=True, text=True,
                          timeout=900, env=env, cwd=tmp_path)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    if "--out" in args:
        assert any(Path(args[args.index("--out") + 1]).iterdir())
    if kind == "compress" and "fashion-mnist" in args:   # 10,000 test images: measured on --test-limit's sample,
        # and the report says so (the generated folder's test split is smaller than the limit: all of it)
        report = (Path(args[args.index("--out") + 1]) / "report.md").read_text()
        assert "a fixed sample of 256 images" in report
