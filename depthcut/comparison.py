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

Landed networks still lie a few percent apart (every method's plans are discrete in latency). With
``matching="select"`` (``--match select``) one network per method is chosen instead, at a common measured
point within 2-3 % of the others (depthcut.matching), each chosen network gets the one recovery, and
``fresh_timings`` joint timings minutes apart give each its median speed-up. ``control`` adds the original
fine-tuned the same way; ``share_networks`` lets later seeds recover the first seed's networks. With ``out``
every landing, selection and recovery is stored as it finishes, and a rerun resumes.

    result = compare("mobilenet_v2_fmnist", CompareConfig(methods=("layermerge", "channel"), speedups=(2.0,),
                     compress=LayerMergeConfig(backend="onnxruntime", recovery_epochs=1.0)))
    result.best(2.0)                       # the most accurate method at x2.0, among those that matched
    result.save_pretrained("cmp")          # report.md, report.json, accuracy_vs_speedup.png, one folder a run
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from .config import LayerMergeConfig
from .configbase import ConfigBase, at_least
from .errors import DepthcutError, InfeasibleBudgetError
from .latency.model import LatencyModelError
from .matching import MATCH_VERSION, Timer, chosen_network, common_point, match, recover_chosen, reported
from .methods import get_method, method_names

COMPARE_VERSION = 1
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
    # "band": each method's landed network, timed jointly; "select": one network per method chosen at a common
    # measured point within 2-3 % (depthcut.matching), each recovered once with the same budget
    matching: str = "band"
    fresh_timings: int = 1               # select: fresh joint timings of the chosen networks, minutes apart
    share_networks: bool = False         # select: later seeds recover and time the first seed's chosen plans
    control: bool = False                # also the original, fine-tuned with the same recovery (x1.0)
    compress: dict = field(default_factory=dict)     # LayerMergeConfig fields shared by every run
    version: int = COMPARE_VERSION

    def __post_init__(self) -> None:
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
        at_least("fresh_timings", self.fresh_timings, 1)
        if self.matching not in ("band", "select"):
            raise DepthcutError(f"config field 'matching' must be 'band' or 'select', got {self.matching!r}")
        if self.matching == "select" and self.compress.get("quantize"):
            raise DepthcutError("matching 'select' times float networks only: use matching 'band' with quantize")
        if self.share_networks and (self.matching != "select" or self.compress.get("importance_seed") is None):
            raise DepthcutError("share_networks needs matching 'select' and a fixed importance_seed in 'compress' "
                                "(the seeds' networks follow from one importance table)")
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

    def defers_recovery(self, method: str) -> bool:
        """Selecting, a method whose other plans may be chosen lands without recovery: whichever of its networks
        is chosen is recovered once, with the run's budget."""
        return self.matching == "select" and get_method(method).searchable

    def landing_config(self, method: str, speedup: float, seed: int) -> LayerMergeConfig:
        """The landing run's configuration (:meth:`defers_recovery`)."""
        cfg = self.run_config(method, speedup, seed)
        return replace(cfg, recovery_epochs=0.0) if self.defers_recovery(method) else cfg


@dataclass
class Run:
    """One method at one target and seed: its compress report, or why it could not land."""

    method: str
    target: float
    seed: int
    report: dict[str, Any] | None = None
    error: str | None = None
    joint: dict[str, Any] | None = None        # its speed-up timed in the same rounds as the others'
    # matching "select": the network chosen at the common point (plan, landed or not, accuracy after the one
    # recovery, median speed-up over the fresh timings, and each timing)
    matched: dict[str, Any] | None = None

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
        out["matched"] = self.matched
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
    controls: dict[int, dict] = field(default_factory=dict)   # seed -> the original fine-tuned the same way

    def at(self, target: float) -> list[Run]:
        return [r for r in self.runs if r.target == target]

    def compared(self, run: Run) -> dict[str, float] | None:
        """What the comparison says of one run: its accuracy (as deployed) and speed-up - the landed network's
        joint timing, or, selecting, the chosen network's median over its fresh timings - or None."""
        if self.config.matching == "select":
            m = run.matched
            return m and {"accuracy": m["accuracy"], "speedup": m["speedup"], "low": min(m["timings"]),
                          "high": max(m["timings"])}
        if not (run.landed and run.joint):
            return None
        return {"accuracy": deployed_accuracy(run.report), "speedup": run.joint["ratio"], "low": run.joint["low"],
                "high": run.joint["high"]}

    def table(self, target: float) -> list[dict[str, Any]]:
        """One row per method at ``target``: means over the seeds of accuracy (as deployed: int8 with
        ``quantize``) and jointly measured speed-up."""
        rows = []
        for method in self.config.methods:
            runs = [r for r in self.at(target) if r.method == method]
            said = [(r, c) for r in runs if (c := self.compared(r))]
            acc = [c["accuracy"] for _, c in said]
            speed = [c["speedup"] for _, c in said]
            rows.append({"method": method, "runs": len(runs), "landed": len(said),
                         "accuracy_before": statistics.mean(deployed_accuracy(r.report, "before") for r, _ in said)
                         if said else None,
                         "accuracy": statistics.mean(acc) if acc else None,
                         "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0 if acc else None,
                         "speedup": statistics.mean(speed) if speed else None,
                         "speedup_low": min((c["low"] for _, c in said), default=None),
                         "speedup_high": max((c["high"] for _, c in said), default=None),
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
            speeds = [c["speedup"] for r in self.at(target) if r.seed == seed and (c := self.compared(r))]
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
                "controls": {str(k): v for k, v in self.controls.items()},
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


def run_name(method: str, target: float, seed: int) -> str:
    return f"{method}-x{target:g}-seed{seed}"


# -- the stages -------------------------------------------------------------------------------------------
def compare(model: str | nn.Module, config: CompareConfig | None = None, *, out: str | Path | None = None,
            splits=None, command: str | None = None) -> Comparison:
    """Compress ``model`` with every method of ``config`` at every target and seed (module docstring), time
    each (target, seed)'s networks jointly - or, with ``matching="select"``, choose one network per method at a
    common measured point (depthcut.matching) - and return the :class:`Comparison` (written to ``out`` if
    given). A method that cannot land on a target is recorded with its one-line reason; the others go on.
    With ``out``, every landing, selection and recovery is stored as it finishes and reused by a rerun."""
    config = config or CompareConfig()
    t0 = time.time()
    state = _Comparing(model, config, out, splits)
    for seed in config.seeds:
        for target in config.speedups:
            if config.share_networks and seed != config.seeds[0]:
                state.replicate(target, seed)
                continue
            here = state.land(target, seed)
            if config.matching == "select":
                state.select(target, seed, here)
        if config.control:
            state.control(seed)
    for _ in range(config.fresh_timings - 1):      # later fresh timings, minutes apart from the first
        for key in list(state.matched):
            state.retime(*key)
    comparison = Comparison(config, state.name, state.runs, state.results, time.time() - t0, command,
                            state.controls)
    if out is not None:
        comparison.save_pretrained(out)
    return comparison


class _Comparing:
    """A comparison in progress: the landing runs, the selections and their stores (under ``out``)."""

    def __init__(self, model, config: CompareConfig, out, splits):
        self.model, self.config, self.splits = model, config, splits
        self.out = Path(out) if out is not None else None
        self.name = model if isinstance(model, str) else type(model).__name__
        self.runs: list[Run] = []
        self.results: dict[tuple[str, float, int], Any] = {}
        self.networks: dict[tuple[str, float, int], nn.Module] = {}    # each landed network, for the timings
        self.matched: dict[tuple[float, int], dict] = {}
        self.controls: dict[int, dict] = {}
        self._searches: dict[tuple[str, float, int], Any] = {}
        self.reference = None

    def say(self, msg: str) -> None:
        from .compression import say

        say(self.config.base(), f"compare: {msg}")

    def store(self, *parts: str) -> Path | None:
        return None if self.out is None else self.out.joinpath(*parts)

    def land(self, target: float, seed: int) -> list[Run]:
        """Every method landed at ``target`` (reused from ``out`` when stored with the same configuration), and
        the landed networks timed against the original in the same rounds."""
        here = [self._land_one(method, target, seed) for method in self.config.methods]
        landed = {r.method: self.networks[(r.method, target, seed)] for r in here if r.landed}
        if landed:
            joint = self._joint_landed(target, seed, {r.method: r for r in here if r.landed}, landed)
            for run in here:
                run.joint = joint.get(run.method)
        self.runs += here
        return here

    def _joint_landed(self, target: float, seed: int, runs: dict[str, Run], networks: dict[str, nn.Module]
                      ) -> dict[str, dict[str, Any]]:
        """The landed networks' joint timing, stored under ``out`` with what it timed: a rerun that reads the
        same landings back reports the same numbers instead of timing them again."""
        path = self.store("landed", f"x{target:g}-seed{seed}.json")
        signature = {m: plan_summary(r.report) for m, r in runs.items()}
        stored = _read(path) if path is not None else None
        if stored and stored.get("landed") == signature and stored.get("rounds") == self.config.joint_rounds:
            return stored["joint"]
        joint = _as_json(joint_speedups(self._reference(), networks, self.config.joint_rounds))  # as read back
        self._write(path, {"landed": signature, "rounds": self.config.joint_rounds, "joint": joint})
        return joint

    def _land_one(self, method: str, target: float, seed: int) -> Run:
        from .compression import Compression

        cfg = self.config.landing_config(method, target, seed)
        run, name = Run(method, target, seed), run_name(method, target, seed)
        stored = self._stored_landing(name, cfg)
        if isinstance(stored, str):
            run.error = stored
            return run
        if stored is None:
            self.say(f"{method} at x{target:g}, seed {seed}")
            try:
                compression = Compression(self.model, cfg, splits=self.splits)
                stored = compression.method.compress(compression)
            except (InfeasibleBudgetError, LatencyModelError) as e:
                # the method's own refusal on this machine, in one line; the others go on. A latency model that
                # would not fit may fit on a quieter machine: only an unreachable target is stored for a rerun
                run.error = " ".join(str(e).split())
                self.say(f"{method} at x{target:g} did not land: {run.error}")
                if isinstance(e, InfeasibleBudgetError):
                    self._write(self.store("runs", name + ".error.json"), {"config": cfg.to_dict(),
                                                                            "error": run.error})
                return run
            self.reference = self.reference or compression
            if self.out is not None:             # stored now: a rerun reuses it, the final save copies nothing
                folder = stored.save_pretrained(self.store("runs", name))
                stored = _Stored(stored.model, stored.report, folder)
        run.report = stored.report
        self.results[(method, target, seed)] = stored
        self.networks[(method, target, seed)] = stored.model
        return run

    def _stored_landing(self, name: str, cfg: LayerMergeConfig):
        """A landing stored under ``out`` by an earlier run of the same configuration (its network and report),
        its refusal (a string), or None."""
        if self.out is None:
            return None
        folder = self.store("runs", name)
        wanted = _as_json(cfg.to_dict())
        error = _read(folder.with_name(name + ".error.json"))
        if error and _same_config(error["config"], wanted):
            return error["error"]
        report = _read(folder / "report.json")
        if not report or not _same_config(report.get("config"), wanted) or not (folder / "model.onnx").exists():
            return None
        from .saved import load

        self.say(f"{name}: the stored landing")
        return _Stored(load(folder, None if isinstance(self.model, str) else self.model), report, folder)

    def _write(self, path: Path | None, data: dict) -> None:
        if path is not None:
            from .cache import atomic_write_json

            atomic_write_json(path, data)

    def search(self, method: str, target: float, seed: int):
        """The method's plan search at (target, seed), with the recovery recipe every compared network gets."""
        from .compression import Compression

        key = (method, target, seed)
        if key not in self._searches:
            run = Compression(self.model, self.config.run_config(method, target, seed), splits=self.splits)
            self._searches[key] = run.method.plan_search(run)
        return self._searches[key]

    def timer(self):
        ref = self._reference()
        return Timer(ref.backend, ref.example, ref.config.timing_sessions)

    def select(self, target: float, seed: int, here: list[Run]) -> None:
        """One network per method at a common measured point (depthcut.matching), each recovered once."""
        landed = {r.method: r for r in here if r.landed}
        if len(landed) < 2:
            return
        path = self.store("matched", f"x{target:g}-s{seed}.json")
        signature = {m: plan_summary(r.report) for m, r in landed.items()}
        result = _read(path) if path is not None else None
        if not result or result.get("landed") != signature or result.get("version") != MATCH_VERSION:
            result = match(target, {m: dict(r.report) for m, r in landed.items()},
                           {m: self.networks[(m, target, seed)] for m in landed},
                           lambda m: self.search(m, target, seed), self.timer(), self.config.joint_rounds,
                           self._reference().original, log=self.say)
            if result is None:
                for r in landed.values():
                    r.error = r.error or "no common measured point with the other methods"
                return
            result["landed"] = signature
            self._write(path, result)
        recover_chosen(result, lambda m: self.search(m, target, seed),
                       {m: None if self.config.defers_recovery(m) else r.report["accuracy_after"]
                        for m, r in landed.items()}, save=lambda: self._write(path, result), log=self.say)
        self._attach(target, seed, result, source_seed=seed)

    def _attach(self, target: float, seed: int, result: dict, source_seed: int) -> None:
        self.matched[(target, seed)] = result
        result["source_seed"] = source_seed
        said = reported(result)
        for run in self.runs:
            if run.target == target and run.seed == seed and run.method in result["chosen"]:
                pick = result["chosen"][run.method]
                run.matched = {"plan": pick["plan"], "landed": pick["landed"], "accuracy": pick["accuracy"],
                               "speedup": said["speedups"][run.method],
                               "timings": [t[run.method] for t in [result["speedups"]] + result.get("retimed", [])]}

    def chosen_networks(self, target: float, seed: int, result: dict) -> dict[str, nn.Module]:
        source = result.get("source_seed", seed)
        return {m: chosen_network(self.search(m, target, source) if not pick["landed"] else None, pick,
                                  self.networks.get((m, target, source)))
                for m, pick in result["chosen"].items()}

    def retime(self, target: float, seed: int) -> None:
        """One more fresh joint timing of the chosen networks and the original, stored."""
        result = self.matched[(target, seed)]
        if 1 + len(result.get("retimed", [])) >= self.config.fresh_timings:
            return
        speeds = self._time_alone(self.chosen_networks(target, seed, result))
        result.setdefault("retimed", []).append(speeds)
        self._write(self.store("matched", f"x{target:g}-s{seed}.json"), result)
        self._attach(target, seed, result, result["source_seed"])

    def _time_alone(self, networks: dict[str, nn.Module]) -> dict[str, float]:
        """The chosen networks and the original, and nothing else, in the same rounds: a fresh timing."""
        joint = joint_speedups(self._reference(), networks, self.config.joint_rounds)
        return {m: e["ratio"] for m, e in joint.items()}

    def replicate(self, target: float, seed: int) -> None:
        """``share_networks``: the first seed's chosen plans, recovered with this seed and timed afresh."""
        first = self.config.seeds[0]
        source = self.matched.get((target, first))
        here = [Run(r.method, target, seed, report=r.report, error=r.error) for r in self.runs
                if r.target == target and r.seed == first]
        self.runs += here
        if source is None:
            return
        path = self.store("matched", f"x{target:g}-s{seed}.json")
        plans = {m: p["plan"] for m, p in source["chosen"].items()}
        result = _read(path) if path is not None else None
        if not result or {m: p["plan"] for m, p in result["chosen"].items()} != plans:
            result = {"replica_of": first, "landed": source["landed"],
                      "chosen": {m: {"plan": p["plan"], "landed": p["landed"]} for m, p in source["chosen"].items()},
                      "source_seed": first}
            result["speedups"] = self._time_alone(self.chosen_networks(target, seed, result))
            self._write(path, result)
        recover_chosen(result, lambda m: self.search(m, target, seed) or self.landed_replica(m, target, seed), {},
                       save=lambda: self._write(path, result), log=self.say)
        self._attach(target, seed, result, source_seed=first)

    def landed_replica(self, method: str, target: float, seed: int) -> "_LandedReplica":
        """A method with no plan search (its landed network is its only candidate) at a later seed: the first
        seed's landed network, rebuilt and recovered with this seed's recipe (Method.recover_landed)."""
        from .compression import Compression

        run = Compression(self.model, self.config.run_config(method, target, seed), splits=self.splits)
        return _LandedReplica(run, self.results[(method, target, self.config.seeds[0])].report)

    def control(self, seed: int) -> None:
        """The original fine-tuned with the same recovery recipe (distillation from itself included)."""
        import copy

        from .compression import Compression, recovery_fine_tune
        from .train import evaluate

        path = self.store("control", f"s{seed}.json")
        cfg = self.config.run_config(self.config.methods[0], self.config.speedups[0], seed)
        stored = _read(path) if path is not None else None
        if stored and _same_config(stored["config"], _as_json(cfg.to_dict())):
            self.controls[seed] = stored
            return
        run, t0 = Compression(self.model, cfg, splits=self.splits), time.time()
        tuned = recovery_fine_tune(run, copy.deepcopy(run.original))
        self.controls[seed] = {"config": cfg.to_dict(), "accuracy_before": evaluate(run.original, run.splits.test),
                               "accuracy_after": evaluate(tuned, run.splits.test), "seconds": time.time() - t0}
        self._write(path, self.controls[seed])

    def _reference(self):
        """A Compression of the model (its original, example input, backend), for the timings."""
        if self.reference is None:
            from .compression import Compression

            cfg = self.config.run_config(self.config.methods[0], self.config.speedups[0], self.config.seeds[0])
            self.reference = Compression(self.model, cfg, splits=self.splits)
        return self.reference


def joint_speedups(reference, networks: dict[str, nn.Module], rounds: int) -> dict[str, dict[str, Any]]:
    """Every landed network of one (target, seed) against the original in the same rounds, on fresh sessions
    (depthcut.latency.compare.time_jointly)."""
    from .latency.compare import time_jointly

    estimates = time_jointly(reference.original, {m: n.to(reference.device).eval() for m, n in networks.items()},
                             reference.example, reference.backend, sessions=reference.config.timing_sessions,
                             rounds=rounds)
    return {m: e.to_dict() for m, e in estimates.items()}


@dataclass
class _Stored:
    """A landing read back from a comparison's folder: its network and report (already saved there)."""

    model: nn.Module
    report: dict[str, Any]
    folder: Path

    def save_pretrained(self, out: str | Path) -> Path:
        import shutil

        if Path(out).resolve() != self.folder.resolve():
            shutil.copytree(self.folder, out, dirs_exist_ok=True)
        return Path(out)


def _as_json(data: dict) -> dict:
    """``data`` as it reads back from JSON (tuples become lists), to compare with what was stored."""
    return json.loads(json.dumps(data, default=str))


_DEFAULTS = _as_json(LayerMergeConfig().to_dict())     # what a field stored before it existed ran with
# Fields that say where or how visibly a run works, not what it computes: a comparison resumed with its cache
# named by another path (relative vs absolute, another checkout) is the same comparison.
_PLACE_FIELDS = ("cache_dir", "progress")


def _same_config(stored: dict | None, wanted: dict) -> bool:
    """A stored run's configuration is this one: the split sizes a run fills in from the data (None asked for)
    aside, and a field added to the configuration since it was stored counts at its default (which is what
    the stored run ran with); where its caches lie and whether it showed progress do not count."""
    if stored is None:
        return False
    filled = {k: None for k in ("finetune_size", "score_size") if wanted.get(k) is None}
    added = {k: v for k, v in wanted.items() if k not in stored and k in _DEFAULTS and v == _DEFAULTS[k]}
    place = {k: None for k in _PLACE_FIELDS}
    return {**stored, **added, **filled, **place} == {**wanted, **place}


@dataclass
class _LandedReplica:
    run: Any
    report: dict

    def recover(self, plan) -> float:          # (the plan of a method with no plan search is its landing)
        return self.run.method.recover_landed(self.run, self.report)


def _read(path: Path | None) -> dict | None:
    if path is None or not path.exists():
        return None
    return json.loads(path.read_text())


# -- the report -------------------------------------------------------------------------------------------
def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _took(c: Comparison) -> str:
    # a resumed comparison reuses its stored landings and selections: its time is this invocation's only
    return f"{c.seconds / 60:.1f} minutes in the invocation that wrote this report (stored runs reused)."


def _how(c: Comparison) -> str:
    cfg = c.config
    if cfg.matching == "select":
        return (f"Each method lands within [target, target x {1 + cfg.match_tolerance:g}]; then one network per "
                f"method is chosen at a common measured point (depthcut.matching: candidates around each landing "
                f"timed in the same rounds, aiming within 2 %), recovered once, and timed against the original in "
                f"{cfg.fresh_timings} fresh joint timing(s) of {cfg.joint_rounds} rounds, minutes apart: the "
                f"speed-ups below are each network's median over them (mean over seeds; interval: the extreme "
                f"single timings){'; later seeds recover and time the first seed' + chr(39) + 's networks' if cfg.share_networks else ''}. "
                f"{_took(c)}")
    return (f"Each method lands within [target, target x {1 + cfg.match_tolerance:g}] (depthcut.compression), "
            f"then every network of one target and seed is timed against the original in the same "
            f"{cfg.joint_rounds} rounds (depthcut.latency.compare.compare_many): the speed-ups below are that joint "
            f"timing (mean over seeds; interval: the widest over seeds). {_took(c)}")


def render_markdown(c: Comparison) -> str:
    cfg, base = c.config, c.config.base()
    seeds = ", ".join(str(s) for s in cfg.seeds)
    lines = [f"# Methods compared at equal measured latency: {c.model}", "",
             *([f"`{c.command}`", ""] if c.command else []),
             f"{base.data}, {base.backend}{' int8' if base.quantize else ''} (batch {base.batch_size}"
             f"{'; accuracy and speed-ups of the int8 networks, against the int8 original' if base.quantize else ''})"
             f", recovery {base.recovery_epochs} epochs for every method, seeds {seeds}. " + _how(c), ""]
    if c.controls:
        acc = [v["accuracy_after"] for v in c.controls.values()]
        lines += [f"Control - the original fine-tuned with the same recovery (x1.0): "
                  f"{statistics.mean(acc):.2f}{f' ± {statistics.stdev(acc):.2f}' if len(acc) > 1 else ''} "
                  f"(before: {statistics.mean(v['accuracy_before'] for v in c.controls.values()):.2f}).", ""]
    for target in cfg.speedups:
        best = c.best(target)
        lines += [f"## x{target:g}", "",
                  "| method | landed | accuracy before | accuracy after | speed-up (joint, "
                  + ("95 % CI) |" if cfg.matching == "band" else "median [extreme timings]) |"),
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
            lines += [f"- {row['method']} did not land: {e}" for e in dict.fromkeys(row["errors"])]
        for r in c.at(target) if cfg.matching == "band" else []:     # selecting, the landing is not compared
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
    lines += ["## Runs", "", "Accuracy: the landed run's (when a method's recovery waits for the selection, its landing is "
              "not recovered: *(not recovered)*); the network compared is the chosen one (its accuracy after recovery "
              "and its plan, the landed plan unless another was chosen).", "",
              "| method | target | seed | landed accuracy | landed speed-up | joint speed-up (landed / chosen) | params | "
              "plan |", "|---|---|---|---|---|---|---|---|"]
    for r in c.runs:
        s = r.summary()
        joint = (f"x{r.joint['ratio']:.3f}" if r.joint else "-") + (
            f" / chosen {'landed' if r.matched['landed'] else 'another plan'}: {r.matched['accuracy']:.2f} at "
            f"x{r.matched['speedup']:.3f}" if r.matched else "")
        landed = f"x{s['speedup']:.3f}" if s["speedup"] else "-"
        plan = json.dumps(s["plan"]) if s["plan"] is not None else (r.error or "-")
        if r.matched and not r.matched["landed"] and r.matched.get("plan") is not None:
            plan = "chosen: " + json.dumps(r.matched["plan"])
        accuracy = _cell(s["accuracy_after"], ".2f") + (" *(not recovered)*" if cfg.defers_recovery(r.method)
                                                         and s["accuracy_after"] is not None else "")
        lines.append(f"| {r.method} | x{r.target:g} | {r.seed} | {accuracy} | {landed} | "
                     f"{joint} | {s['params_after'] or '-'} | {plan[:160]} |")
    return "\n".join(lines) + "\n"


def plot(c: Comparison, path: Path) -> None:
    """Accuracy against the jointly measured speed-up, one marker per run, one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in c.config.methods:
        said = [s for r in c.runs if r.method == method and (s := c.compared(r))]
        ax.scatter([s["speedup"] for s in said], [s["accuracy"] for s in said], label=method)
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
