"""Write what ``compress`` produced: merged weights, plan, ONNX, report.md / report.json, frontier plot.

Layout of the output folder::

    merged_state_dict.pt   state dict of the merged network (load with depthcut.report.load_compressed)
    unmerged_state_dict.pt the same function in trainable form (to fine-tune further)
    plan.json              the plan; replays on the original model (depthcut.cnn.build.replay)
    model.onnx             the merged network
    report.md, report.json before/after figures, measured in one interleaved run
    frontier.png           modelled latency / importance frontier from the one DP solve, chosen plan marked
"""
from __future__ import annotations

import json
from math import nan
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .cache import atomic_write_json, atomic_write_text
from .errors import DepthcutError


def write_outputs(result, out: Path, example: torch.Tensor) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in result.model.state_dict().items()}, out / "merged_state_dict.pt")
    torch.save({k: v.cpu() for k, v in result.unmerged.state_dict().items()}, out / "unmerged_state_dict.pt")
    atomic_write_text(out / "plan.json", result.plan.to_json())
    report = dict(result.report)
    report["onnx"] = export_onnx(result.model, example, out / "model.onnx")
    report["frontier_png"] = plot_frontier(result, out / "frontier.png")
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", render_markdown(report))


def write_width_outputs(result, out: Path, example: torch.Tensor) -> None:
    """The channel baseline's folder: the pruned module (its shapes differ from the original, so the whole
    module is pickled), ONNX and the report."""
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result.model.cpu(), out / "pruned_model.pt")
    report = dict(result.report)
    report["onnx"] = export_onnx(result.model, example, out / "model.onnx")
    atomic_write_json(out / "report.json", report)
    r = report
    head = [f"# depthcut report: {r['model']}, channel pruning (baseline)", "",
            f"Backend **{r['backend']}**, batch {r['batch_size']}; Torch-Pruning L1, ratio {r['pruning_ratio']:.3f} "
            f"of every prunable layer's channels (the classifier's outputs kept).", ""]
    atomic_write_text(out / "report.md", "\n".join(head + _outcome_lines(r, "MAC budget | MACs of the least pruning "
                                                                            "that fits")) + "\n")


def write_joint_outputs(result, out: Path, example: torch.Tensor) -> None:
    """Depth and width together (depthcut.joint): the width-pruned network the plan applies to (its shapes
    differ from the original, so the module is pickled; a merged torch.fx graph of a real model does not
    pickle), the plan and the merged and unmerged weights (``load_compressed`` replays the plan on the
    width-pruned network), ONNX and the report."""
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result.base.cpu(), out / "width_model.pt")
    torch.save({k: v.cpu() for k, v in result.model.state_dict().items()}, out / "merged_state_dict.pt")
    torch.save({k: v.cpu() for k, v in result.unmerged.state_dict().items()}, out / "unmerged_state_dict.pt")
    atomic_write_text(out / "plan.json", result.plan.to_json())
    report = dict(result.report)
    report["onnx"] = export_onnx(result.model, example, out / "model.onnx")
    atomic_write_json(out / "report.json", report)
    r = report
    changed = [b for b in r["plan_blocks"] if b["merged"] or len(b["kept"]) != len(b["convs"])]
    head = [f"# depthcut report: {r['model']}, depth and width ({r['method']})", "",
            f"Backend **{r['backend']}**, batch {r['batch_size']}; width {r['width']['name']} (Torch-Pruning L1), "
            f"{len(changed)} depth blocks changed: "
            + (", ".join(f"{b['start']}-{b['end']} k{b['kernel']}" for b in changed) or "none") + ".", "",
            "| width option | alone over the original | fine-tuned accuracy | predicted accuracy at the target "
            "| predicted speed-up (DP) | landed speed-up | depth blocks (landed; DP's when it differs) "
            "| finalist accuracy (steps) | after recovery (scoring split) |",
            "|---|---|---|---|---|---|---|---|---|"]
    if any(w.get("neighbour_of") for w in r["width_options"]):
        head[4:4] = ["A width option named w/2, w/3 is another plan of width w that lands in the band, a finalist "
                     "beside w's landed plan.", ""]
    for w in r["width_options"]:
        pred = (f"{w['predicted_accuracy']:.2f}" if w["predicted_accuracy"] is not None else
                "left out: its latency model did not hold" if w.get("left_out") else "out of reach")
        if w.get("per_call_model_failed") and not w.get("left_out"):
            pred += " (additive latency model: its per-call model did not hold)"
        speed = f"x{w['predicted_speedup']:.3f}" if w["predicted_speedup"] is not None else "-"
        alone = f"x{w['speedup']['ratio']:.3f}" if w["speedup"] else "x1"
        rounds = ", ".join(f"{v:.2f} ({k})" for k, v in w.get("finalist_rounds", {}).items()) or "-"
        recovered = (f"{w['recovered_scoring_accuracy']:.2f}" if w.get("recovered_scoring_accuracy") is not None
                     else "-")
        landed = (f"x{w['landed_speedup']:.3f}" if w.get("landed_speedup") is not None else
                  "does not land" if w.get("not_landed") else "-")
        blocks = "-" if w["depth_blocks"] is None else str(len(w["depth_blocks"])) + (
            f" (DP: {len(w['dp_blocks'])})" if w.get("dp_blocks") is not None else "")
        head.append(f"| {w['name']} | {alone} | {w['finetuned_accuracy']:.2f} | {pred} | {speed} | {landed} | "
                    f"{blocks} | {rounds} | {recovered} |")
    for w in r.get("widths_faster_than_the_target", []):
        head.append(f"| {w['name']} | x{w['speedup']['ratio']:.3f} | {w['finetuned_accuracy']:.2f} | faster than "
                    f"the target alone: not offered | - | - | - | - | - |")
    atomic_write_text(out / "report.md", "\n".join(head + [""] + _outcome_lines(r, "body budget ms | modelled body "
                                                                                   "ms")) + "\n")


def _outcome_lines(r: dict, budget: str) -> list[str]:
    """Speed-up, accuracy, sizes and the landing's probes, as a method that rewrites the model reports them."""
    lines = [f"**Speed-up {r['speedup']:.2f}x** [{r['speedup_low']:.2f}, {r['speedup_high']:.2f}] (target "
             f"x{r['target_speedup_effective']:.2f}), accuracy {r['accuracy_before']:.2f}% -> {r['accuracy_after']:.2f}%.",
             "", "| | before | after |", "|---|---|---|"]
    for k in ("params", "macs", "convs", "activations"):
        lines.append(f"| {k} | {r[k + '_before']:,} | {r[k + '_after']:,} |")
    lines += ["", f"| probe | {budget} | measured speed-up (95% CI) | verdict |", "|---|---|---|---|---|"]
    for i, a in enumerate(r["probes"], 1):
        verdict = _verdict(a)
        lines.append(f"| {i} | {a['budget']:.4g} | {a['modelled']:.4g} | x{a['measured_ratio']:.2f} "
                     f"[{a['measured_low']:.2f}, {a['measured_high']:.2f}] | {verdict} |")
    return lines


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> str | None:
    """The deployable ONNX file (dynamic batch). A failed export does not lose the other outputs: the reason
    goes to ``model.onnx-error.txt`` and the report says ``onnx: null``."""
    from .latency.backends import export_onnx as export

    try:
        export(model, example, str(path), dynamic_batch=True)
        return path.name
    except DepthcutError as e:
        atomic_write_text(path.with_suffix(".onnx-error.txt"), str(e))
        return None


def plot_frontier(result, path: Path) -> str | None:
    if not result.frontier:
        return None
    try:
        import matplotlib
    except ImportError:                     # a plot is a convenience: the numbers are in report.json
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, ys = zip(*result.frontier)
    rep = result.report
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.step(xs, ys, where="post", color="#1f77b4", label="DP frontier (one solve)")
    chosen = rep["chosen_modelled_body_ms"]
    best = max((y for x, y in result.frontier if x <= chosen + 1e-9), default=None)
    if best is not None:
        ax.plot([chosen], [best], "o", color="#d62728",
                label=f"chosen: x{rep['speedup']:.2f} measured, acc {rep['accuracy_after']:.2f}%")
    ax.axvline(rep["modelled_body_ms_identity"], color="gray", ls=":", label="original body (modelled)")
    ax.set_xlabel(f"modelled body latency, ms ({rep['backend']}, batch {rep['batch_size']})")
    ax.set_ylabel("sum of block importance")
    ax.set_title(f"{rep['model']}: latency / importance frontier")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def render_markdown(r: dict[str, Any]) -> str:
    """report.md: the headline, what changed, what was checked, the plan, and how the landing got there."""
    lines = [f"# depthcut report: {r['model']}", "", *_headline(r), "", *_before_after(r), "", *_int8(r),
             *_verification(r), "", *_plan(r), "", *_landing(r)]
    if r.get("frontier_png"):
        lines += ["", f"![frontier]({r['frontier_png']})"]
    lines += ["", f"Finished in {r['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def _headline(r: dict[str, Any]) -> list[str]:
    """How the speed-up was timed, and the speed-up and accuracy."""
    how = (f"Backend **{r['backend']}**, batch {r['batch_size']}, input {tuple(r['input_shape'][1:])}; "
           f"the speed-up is the median of {r['timing_rounds']} paired rounds (original and compressed alternating"
           + (f", rotating through {r['timing_sessions']} runtime sessions of each" if r.get("timing_sessions", 1) > 1
              else "")
           + "), with its 95% confidence interval"
           + (" (widened to cover the spread between the sessions' ratios: "
              + ", ".join(f"x{v:.3f}" for v in r["timing_session_ratios"]) + ")"
              if len(r.get("timing_session_ratios") or []) > 1 else "")
           + (f"; {r['timing_outlier_rounds']} outlier rounds" if r.get("timing_outlier_rounds") else "") + ".")
    result = (f"**Speed-up {r['speedup']:.2f}x** [{r['speedup_low']:.2f}, {r['speedup_high']:.2f}] (target "
              + (f"x{r['target_speedup']}" if r.get("target_speedup") else f"{r['target_latency_ms']:.3f} ms")
              + (", **met**" if r.get("target_met") else ", **missed** in this final timing")
              + (f", within +{100 * r['speed_tolerance']:.0f}%" if r.get("within_band") else
                 f", more than {100 * r['speed_tolerance']:.0f}% faster than asked")
              + f"), accuracy {r['accuracy_before']:.2f}% -> {r['accuracy_after']:.2f}% "
                f"({-r['accuracy_drop']:+.2f} points) on the {r['data']} test set"
              + (f" (a fixed sample of {r['test_images']} images, --test-limit)"
                 if r.get("test_limit") and r["test_images"] >= r["test_limit"] else "")
              + (f"; deployed in int8: {r['int8']['accuracy_int8_before']:.2f}% -> "
                 f"{r['int8']['accuracy_int8_after']:.2f}%, speed-ups against the int8 original" if r.get("int8")
                 else "") + ".")
    return [how, "", result]


def _before_after(r: dict[str, Any]) -> list[str]:
    def row(name, before, after, fmt="{:,}"):
        return f"| {name} | {fmt.format(before)} | {fmt.format(after)} |"

    return ["| | before | after |", "|---|---|---|",
            row("latency (ms)", r["latency_ms_before"], r["latency_ms_after"], "{:.3f}"),
            row("accuracy (%)", r["accuracy_before"], r["accuracy_after"], "{:.2f}"),
            row("parameters", r["params_before"], r["params_after"]),
            row("MACs", r["macs_before"], r["macs_after"]),
            row("convolutions", r["convs_before"], r["convs_after"]),
            row("activations", r["activations_before"], r["activations_after"])]


def _int8(r: dict[str, Any]) -> list[str]:
    """With ``quantize="int8"``: float and int8, before and after, and the four networks' joint timing."""
    q = r.get("int8")
    if not q:
        return []
    timed = q["speedups_over_float_original"]

    def speed(name):
        e = timed[name]
        return f"x{e['ratio']:.2f} [{e['low']:.2f}, {e['high']:.2f}]"
    return ["## int8 deployment", "",
            f"The original and the deployed network quantized ({q['quantizer']}) on {q['calibration_images']} images "
            f"of the scoring split, run by {r['backend']}; the latency rows, the landing and the speed-up above "
            f"measured int8 networks (against the int8 original). Speed-ups against the float32 original come from "
            f"one timing of all four networks.", "",
            "| | float32 original | int8 original | float32 deployed | int8 deployed |", "|---|---|---|---|---|",
            f"| accuracy (%) | {q['accuracy_float_before']:.2f} | {q['accuracy_int8_before']:.2f} | "
            f"{q['accuracy_float_after']:.2f} | {q['accuracy_int8_after']:.2f} |",
            f"| speed-up over the float32 original | x1 | {speed('int8 original')} | {speed('float deployed')} | "
            f"{speed('int8 deployed')} |",
            f"| int8 agreement with its float32 network (top-1 %, relative error) | | {q['top1_agreement_before']:.2f}, "
            f"{q['relative_error_before']:.1e} | | {q['top1_agreement_after']:.2f}, {q['relative_error_after']:.1e} |",
            ""]


def _verification(r: dict[str, Any]) -> list[str]:
    """The candidates dropped before scoring, and the checks against the intended function."""
    return [
        f"Chain: {r['positions']} positions, {r['blocks_valid']} valid blocks, {r['candidates']} candidates, "
        f"{r.get('candidates_dominated', 0)} of them dropped as dominated (no faster than the original convs "
        f"they replace beyond their timings' 95 % intervals, so no plan could pick them; never built in full or "
        f"scored).",
        *_dominated_lines(r.get("dominated", [])),
        "",
        f"Verified before deployment: the chosen plan's rewrite equals the intended function (the original with "
        f"only the plan's changes, built independently) to {r.get('intended_structure_error', nan):.1e} "
        f"in float64, the deployed network to {r.get('intended_relative_error', nan):.1e} (accepted up to "
        f"{r.get('intended_error_allowed', nan):.1e}: 1e-5, or 10x the intended network's own float32 error, "
        f"{r.get('intended_float32_control', nan):.1e}, where that is larger); the merged network equals its "
        f"fine-tuned unmerged form to {r['merge_relative_error']:.1e} (accepted up to "
        f"{r.get('merge_error_allowed', nan):.1e}).",
        "",
        f"Borders: a merged block pads once, at its input, so near the borders it differs from the original "
        f"convs padding one by one; the intended (and fine-tuned) function is the one with the padding moved. "
        f"Against the original padding the deployed network differs by {r.get('border_relative_error', nan):.1e} "
        f"(relative, before recovery); a global pool after a block (squeeze-excite) carries it into the interior."]


def _plan(r: dict[str, Any]) -> list[str]:
    lines = ["## Plan", "", "| block | convs | kept | merged kernel | stride | activation after |",
             "|---|---|---|---|---|---|"]
    for b in r["plan_blocks"]:
        kept = ", ".join(b["kept"]) if b["kept"] else "(identity)"
        convs = ", ".join(b["convs"])
        lines.append(f"| ({b['start']}, {b['end']}) | {convs} | {kept} | {b['kernel']}x{b['kernel']}"
                     f"{' dw' if b['depthwise'] else ''} | {b['stride']} | {b['activation'] or '-'} |")
    return lines


def _verdict(probe: dict[str, Any]) -> str:
    """A landing probe's verdict, and whether it was timed again after a slow phase (depthcut.latency.compare.Pace)."""
    verdict = "lands" if probe["lands"] else "meets, overshoots" if probe["meets"] else "misses"
    slow = probe.get("measured_slow_timings") or ()
    return verdict + (f" (timed again: the original ran x{max(slow):.2f} its pace first)" if slow else "")


def _landing(r: dict[str, Any]) -> list[str]:
    """The latency model the DP used, and every probe the landing timed."""
    fit = r.get("latency_model_fit") or {}
    if fit.get("kind") == "per-call":
        described = (f"per-call model: each row's single-call timing minus the runtime's per-call cost, "
                     f"{1e3 * fit['call_ms']:.1f} us (leave-one-out {1e3 * fit['call_ms_range'][0]:.1f}-"
                     f"{1e3 * fit['call_ms_range'][1]:.1f}) + {1e9 * fit['call_ms_per_byte']:.1f} us/MB, plus "
                     f"{1e9 * fit.get('weight_ms_per_byte', 0.0):.1f} us/MB of its weights read inside the network; "
                     f"{fit['other_ms']:.3f} ms outside the body, fitted on {len(fit['calibration'])} whole networks "
                     f"(largest error on them {max(abs(p['modelled_ms'] / p['measured_ms'] - 1) for p in fit['calibration']):.1%})")
    else:
        described = "additive model: the rows' single-call timings summed, the rest taken from the measured original"
    lines = ["## Landing on the target", "",
             f"The block latencies ({described}) add up to a model of the network's latency. Each probe below "
             "timed a real network against the original; the landing corrected the model on what was measured "
             "and re-solved until a plan's interval met the target and its estimate stayed within the band. "
             f"The model's error on the probes (predicted / measured - 1): largest "
             f"{r.get('model_error_largest', nan):.1%}.", "",
             "| probe | budget (ms) | modelled body (ms) | model's speed-up | error | measured speed-up (95% CI) "
             "| rounds | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for i, a in enumerate(r["probes"], 1):
        verdict = _verdict(a)
        lines.append(f"| {i} | {a['budget']:.3f} | {a['modelled']:.3f} | x{a.get('predicted', nan):.2f} | "
                     f"{a.get('model_error', nan):+.1%} | x{a['measured_ratio']:.2f} [{a['measured_low']:.2f}, "
                     f"{a['measured_high']:.2f}] | {a['measured_rounds']} | {verdict} |")
    return lines


def load_compressed(folder: str | Path, model: nn.Module | str | None = None) -> nn.Module:
    """Rebuild the merged network saved by ``compress(..., out=folder)``: replay plan.json on the original
    model (given, or resolved from the plan's recorded model name) and load the merged weights."""
    from .cnn.build import replay
    from .models import resolve_model

    folder = Path(folder)
    plan_path, weights = folder / "plan.json", folder / "merged_state_dict.pt"
    for p in (plan_path, weights):
        if not p.exists():
            raise DepthcutError(f"{p} is missing: {folder} is not a depthcut output folder")
    plan_json = plan_path.read_text()
    meta = json.loads(plan_json).get("meta", {})
    if model is None and (folder / "width_model.pt").exists():    # depth and width: the plan's own network
        base = torch.load(folder / "width_model.pt", map_location="cpu", weights_only=False)
    else:
        base = resolve_model(model if model is not None else meta.get("model", "")).model
    merged = replay(base, plan_json, tuple(meta["input_shape"]))
    merged.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return merged.eval()


def _dominated_lines(dominated: list[dict], shown: int = 20) -> list[str]:
    """The dropped candidates with their reasons (the first ``shown``; report.json has them all)."""
    lines = [f"- `{d['key']}`: {d['reason']}" for d in dominated[:shown]]
    if len(dominated) > shown:
        lines.append(f"- ... and {len(dominated) - shown} more (all in report.json, key `dominated`)")
    return ["", *lines] if lines else []
