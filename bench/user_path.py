"""The real user's path, end to end (issue 33): a timm model by name and a small image folder of one's own.

Builds the folder the issue was found with - 4 Fashion-MNIST classes as 64x64 RGB PNGs, 1,205 train / 249 test
images - and runs the command line on it twice with ``timm:resnet18d@random`` (timm's architecture, its 1000-way
ImageNet head, random weights: nothing downloads), on ONNX Runtime CPU:

* ``--speedup 1.3``: beyond what the table could reach with the 1000-way head (the deep stem and the head
  stay); with ``--adapt-head`` the head is 4-way and the report says whether it is still out of reach (then:
  refused before the importance table, in one line, with the reachable maximum);
* ``--speedup 1.05``: feasible; expected: a plan landed whose confirmation and final timing agree with the
  probe that accepted it;
* ``--speedup 2.0``: beyond the fastest plan even with the 4-way head; expected: refused before the importance
  table, in one line, with the reachable maximum.

Both with ``--adapt-head`` (the folder has 4 classes, the model 1000 outputs) and without the split sizes (sized
from the data). Needs timm, hence PyPI's torch build (``make coverage`` builds that environment):

    .venv-coverage/bin/python bench/user_path.py

Writes bench/results/user_path.{json,md}.
"""
from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
CLASSES = {0: "t-shirt", 1: "trouser", 2: "pullover", 3: "dress"}
COUNTS = {"train": 1205, "test": 249}


def idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def make_folder(root: Path) -> Path:
    """4 classes, 64x64 RGB PNGs, the issue's counts (the first images of each class, in file order)."""
    from PIL import Image

    if (root / "done").exists():
        return root
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = idx(FMNIST / f"{prefix}-images-idx3-ubyte.gz")
        labels = idx(FMNIST / f"{prefix}-labels-idx1-ubyte.gz")
        keep = [i for i in range(len(labels)) if labels[i] in CLASSES][:COUNTS[split]]
        for i in keep:
            folder = root / split / CLASSES[int(labels[i])]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).convert("RGB").resize((64, 64)).save(folder / f"{i}.png")
    (root / "done").write_text("ok")
    return root


def run(args: list[str]) -> dict:
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "depthcut", *args], capture_output=True, text=True)
    return {"command": "depthcut " + " ".join(args), "exit": proc.returncode, "seconds": time.time() - t0,
            "stdout": proc.stdout.strip().splitlines()[-3:], "stderr": proc.stderr.strip().splitlines()[-3:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(ROOT / ".cache" / "user_path"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "user_path"))
    args = ap.parse_args()
    work = Path(args.work)
    images = make_folder(work / "images")
    base = ["compress", "--model", "timm:resnet18d@random", "--data", str(images), "--input-shape", "1,3,64,64",
            "--backend", "onnxruntime", "--adapt-head", "--importance-steps", "5", "--recovery-epochs", "0.2",
            "--cache-dir", str(work / "cache")]
    results = {"refused": run(base + ["--speedup", "1.3", "--out", str(work / "out-1.3")]),
               "landed": run(base + ["--speedup", "1.05", "--out", str(work / "out-1.05")]),
               "beyond": run(base + ["--speedup", "2.0", "--out", str(work / "out-2.0")])}
    report_path = work / "out-1.05" / "report.json"
    if report_path.exists():
        r = json.loads(report_path.read_text())
        accepted = next(p for p in reversed(r["probes"]) if p["meets"])
        results["landed"]["report"] = {
            k: r[k] for k in ("speedup", "speedup_low", "speedup_high", "confirmation", "relandings",
                              "final_inside_probe_interval", "accuracy_before", "accuracy_after", "classes",
                              "reachable", "model_error_largest", "params_before", "params_after")}
        results["landed"]["report"]["accepting_probe"] = {k: accepted[k] for k in
                                                          ("measured_ratio", "measured_low", "measured_high")}
        results["landed"]["report"]["split_sizes"] = [r["config"]["finetune_size"], r["config"]["score_size"]]
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = ["# The real user's path: `.venv-coverage/bin/python bench/user_path.py`", "",
             "timm's resnet18d (random weights, 1000-way head) on a folder of 4 Fashion-MNIST classes as 64x64 RGB "
             "PNGs (1,205 train / 249 test), ONNX Runtime CPU, `--adapt-head`, split sizes from the data.", ""]
    refused, landed = results["refused"], results["landed"]
    verdict = ("refused up front" if refused["exit"] else
               "not refused: with the 4-way head (a 1000-way one no longer runs) the table reaches it")
    lines += [f"## x1.3: {verdict}", "", f"`{refused['command']}`", "",
              f"exit {refused['exit']} after {refused['seconds']:.0f} s:", "", "```", *refused["stderr"], "```", "",
              "## x1.05: landed", "", f"`{landed['command']}`", "", f"exit {landed['exit']} after "
              f"{landed['seconds']:.0f} s.", ""]
    r = landed.get("report")
    if r:
        p, c = r["accepting_probe"], r["confirmation"]
        lines += ["| | speed-up (95 % CI) |", "|---|---|",
                  f"| fastest plan the table allows (before the importance table) | x{r['reachable']['ratio']:.3f} "
                  f"[{r['reachable']['low']:.3f}, {r['reachable']['high']:.3f}] |",
                  f"| the probe that accepted the plan | x{p['measured_ratio']:.3f} [{p['measured_low']:.3f}, "
                  f"{p['measured_high']:.3f}] |",
                  f"| its confirmation (fresh sessions) | x{c['ratio']:.3f} [{c['low']:.3f}, {c['high']:.3f}] |",
                  f"| final timing after recovery | x{r['speedup']:.3f} [{r['speedup_low']:.3f}, "
                  f"{r['speedup_high']:.3f}] |", "",
                  f"Final timing inside the accepting probe's interval: **{r['final_inside_probe_interval']}**; "
                  f"re-landings: {r['relandings']}; the latency model's largest error on the probes "
                  f"{r['model_error_largest']:.1%}. Head: {r['classes']}. Split sizes from the data: "
                  f"{r['split_sizes'][0]} / {r['split_sizes'][1]}. Accuracy {r['accuracy_before']:.2f} -> "
                  f"{r['accuracy_after']:.2f} (random weights: the adapted head's linear probe); parameters "
                  f"{r['params_before']:,} -> {r['params_after']:,}."]
    else:
        lines += ["```", *landed["stderr"], "```"]
    beyond = results.get("beyond")
    if beyond:
        lines += ["", f"## x2.0: {'refused up front' if beyond['exit'] else 'not refused'}", "",
                  f"`{beyond['command']}`", "", f"exit {beyond['exit']} after {beyond['seconds']:.0f} s:", "",
                  "```", *beyond["stderr"][-1:], "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
