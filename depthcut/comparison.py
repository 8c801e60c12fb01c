"""Which method makes *my* model fastest for the least accuracy? Methods compared at equal measured latency.

A comparison of compression methods is only fair at the same measured speed: a network 8 % faster than
another has paid for it in accuracy. Landing alone does not give that: each method lands anywhere in
[target, target x (1 + speed_tolerance)], and two timings of the same network taken minutes apart differ by a
few percent on a shared machine (bench/results/timing_stability.md). So every method, at every target and
seed, goes through the same stages (depthcut.compression: latency rows, importance, frontier, landing on the
measured target, verification, the same recovery budget, final timing), landing inside a narrow band
``[target, target x (1 + match_tolerance)]``; then all the networks of one (target, seed) are timed afresh
*in the same rounds* against the original (depthcut.latency.compare.compare_many), so their speed-ups are
comparable to each other. The report states, per target, each method's accuracy and jointly measured
speed-up, whether the speeds matched within the tolerance, and which method is most accurate.

    result = compare("mobilenet_v2_fmnist", CompareConfig(methods=("layermerge", "channel"), speedups=(2.0,),
                     compress=LayerMergeConfig(backend="onnxruntime", recovery_epochs=1.0)))
    result.best(2.0)                       # the most accurate method at x2.0, among those that matched
    result.save_pretrained("cmp")          # report.md, report.json, accuracy_vs_speedup.png, one folder a run
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from .config import LayerMergeConfig
from .configbase import ConfigBase, at_least
from .errors import DepthcutError, InfeasibleBudgetError

COMPARE_VERSION = 1
SPREAD = 0.03                  # issue 9: all methods within 3 % of each other in measured latency
AIM = 0.02                     # what a selection aims at: a margin for the drift between timings
BAND = 0.10                    # a common point first within +10 % of the target (compress's landing band)
PER_RUN = ("method", "speedup", "latency_ms", "speed_tolerance", "seed", "shard")   # set by the comparison


@dataclass
class CompareConfig(ConfigBase):
    """What to compare: ``methods`` (registered names, depthcut.methods) at each of ``speedups``, for each of
    ``seeds``; ``compress`` holds the LayerMergeConfig fields every run shares (data, backend, recovery...)."""

    KIND: ClassVar[str] = "compare config"

    methods: tuple[str, ...] = ("layermerge", "channel")
    speedups: tuple[float, ...] = (1.5, 2.0)
    seeds: tuple[int, ...] = (0,)
    match_tolerance: float = 0.03        # every method lands within [target, target * (1 + this)]
    joint_rounds: int = 60               # rounds of the joint timing of one (target, seed)'s networks
    compress: dict = field(default_factory=dict)     # LayerMergeConfig fields shared by every run
    version: int = COMPARE_VERSION

    def __post_init__(self) -> None:
        from .methods import method_names

        if isinstance(self.compress, LayerMergeConfig):
            self.compress = {k: v for k, v in self.compress.to_dict().items() if k not in PER_RUN}
        self.check_types()
        self.check_version(COMPARE_VERSION)
        for name in self.methods:
            if name not in method_names():
                raise DepthcutError(f"unknown method {name!r}; registered: {', '.join(method_names())}")
        if len(set(self.methods)) != len(self.methods) or not self.methods:
            raise DepthcutError(f"config field 'methods' must name each method once, got {list(self.methods)}")
        if not self.speedups or not self.seeds:
            raise DepthcutError("config fields 'speedups' and 'seeds' need at least one value each")
        for s in self.speedups:
            at_least("speedups", s, 1.0, inclusive=False)
        at_least("match_tolerance", self.match_tolerance, 0.0, inclusive=False)
        at_least("joint_rounds", self.joint_rounds, 5)
        fixed = sorted(set(self.compress) & set(PER_RUN) - {"seed"})
        if fixed:
            raise DepthcutError(f"compare sets {', '.join(fixed)} for each run itself: leave them out of "
                                f"'compress'")
        self.base()                      # the shared fields are checked now, before any run

    def base(self) -> LayerMergeConfig:
        return LayerMergeConfig(**{k: v for k, v in self.compress.items() if k != "seed"})

    def run_config(self, method: str, speedup: float, seed: int) -> LayerMergeConfig:
        return replace(self.base(), method=method, speedup=speedup, speed_tolerance=self.match_tolerance,
                       seed=seed)


@dataclass
class Run:
    """One method at one target and seed: its compress report, or why it could not land."""

    method: str
    target: float
    seed: int
    report: dict[str, Any] | None = None
    error: str | None = None
    joint: dict[str, Any] | None = None        # its speed-up timed in the same rounds as the others'

    @property
    def landed(self) -> bool:
        return self.report is not None

    def summary(self) -> dict[str, Any]:
        r = self.report or {}
        out = {"method": self.method, "target": self.target, "seed": self.seed, "error": self.error}
        for k in ("accuracy_before", "accuracy_after", "speedup", "speedup_low", "speedup_high", "params_after",
                  "macs_after", "convs_after", "activations_after", "seconds"):
            out[k] = r.get(k)
        if r.get("int8"):
            out["accuracy_int8_before"], out["accuracy_int8_after"] = (deployed_accuracy(r, w) for w in ("before", "after"))
        out["plan"] = plan_summary(r) if r else None
        out["joint"] = self.joint
        return out


def deployed_accuracy(report: dict[str, Any], when: str = "after") -> float:
    """The accuracy of the network as deployed: the int8 network's when the run quantized it (``quantize``),
    else the float one's. What a comparison compares."""
    q = report.get("int8")
    return q[f"accuracy_int8_{when}"] if q else report[f"accuracy_{when}"]


def plan_summary(report: dict[str, Any]) -> dict[str, Any]:
    """A run's plan in a line: a depth plan's changed blocks (positions, kernel, convs kept) and, for depth and
    width together, its width option; or a width plan's pruning ratio."""
    if "plan_blocks" in report:
        changed = [b for b in report["plan_blocks"] if b["merged"] or len(b["kept"]) != len(b["convs"])]
        return {"blocks": [f"{b['start']}-{b['end']} k{b['kernel']} kept {len(b['kept'])}/{len(b['convs'])}"
                           for b in changed], "convs": report.get("convs_after"),
                **({"width": report["width"]["name"]} if "width" in report else {})}
    return {"pruning_ratio": report.get("pruning_ratio"), "scope": report.get("channel_scope")}


@dataclass
class Comparison:
    """Every run of a comparison, and what they say per target (``table``, ``best``)."""

    config: CompareConfig
    model: str
    runs: list[Run]
    results: dict[str, Any] = field(default_factory=dict, repr=False)   # (method, target, seed) -> CompressResult
    seconds: float = 0.0
    command: str | None = None            # the command line that ran it, when it came from one

    def at(self, target: float) -> list[Run]:
        return [r for r in self.runs if r.target == target]

    def table(self, target: float) -> list[dict[str, Any]]:
        """One row per method at ``target``: means over the seeds of accuracy (as deployed: int8 with
        ``quantize``) and jointly measured speed-up."""
        rows = []
        for method in self.config.methods:
            runs = [r for r in self.at(target) if r.method == method]
            landed = [r for r in runs if r.landed and r.joint]
            acc = [deployed_accuracy(r.report) for r in landed]
            speed = [r.joint["ratio"] for r in landed]
            rows.append({"method": method, "runs": len(runs), "landed": len(landed),
                         "accuracy_before": statistics.mean(deployed_accuracy(r.report, "before") for r in landed)
                         if landed else None,
                         "accuracy": statistics.mean(acc) if acc else None,
                         "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0 if acc else None,
                         "speedup": statistics.mean(speed) if speed else None,
                         "speedup_low": min((r.joint["low"] for r in landed), default=None),
                         "speedup_high": max((r.joint["high"] for r in landed), default=None),
                         "errors": [r.error for r in runs if r.error]})
        return rows

    def matched(self, target: float) -> bool:
        """The landed methods' mean joint speed-ups (what the table compares) lie within the match tolerance
        of each other."""
        speeds = [r["speedup"] for r in self.table(target) if r["speedup"] is not None]
        return len(speeds) < 2 or max(speeds) / min(speeds) - 1 <= self.config.match_tolerance

    def seed_spreads(self, target: float) -> dict[int, float]:
        """Per seed, how far apart the landed methods' joint speed-ups are (fastest / slowest - 1)."""
        out = {}
        for seed in self.config.seeds:
            speeds = [r.joint["ratio"] for r in self.at(target) if r.seed == seed and r.landed and r.joint]
            if len(speeds) > 1:
                out[seed] = max(speeds) / min(speeds) - 1
        return out

    def best(self, target: float) -> str | None:
        """The method with the highest mean accuracy at ``target`` among those that landed for every seed."""
        rows = [r for r in self.table(target) if r["landed"] == r["runs"] and r["accuracy"] is not None]
        return max(rows, key=lambda r: r["accuracy"])["method"] if rows else None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "depthcut comparison", "version": COMPARE_VERSION, "model": self.model,
                "config": self.config.to_dict(), "seconds": self.seconds, "command": self.command,
                "targets": {f"{t:g}": {"table": self.table(t), "matched": self.matched(t), "best": self.best(t),
                                       "seed_spreads": self.seed_spreads(t)}
                            for t in self.config.speedups},
                "runs": [r.summary() for r in self.runs]}

    def save_pretrained(self, out: str | Path) -> Path:
        """report.json, report.md, accuracy_vs_speedup.png, and each landed run's own compress output under
        runs/<method>-x<target>-seed<seed>/."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for (method, target, seed), result in self.results.items():
            result.save_pretrained(out / "runs" / run_name(method, target, seed))
        (out / "report.json").write_text(json.dumps(self.to_dict(), indent=1, default=str))
        (out / "report.md").write_text(render_markdown(self))
        plot(self, out / "accuracy_vs_speedup.png")
        return out


def common_point(speedups: dict[str, float], methods: list[str], target: float) -> dict[str, str]:
    """One candidate per method (names "method/..."), every one at or above ``target``: the choice with the
    smallest spread, or, among those within AIM (else within SPREAD), the one nearest the target. Choices whose
    slowest network lies within BAND above the target come first (the comparison is *at* the target: without
    the band, a tight point at x1.92 beat a 4 %-wide one at x1.55 for the x1.5 target); only without any such
    choice are the others considered. Each method takes, inside the chosen window, its candidate nearest the
    window's centre."""
    items = sorted((r, n) for n, r in speedups.items() if r >= target and n.split("/")[0] in methods)
    windows = []
    for i, (low, _) in enumerate(items):
        for j in range(i, len(items)):
            if {n.split("/")[0] for _, n in items[i:j + 1]} == set(methods):
                windows.append((items[j][0] / low - 1, low, items[i:j + 1]))
                break
    windows = [w for w in windows if w[2][-1][0] <= target * (1 + BAND)] or windows
    if not windows:
        return {}
    within = [w for w in windows if w[0] <= AIM] or [w for w in windows if w[0] <= SPREAD]
    _, _, window = min(within, key=lambda w: w[2][-1][0]) if within else min(windows, key=lambda w: w[0])
    centre = math.sqrt(window[0][0] * window[-1][0])
    return {m: min((n for _, n in window if n.startswith(m + "/")), key=lambda n: abs(math.log(speedups[n] / centre)))
            for m in methods}


def run_name(method: str, target: float, seed: int) -> str:
    return f"{method}-x{target:g}-seed{seed}"


# -- the stages -------------------------------------------------------------------------------------------
def compare(model: str | nn.Module, config: CompareConfig | None = None, *, out: str | Path | None = None,
            splits=None, command: str | None = None) -> Comparison:
    """Compress ``model`` with every method of ``config`` at every target and seed (module docstring), time
    each (target, seed)'s networks jointly, and return the :class:`Comparison` (written to ``out`` if given).
    A method that cannot land on a target is recorded with its one-line reason; the others go on."""
    from .compression import Compression, say

    config = config or CompareConfig()
    t0 = time.time()
    runs: list[Run] = []
    results: dict[tuple[str, float, int], Any] = {}
    name = model if isinstance(model, str) else type(model).__name__
    for seed in config.seeds:
        for target in config.speedups:
            landed: dict[str, Any] = {}
            here: list[Run] = []
            reference = None
            for method in config.methods:
                run_config = config.run_config(method, target, seed)
                say(run_config, f"compare: {method} at x{target:g}, seed {seed}")
                run = Run(method, target, seed)
                try:
                    compression = Compression(model, run_config, splits=splits)
                    result = compression.method.compress(compression)
                except InfeasibleBudgetError as e:
                    run.error = " ".join(str(e).split())
                    say(run_config, f"compare: {method} at x{target:g} did not land: {run.error}")
                else:
                    run.report = result.report
                    landed[method] = result
                    results[(method, target, seed)] = result
                    reference = reference or compression
                here.append(run)
            if reference is not None:
                joint = joint_speedups(reference, landed, config.joint_rounds)
                for run in here:
                    run.joint = joint.get(run.method)
            runs += here
    comparison = Comparison(config, name, runs, results, time.time() - t0, command)
    if out is not None:
        comparison.save_pretrained(out)
    return comparison


def joint_speedups(reference, networks: dict[str, Any], rounds: int) -> dict[str, dict[str, Any]]:
    """Every landed network of one (target, seed) against the original in the same rounds, on fresh sessions
    (depthcut.latency.compare.time_jointly)."""
    from .latency.compare import time_jointly

    estimates = time_jointly(reference.original, {m: r.model.to(reference.device).eval() for m, r in networks.items()},
                               reference.example, reference.backend, sessions=reference.config.timing_sessions,
                               rounds=rounds)
    return {m: e.to_dict() for m, e in estimates.items()}


# -- the report -------------------------------------------------------------------------------------------
def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render_markdown(c: Comparison) -> str:
    cfg, base = c.config, c.config.base()
    seeds = ", ".join(str(s) for s in cfg.seeds)
    lines = [f"# Methods compared at equal measured latency: {c.model}", "",
             *([f"`{c.command}`", ""] if c.command else []),
             f"{base.data}, {base.backend}{' int8' if base.quantize else ''} (batch {base.batch_size}"
             f"{'; accuracy and speed-ups of the int8 networks, against the int8 original' if base.quantize else ''})"
             f", recovery {base.recovery_epochs} epochs for "
             f"every method, seeds {seeds}. Each method lands within [target, target x {1 + cfg.match_tolerance:g}] "
             f"(depthcut.compression), then every network of one target and seed is timed against the original in "
             f"the same {cfg.joint_rounds} rounds (depthcut.latency.compare.compare_many): the speed-ups below are "
             f"that joint timing (mean over seeds; interval: the widest over seeds). {c.seconds / 60:.1f} minutes.",
             ""]
    for target in cfg.speedups:
        best = c.best(target)
        lines += [f"## x{target:g}", "",
                  "| method | landed | accuracy before | accuracy after | speed-up (joint, 95 % CI) |",
                  "|---|---|---|---|---|"]
        rows = c.table(target)
        for row in rows:
            std = f" ± {row['accuracy_std']:.2f}" if len(cfg.seeds) > 1 and row["accuracy"] is not None else ""
            acc = (f"**{row['accuracy']:.2f}**{std}" if row["method"] == best else
                   f"{_cell(row['accuracy'], '.2f')}{std if row['accuracy'] is not None else ''}")
            speed = ("-" if row["speedup"] is None else
                     f"x{row['speedup']:.2f} [{row['speedup_low']:.2f}, {row['speedup_high']:.2f}]")
            lines.append(f"| {row['method']} | {row['landed']} of {row['runs']} | "
                         f"{_cell(row['accuracy_before'], '.2f')} | {acc} | {speed} |")
        lines.append("")
        for row in rows:
            lines += [f"- {row['method']} did not land: {e}" for e in row["errors"]]
        for r in c.at(target):
            if r.landed and not r.report.get("target_met", True):
                lines.append(f"- {r.method} (seed {r.seed}): its final timing, x{r.report['speedup']:.3f}, fell "
                             f"below the target its landing probe had met")
            elif r.landed and not r.report.get("within_band", True):
                lines.append(f"- {r.method} (seed {r.seed}): its final timing, x{r.report['speedup']:.3f}, lies "
                             f"above the band")
        spreads = c.seed_spreads(target)
        if spreads:
            lines.append("Joint speed-ups within one seed are " + ", ".join(
                f"{v:.1%} apart (seed {k})" for k, v in spreads.items()) + ".")
        lines.append((f"The methods' mean speed-ups match within {cfg.match_tolerance:.0%}. " if c.matched(target)
                      else f"**The methods' mean speed-ups differ by more than {cfg.match_tolerance:.0%}: compare "
                           f"with care.** ") + (f"Most accurate: **{best}**." if best else
                                                "No method landed for every seed."))
        lines.append("")
    lines += ["## Runs", "", "| method | target | seed | accuracy | landed speed-up | joint speed-up | params | "
              "plan |", "|---|---|---|---|---|---|---|---|"]
    for r in c.runs:
        s = r.summary()
        joint = f"x{r.joint['ratio']:.3f}" if r.joint else "-"
        landed = f"x{s['speedup']:.3f}" if s["speedup"] else "-"
        plan = json.dumps(s["plan"]) if s["plan"] is not None else (r.error or "-")
        lines.append(f"| {r.method} | x{r.target:g} | {r.seed} | {_cell(s['accuracy_after'], '.2f')} | {landed} | "
                     f"{joint} | {s['params_after'] or '-'} | {plan[:120]} |")
    return "\n".join(lines) + "\n"


def plot(c: Comparison, path: Path) -> None:
    """Accuracy against the jointly measured speed-up, one marker per run, one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in c.config.methods:
        runs = [r for r in c.runs if r.method == method and r.landed and r.joint]
        ax.scatter([r.joint["ratio"] for r in runs], [r.report["accuracy_after"] for r in runs], label=method)
    for target in c.config.speedups:
        ax.axvline(target, color="grey", lw=0.5, ls="--")
    ax.set_xlabel("speed-up, measured jointly")
    ax.set_ylabel("accuracy after recovery (%)")
    ax.set_title(c.model)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_comparison(path: str | Path) -> dict[str, Any]:
    """A saved comparison's report.json (the networks are under runs/, each loadable with depthcut.load)."""
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    if not file.is_file():
        raise DepthcutError(f"{file}: no comparison report here")
    return json.loads(file.read_text())


__all__ = ["CompareConfig", "Comparison", "Run", "common_point", "compare", "load_comparison"]
