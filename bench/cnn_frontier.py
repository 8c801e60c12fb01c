"""The paper's claim, measured: every method at the same measured speed-up, on both networks.

A thin driver over ``depthcut.compare`` (depthcut.comparison) with ``matching="select"`` (depthcut.matching):
for each model, every method lands on each target (the same analysis, latency rows, importance table, landing,
verification), one network per method is chosen at a common measured point within 2-3 % of the others, each
chosen network gets the same recovery, and the chosen networks are timed against the original in
``--fresh-timings`` joint timings minutes apart. Seeds share one importance table (``--importance-seed``), so
they share their networks (``share_networks``): each seed recovers them with its own seed and times them afresh.
The control is the original fine-tuned with the same recovery.

Each model's comparison is kept under ``--runs``/<model>/ (every landing under runs/, every selection under
matched/, report.md, report.json): a killed run resumes where it stopped. Writes ``--out``.md (the headline table
over both networks, then each comparison's report), ``--out``.png, and each comparison's report.json and
report.md as ``--out``/<model>.{json,md}.

    python bench/cnn_frontier.py         # both networks, x1.25 / x1.5 / x2.0, five methods, seeds 0 1 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from depthcut.cache import atomic_write_text
from depthcut.comparison import CompareConfig, Comparison, compare

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "cnn_frontier_select"
METHODS = ("layermerge", "two-stage", "layer-pruning", "depthshrinker", "channel")


def split_pairs(values: list[str]) -> tuple[dict[str, str], list[str]]:
    """Command-line values as (``MODEL=VALUE`` pairs, plain values for every other model)."""
    return dict(v.split("=", 1) for v in values if "=" in v), [v for v in values if "=" not in v]


def per_model(values: list[str], model: str, default: str) -> str:
    """``MODEL=VALUE`` pairs and at most one plain ``VALUE`` (for every other model): ``model``'s value."""
    pairs, plain = split_pairs(values)
    return pairs.get(model, plain[0] if plain else default)


def seeds_of(values: list[str], model: str) -> tuple[int, ...]:
    """``--seeds``: plain seeds for every model (``0 1 2``) and ``MODEL=S,S,...`` for one model (its own list)."""
    pairs, plain = split_pairs(values)
    return tuple(int(s) for s in (pairs[model].split(",") if model in pairs else plain))


def compare_config(model: str, args) -> CompareConfig:
    """One model's comparison: the budgets every method shares."""
    compress = dict(data="fashion-mnist", backend="onnxruntime", timing_threads=args.timing_threads,
                    recovery_epochs=float(per_model(args.recovery_epochs, model, "1.0")),
                    importance_steps=int(per_model(args.importance_steps, model, "20")),
                    importance_seed=args.importance_seed, channels_last=args.channels_last, max_resolves=10,
                    cache_dir=args.cache, progress=True)
    return CompareConfig(methods=tuple(args.methods), speedups=tuple(args.targets), seeds=seeds_of(args.seeds, model),
                         matching="select", fresh_timings=args.fresh_timings, control=True,
                         share_networks=args.importance_seed is not None, compress=compress)


class WallClock:
    """The benchmark's wall time summed over the invocations that resumed one another, stored next to the runs
    and brought up to date every ``every`` seconds while this invocation runs: a killed invocation's time still
    counts (up to the last update), as its finished comparisons do."""

    def __init__(self, path: Path, every: float = 30.0):
        import json
        import threading

        self.path, self.t0 = path, time.time()
        before = json.loads(path.read_text()) if path.exists() else {"seconds": 0.0, "invocations": 0}
        self.before = {"seconds": before["seconds"], "invocations": before["invocations"] + 1}
        self._done = threading.Event()
        self.write()
        self._ticker = threading.Thread(target=self._tick, args=(every,), daemon=True)
        self._ticker.start()

    def now(self) -> dict:
        return {"seconds": self.before["seconds"] + time.time() - self.t0, "invocations": self.before["invocations"]}

    def write(self) -> dict:
        import json

        clock = self.now()
        atomic_write_text(self.path, json.dumps(clock))
        return clock

    def _tick(self, every: float) -> None:
        while not self._done.wait(every):
            self.write()

    def stop(self) -> dict:
        self._done.set()
        self._ticker.join()
        return self.write()


def headline(comparisons: dict[str, Comparison]) -> list[str]:
    """One row per (model, target): each method's accuracy (mean ± std over seeds) at its speed-up, the best
    method, and the largest spread of speed-ups within one seed."""
    methods = next(iter(comparisons.values())).config.methods
    lines = ["| model | target | " + " | ".join(methods) + " | best | spread within a seed |",
             "|---|---|" + "---|" * (len(methods) + 2)]
    for model, c in comparisons.items():
        for target in c.config.speedups:
            cells = [("unreachable" if not row["landed"] else f"{row['accuracy']:.2f}"
                      + (f" ± {row['accuracy_std']:.2f}" if row["landed"] > 1 else "") + f" (x{row['speedup']:.2f})")
                     for row in c.table(target)]
            spreads = c.seed_spreads(target)
            worst = f"{max(spreads.values()):.1%}" if spreads else "-"
            lines.append(f"| {model} | x{target:g} | " + " | ".join(cells) + f" | {c.best(target) or '-'} | {worst} |")
    return lines


def plot(comparisons: dict[str, Comparison], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(comparisons), figsize=(6 * len(comparisons), 4), squeeze=False)
    for ax, (model, c) in zip(axes[0], comparisons.items()):
        for method, marker in zip(c.config.methods, "osD^vP"):      # markers: methods sharing a plan both show
            said = [s for r in c.runs if r.method == method and (s := c.compared(r))]
            ax.scatter([s["speedup"] for s in said], [s["accuracy"] for s in said], label=method, s=28,
                       marker=marker, facecolors="none", edgecolors=f"C{c.config.methods.index(method)}")
        if c.controls:
            ax.axhline(statistics.mean(v["accuracy_after"] for v in c.controls.values()), color="grey", lw=0.8,
                       label="control (x1.0)")
        ax.set(xlabel="speed-up, measured jointly (median of fresh timings)", ylabel="accuracy (%)", title=model)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet20_fmnist", "mobilenet_v2_fmnist"])
    ap.add_argument("--targets", nargs="+", type=float, default=[1.25, 1.5, 2.0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--seeds", nargs="+", default=["0", "1", "2"],
                    help="seeds for every model, and MODEL=S,S,... for a model of its own (the first is the one "
                         "whose networks the others share)")
    ap.add_argument("--recovery-epochs", nargs="+", default=["resnet20_fmnist=0.25", "mobilenet_v2_fmnist=0.1"],
                    help="MODEL=EPOCHS pairs (a plain value for every other model)")
    ap.add_argument("--importance-steps", nargs="+", default=["mobilenet_v2_fmnist=10"],
                    help="fine-tune steps per importance entry, MODEL=STEPS pairs (default 20)")
    ap.add_argument("--importance-seed", type=int, default=0,
                    help="the seed of the one importance table every seed shares (-1: each seed its own)")
    ap.add_argument("--timing-threads", type=int, default=1)
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--fresh-timings", type=int, default=3)
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "cnn_frontier"))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--runs", default=str(ROOT / ".cache" / "cnn_frontier_runs"),
                    help="where each comparison keeps its networks and selections (resumable; not committed)")
    return ap


def run(args) -> dict[str, Comparison]:
    """Every model's comparison (resumed from ``--runs``/<model>/), each also written as ``--out``/<model>.{json,md}."""
    args.importance_seed = None if args.importance_seed < 0 else args.importance_seed
    out = Path(args.out)
    configs = {model: compare_config(model, args) for model in args.models}   # checked before any work
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    clock, comparisons = WallClock(Path(args.runs) / "clock.json"), {}
    try:
        for model, cfg in configs.items():
            folder = Path(args.runs) / model
            comparisons[model] = compare(model, cfg, out=folder, command=" ".join(["python"] + sys.argv))
            for name in ("report.json", "report.md"):
                atomic_write_text(out / f"{model}{Path(name).suffix}", (folder / name).read_text())
    finally:
        args.clock = clock.stop()
    return comparisons


def report_lines(args, comparisons: dict[str, Comparison], title: str) -> list[str]:
    """The headline over the models, the figure, then each comparison's report."""
    out, clock = Path(args.out), args.clock
    lines = [f"# {title}", "",
             f"`{' '.join(['python'] + sys.argv)}` - {clock['seconds'] / 60:.0f} minutes of wall time here, over "
             f"{clock['invocations']} invocation(s) resuming one another (each comparison's own time below counts "
             f"only its last invocation).", "",
             "Accuracy (%) after the same recovery, mean ± std over seeds, at the mean of each method's jointly "
             "measured speed-up; every method's chosen network within 2-3 % of the others' (the last column: the "
             "largest spread of one seed's medians).", "", *headline(comparisons), "",
             f"![accuracy against measured speed-up]({out.name}.png)", ""]
    for model in comparisons:
        report = (out / f"{model}.md").read_text().replace("# Methods compared", "## Methods compared")
        lines += [report.replace("\n## ", "\n### "), ""]
    return lines


def main() -> None:
    args = parser().parse_args()
    comparisons = run(args)
    out = Path(args.out)
    lines = report_lines(args, comparisons, "Every method at the same measured speed-up: `python bench/cnn_frontier.py`")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines))
    plot(comparisons, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
