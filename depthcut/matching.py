"""Equal measured latency by selection: one network per method, all within a few percent of each other.

Landing alone leaves methods several percent apart: each landing is its own timing, minutes from the others on
a shared machine, and every method's plans are discrete in latency (on ResNet-20 no depth plan lies between
x1.9 and x2.2; channel pruning jumps by 20 % between pruning ratios 0.4093 and 0.4109 on ONNX Runtime).
``depthcut compare --match select`` therefore *selects*, from timings taken in the same rounds:

1. candidates: each method's landed network and the plans its own search picks around it (``Method.plan_search``):
   a depth method's landing probes near or above the target and its DP at budgets predicted for x1.0-1.25 the
   target; channel pruning at ratios around its landed one in both families;
2. one coarse joint timing of every candidate and the original (one session each); where it leaves a method
   nothing at or above the target, the target is lowered by that timing's error (``COARSE``);
3. the common point (``common_point``): one network per method, all at or above the target,
   within AIM (2 %, else SPREAD, 3 %) of each other, nearest the target;
4. refinement: each method's ``NEAR`` candidates nearest the point timed again the way the report times, the
   point chosen again, up to ``REFINES`` times until within AIM;
5. gap filling: when no refinement got within AIM the plans are too far apart, so each method gets ``FILL``
   plans between its two that bracket another method's choice (channel pruning also plans mixed group by group,
   since its latency is a step function of the ratio), and refinement runs again; when the point lies beyond
   BAND above the target, the gaps are filled at the target itself instead;
6. confirmation: the chosen networks timed with the original alone (as every fresh timing is); when not within
   AIM, every candidate is shifted by its method's offset between the two timings and the point chosen again
   locally (``CONFIRMS`` times at most; the tightest kept);
7. the first fresh timing of the chosen networks, reported whatever it says (the selection's own numbers favour
   the chosen); ``depthcut.comparison`` adds more, minutes apart, and reports each network's median.

The history of this procedure (why each step exists, with the runs that showed it) is in docs/benchmarks.md.
"""
from __future__ import annotations

import copy
import math
import statistics
from typing import Any, Callable

import torch
from torch import nn

MATCH_VERSION = 2                      # 2: a point beyond the band fills every method's gaps at the target
SPREAD = 0.03                  # issue 9: all methods within 3 % of each other in measured latency
AIM = 0.02                     # what a selection aims at: a margin for the drift between timings
BAND = 0.10                    # a common point first within +10 % of the target (compress's landing band)
SELECT_ROUNDS = 100            # rounds of the coarse selection timing
NEAR = 3                       # candidates per method timed again around the common point
COARSE = 0.03                  # the coarse selection timing's error per network, below the target allowed
REFINES = 3                    # refinement timings at most
FILL = 3                       # gap-filling candidates per bracket
MIX, MIX_BELOW, MIX_ABOVE = 12, 2, 3      # channel plans mixed group by group: per pair, levels below / above
CONFIRMS = 3                   # timings of the chosen networks alone before the fresh one, at most
SPEEDUPS = [1.0 + 0.025 * k for k in range(11)]      # candidate depth plans: target x 1.0 .. 1.25
RATIOS = [0.7 + 0.05 * k for k in range(13)]         # candidate channel plans: landed ratio x 0.7 .. 1.3


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


# -- each method's plans around its landing -----------------------------------------------------------------
class DepthPlans:
    """A depth method's plans at any budget (its frontier over the run's latency rows and importance table, both
    read from the cache the landing filled), their networks, and their recovery with the run's recipe."""

    kind = "depth"

    def __init__(self, run):
        self.run, self.frontier = run, run.frontier
        self.by_key = {c.key: c for c in run.analysis.candidates}
        self.modelled: dict[tuple, float] = {}          # plan (sorted block keys) -> its modelled body cost

    def landed(self, report: dict) -> list[str]:
        """The landed plan's key (sorted block keys), its modelled cost noted for gap filling."""
        chosen = [p for p in report["probes"] if p.get("lands")] or [p for p in report["probes"] if p["meets"]]
        best = chosen[0] if chosen[0].get("lands") else max(chosen, key=lambda p: p["budget"])
        report.setdefault("plan_modelled", best.get("modelled"))
        return sorted(best["blocks"])

    def plans_at(self, budgets: list[float]) -> list[list[str]]:
        """The method's own choices at these modelled budgets (distinct plans, as sorted block keys)."""
        from .errors import InfeasibleBudgetError

        seen, out = set(), []
        for budget in budgets:
            try:
                solution = self.frontier.best(budget)
            except InfeasibleBudgetError:              # below the method's fastest plan
                continue
            key = tuple(sorted(r.ref.key for r in solution.rows))
            self.modelled[key] = solution.latency_ms
            if key not in seen:
                seen.add(key)
                out.append(list(key))
        return out

    def network(self, blocks: list[str]) -> nn.Module:
        from .compression import build_plan_network
        return build_plan_network(self.run, [self.by_key[k] for k in blocks])

    def recover(self, blocks: list[str]) -> float:
        from .cnn.build import plan_from_blocks
        from .compression import recover
        from .train import evaluate

        _, merged, _ = recover(self.run, plan_from_blocks(self.run.analysis.chain, [self.by_key[k] for k in blocks]))
        return evaluate(merged, self.run.splits.test)


class WidthPlans:
    """Channel pruning's plans: a pruning ratio in either family (global, uniform) or channel counts mixed
    group by group; their networks and their recovery with the run's recipe."""

    kind = "model"

    def __init__(self, run):
        from .cnn.channels import ChannelFrontier

        self.run = run
        self.channels = ChannelFrontier(copy.deepcopy(run.original).cpu(), run.example)
        self._roots: list[str] | None = None

    def landed(self, report: dict) -> dict:
        return {"pruning_ratio": report["pruning_ratio"], "channel_scope": report["channel_scope"]}

    def pruned(self, ratio: float, scope: str) -> nn.Module:
        return self.channels.at(ratio, scope).model

    def counts(self, plan: dict | None) -> dict[str, int]:
        """The channels each group keeps under a channel plan (None: the original)."""
        from .cnn.channels import channel_counts, group_roots

        if self._roots is None:
            self._roots = group_roots(self.run.original, self.run.example[:1])
        if plan is None:
            return channel_counts(self.run.original, self._roots)
        if "channel_counts" in plan:
            return dict(plan["channel_counts"])
        return channel_counts(self.pruned(plan["pruning_ratio"], plan["channel_scope"]), self._roots)

    def counted(self, counts: dict[str, int]) -> nn.Module:
        from .cnn.channels import prune_to_counts
        return prune_to_counts(self.run.original, self.run.example[:1], counts)          # prunes a copy

    def recover(self, plan: dict) -> float:
        from .compression import recovery_fine_tune
        from .train import evaluate

        pruned = copy.deepcopy(build(self, plan)).to(self.run.device)
        return evaluate(recovery_fine_tune(self.run, pruned), self.run.splits.test)


def build(search, plan) -> nn.Module:
    """The network of one of the method's plans: a channel plan ({"pruning_ratio", "channel_scope"}, or
    {"channel_counts", "channel_scope": "mixed"}) or a depth plan (sorted block keys)."""
    if search.kind == "model":
        if "channel_counts" in plan:
            return search.counted(plan["channel_counts"])
        return search.pruned(plan["pruning_ratio"], plan["channel_scope"])
    return search.network(plan)


def predicted_modelled(report: dict, speedup: float) -> float:
    """The modelled body cost at which the method's own landing probes predict ``speedup``: the fraction
    1 / ratio fitted affine in the modelled cost through the original (over every probe, since the candidates
    span x1.0-1.25 the target)."""
    from .search.target import slope_through_original

    full = report["modelled_body_ms_identity"]
    pts = [(p["modelled"], 1.0 / p["measured_ratio"]) for p in report["probes"]]
    b = slope_through_original(pts, full)
    if b is None:
        moved = [m for m, _ in pts if abs(m - full) > 1e-12]
        return min(moved) if moved else full / speedup
    return full + (1.0 / speedup - 1.0) / b


def candidates(method: str, search, report: dict, target: float, landed) -> dict[str, dict]:
    """name -> {"plan", "landed", "network"}: the landed plan first, then the method's own nearby choices
    (none for a method without a plan search: its landed network is its only candidate)."""
    plans = []
    if search is not None and search.kind == "model":
        macs = search.channels.at(landed["pruning_ratio"], landed["channel_scope"]).macs
        for scope, family in search.channels.families.items():
            start = landed["pruning_ratio"] if scope == landed["channel_scope"] else family.best(macs).ratio
            plans += [{"pruning_ratio": round(min(start * f, family.floor_plan.ratio), 4), "channel_scope": scope}
                      for f in RATIOS]
    elif search is not None:
        plans = probed_plans(search, report, target)
        plans += search.plans_at([predicted_modelled(report, target * f) for f in SPEEDUPS])
    out = {f"{method}/landed": {"plan": landed, "landed": True}}
    for i, plan in enumerate(p for k, p in enumerate(plans) if p != landed and p not in plans[:k]):
        out[f"{method}/{i}"] = {"plan": plan, "landed": False, "network": build(search, plan)}
    return out


def probed_plans(search, report: dict, target: float) -> list[list[str]]:
    """A depth method's landing probes that measured near or above the target (down to the coarse timing's
    error below it), as plans: its own choices, already timed once. The DP's plans at predicted budgets miss
    them when noisy probes bias the prediction (MobileNetV2 x1.25: probes x1.24 and x1.27, the predicted plans
    from x1.36 on)."""
    modelled = getattr(search, "modelled", None)
    plans = []
    for probe in report.get("probes", []):
        if "blocks" not in probe or probe.get("measured_ratio", 0.0) < target / (1 + COARSE):
            continue
        key = tuple(sorted(probe["blocks"]))
        if modelled is not None and probe.get("modelled") is not None:
            modelled.setdefault(key, probe["modelled"])
        plans.append(list(key))
    return plans


def _near(speeds: dict[str, float], names, aim: float) -> bool:
    return any(abs(math.log(speeds[n] / aim)) <= math.log1p(SPREAD / 2) for n in names)


def _bracket_lines(search, report: dict, mine: dict[str, dict], speeds: dict[str, float]) -> dict:
    """Per family, (speed-up, plan parameter) points of the method's timed candidates, the original included
    (x1.0): the pruning ratio for channel pruning, the modelled budget for a depth method."""
    if search.kind == "model":
        by_ratio = {n: c for n, c in mine.items() if "pruning_ratio" in c["plan"]}      # mixed plans have none
        scopes = {c["plan"]["channel_scope"] for c in by_ratio.values()}
        return {scope: [(1.0, 0.0)] + [(speeds[n], c["plan"]["pruning_ratio"]) for n, c in by_ratio.items()
                                        if c["plan"]["channel_scope"] == scope] for scope in scopes}
    modelled = getattr(search, "modelled", {})

    def cost(c):
        return report.get("plan_modelled") if c["landed"] else modelled.get(tuple(sorted(c["plan"])))
    points = [(speeds[n], cost(c)) for n, c in mine.items() if cost(c) is not None]
    return {None: [(1.0, report.get("modelled_body_ms_identity"))] + points} if points else {}


def fill_candidates(method: str, search, report: dict, pool: dict[str, dict], speeds: dict[str, float],
                    aims: list[float]) -> dict[str, dict]:
    """New candidates of ``method`` in the gaps of its plans around each speed-up in ``aims`` (the other
    methods' chosen ones): for each aim with no candidate of ``method`` within SPREAD / 2, FILL plans between
    its two timed candidates that bracket the aim (the original is the x1.0 end). Channel pruning interpolates
    the pruning ratio within each family; a depth method the modelled budget of its DP."""
    if search is None:
        return {}
    mine = {n: c for n, c in pool.items() if n.startswith(method + "/") and n in speeds}
    open_aims = [a for a in aims if not _near(speeds, mine, a)]
    mixed = mixed_fills(search, mine, speeds, open_aims) if search.kind == "model" else []
    wanted: dict = {}                               # family -> plan parameters to try
    for aim in open_aims:
        for scope, line in _bracket_lines(search, report, mine, speeds).items():
            slower = [p for p in line if p[0] < aim and p[1] is not None]
            faster = [p for p in line if p[0] >= aim and p[1] is not None]
            if slower and faster:
                (_, a), (_, b) = max(slower), min(faster)
                wanted.setdefault(scope, []).extend(a + (b - a) * k / (FILL + 1) for k in range(1, FILL + 1))
    if search.kind == "model":
        plans = [{"pruning_ratio": round(v, 4), "channel_scope": scope} for scope, vs in wanted.items() for v in vs]
        plans += mixed
    else:
        plans = search.plans_at(sorted(v for vs in wanted.values() for v in vs)) if wanted else []
    known = [c["plan"] for n, c in pool.items() if n.startswith(method + "/")]
    out = {}
    for plan in plans:
        if plan not in known:
            out[f"{method}/fill{len(known)}"] = {"plan": plan, "landed": False, "network": build(search, plan)}
            known.append(plan)
    return out


def mixed_fills(search, mine: dict[str, dict], speeds: dict[str, float], aims: list[float]) -> list[dict]:
    """Channel plans mixed group by group around each aim: between each of the method's ``MIX_BELOW`` nearest
    distinct speed levels below the aim (the original, x1.0, the last) and its ``MIX_ABOVE`` above, ``MIX``
    plans per pair (``mixed_counts``). Distinct levels (each beyond SPREAD from the last taken): the plans of
    one level share the groups that set its latency, so mixing towards several levels reaches other groups."""
    from .cnn.channels import mixed_counts

    def levels(points: list[tuple[float, dict]], n: int) -> list[dict]:
        taken: list[tuple[float, dict]] = []
        for speed, counts in points:
            if len(taken) < n and all(abs(math.log(speed / t)) > math.log1p(SPREAD) for t, _ in taken):
                taken.append((speed, counts))
        return [counts for _, counts in taken]

    points = sorted(((speeds[n], search.counts(c["plan"])) for n, c in mine.items()), key=lambda p: p[0])
    original = (1.0, search.counts(None))
    plans: list[dict] = []
    for aim in aims:
        below = [p for p in reversed(points) if p[0] < aim] + [original]
        above = [p for p in points if p[0] >= aim]
        for slower in levels(below, MIX_BELOW):
            for faster in levels(above, MIX_ABOVE):
                for counts in mixed_counts(slower, faster, MIX):
                    plan = {"channel_counts": counts, "channel_scope": "mixed"}
                    if plan not in plans:
                        plans.append(plan)
    return plans


# -- timing ---------------------------------------------------------------------------------------------------
class Timer:
    """Runtime sessions of networks on the run's backend, and joint timings of them (compare_many)."""

    def __init__(self, backend, example: torch.Tensor, sessions: int):
        self.backend, self.x, self.sessions = backend, example, sessions

    def runners(self, networks: dict[str, nn.Module], sessions: int | None = None) -> dict[str, list]:
        """Sessions of every network, made in turns (depthcut.latency.compare.interleaved_sessions)."""
        from .latency.compare import interleaved_sessions

        return interleaved_sessions(self.backend, networks, self.x, sessions or self.sessions)

    def joint(self, runners: dict, reference: str, rounds: int) -> dict[str, float]:
        from .latency.compare import compare_many

        est = compare_many(runners, reference=reference, rounds=rounds, block_rounds=5, warmup=5)
        return {name: e.ratio for name, e in est.items()}


def nearest(speeds: dict[str, float], methods: list[str], centre: float, k: int) -> list[str]:
    """Each method's ``k`` candidates nearest (in log speed-up) ``centre``."""
    out = []
    for m in methods:
        mine = sorted((n for n in speeds if n.startswith(m + "/")), key=lambda n: abs(math.log(speeds[n] / centre)))
        out += mine[:k]
    return out


def centre_of(speeds: dict[str, float], chosen: dict[str, str]) -> float:
    return math.exp(statistics.mean(math.log(speeds[n]) for n in chosen.values()))


def spread_of(speeds: dict[str, float], names) -> float:
    return max(speeds[n] for n in names) / min(speeds[n] for n in names) - 1


def reported(result: dict) -> dict:
    """What a report says of a matched result: each method's median speed-up over the fresh timings, the
    spread of those medians, and each single timing's spread (how far one timing alone could mislead)."""
    timings = [result["speedups"]] + result.get("retimed", [])
    medians = {m: statistics.median(t[m] for t in timings) for m in timings[0]}
    return {"speedups": medians, "spread": spread_of(medians, medians), "timings": len(timings),
            "spreads": [spread_of(t, t) for t in timings]}


# -- one (target, seed) ---------------------------------------------------------------------------------------
class _Selection:
    """The selection's state: every candidate (``pool``), every speed-up known so far (``known``: the latest
    timing of each), and the steps taken, for the record."""

    def __init__(self, target: float, methods: list[str], pool: dict[str, dict], landed: dict[str, nn.Module],
                 searches: Callable, reports: dict, timer: Timer, original: nn.Module, rounds: int, log):
        self.target, self.methods, self.pool, self.landed = target, methods, pool, landed
        self.searches, self.reports, self.timer, self.original = searches, reports, timer, original
        self.rounds, self.log = rounds, log
        self.known: dict[str, float] = {}
        self.refinements: list[dict] = []
        self.confirmations: list[dict] = []
        self.fills: dict[str, list[str]] = {}

    def runners(self, names, sessions: int | None = None) -> dict:
        """Fresh sessions of the original and the named candidates, made in turns (Timer.runners)."""
        return self.timer.runners({"original": self.original.eval()} | {
            n: self.landed[n.split("/")[0]] if self.pool[n]["landed"] else self.pool[n]["network"] for n in names},
            sessions=sessions)

    def select(self) -> dict[str, str]:
        """The coarse timing of every candidate, one session each, and its common point."""
        self.selection = self.timer.joint(self.runners(list(self.pool), sessions=1), "original", SELECT_ROUNDS)
        self.known = dict(self.selection)
        return (common_point(self.selection, self.methods, self.target)
                or common_point(self.selection, self.methods, self.target / (1 + COARSE)))

    def refine(self, chosen: dict[str, str], extra: list[str]) -> dict[str, str]:
        """Up to REFINES timings the way the report times, each re-choosing the common point."""
        for _ in range(REFINES):
            names = list(dict.fromkeys(nearest(self.known, self.methods, centre_of(self.known, chosen), NEAR)
                                       + list(chosen.values()) + extra))
            extra = []
            refined = self.timer.joint(self.runners(names), "original", self.rounds)
            self.known.update(refined)
            again = common_point(refined, self.methods, self.target) or chosen
            self.refinements.append({"timed": {n: refined[n] for n in names}, "chosen": again,
                                     "spread": spread_of(refined, again.values())})
            self.log(f"  refinement {len(self.refinements)}: {len(names)} candidates, spread "
                     f"{100 * self.refinements[-1]['spread']:.1f} %")
            chosen = again
            if self.refinements[-1]["spread"] <= AIM:
                break
        return chosen

    def off_band(self, chosen: dict[str, str]) -> bool:
        """The methods met, but beyond the band above the target: some method had no candidate near it."""
        return max(self.known[n] for n in chosen.values()) > self.target * (1 + BAND)

    def fill(self, chosen: dict[str, str]) -> dict[str, str]:
        """New plans in each method's gaps, then refinement again: around the other methods' choices when those
        are too far apart, or at the target itself when the point lies beyond the band (ResNet-20 x1.5: channel
        pruning landed at x1.78, its plans stepping from x1.45 to it, and the methods met at x1.85)."""
        at_target = self.off_band(chosen)
        aim = self.target * (1 + AIM / 2)
        for method in self.methods:
            aims = [aim] if at_target else [self.known[n] for m, n in chosen.items() if m != method]
            new = fill_candidates(method, self.searches(method), self.reports[method], self.pool, self.known, aims)
            self.pool |= new
            self.fills[method] = list(new)
        added = [n for names in self.fills.values() for n in names]
        self.log(f"  gap filling{' at the target' if at_target else ''}: {len(added)} new candidates")
        if not added:
            return chosen
        # at the target, every method's candidates there are timed with the new ones (the point may move there)
        return self.refine(chosen, added + (nearest(self.known, self.methods, aim, NEAR) if at_target else []))

    def alone(self, chosen: dict[str, str]) -> dict[str, float]:
        """The chosen networks timed with the original and nothing else, as every fresh timing is."""
        prepared = self.runners(list(chosen.values()))
        return self.timer.joint({"original": prepared["original"]} | {m: prepared[n] for m, n in chosen.items()},
                                "original", self.rounds)

    def confirm(self, chosen: dict[str, str]) -> dict[str, str]:
        """Timed alone, a network can sit 2-3 % off its refinement timing: shift every candidate by its method's
        offset and choose again, locally (no faster than SPREAD above the confirmation's fastest: a jump to a far
        point would compare the methods somewhere else than at the target). The tightest choice is kept."""
        for _ in range(CONFIRMS):
            speeds = self.alone(chosen)
            self.confirmations.append({"chosen": dict(chosen), "speedups": speeds, "spread": spread_of(speeds, speeds)})
            self.log(f"  confirmation {len(self.confirmations)}: spread {100 * self.confirmations[-1]['spread']:.1f} %")
            if self.confirmations[-1]["spread"] <= AIM:
                break
            offset = {m: speeds[m] / self.known[n] for m, n in chosen.items()}
            shifted = {n: r * offset[n.split("/")[0]] for n, r in self.known.items() if n.split("/")[0] in offset}
            ceiling = max(speeds.values()) * (1 + SPREAD)
            again = common_point({n: r for n, r in shifted.items() if r <= ceiling}, self.methods, self.target)
            if not again or any(again == c["chosen"] for c in self.confirmations):
                break
            chosen = again
        return min(self.confirmations, key=lambda c: c["spread"])["chosen"]

    def record(self, coarse: dict[str, str], chosen: dict[str, str], final: dict[str, float]) -> dict[str, Any]:
        first = self.known | self.selection     # a filled plan was not in the selection: its refinement stands in
        return {"version": MATCH_VERSION,
                "chosen": {m: {"plan": self.pool[n]["plan"], "landed": self.pool[n]["landed"],
                               "selection_speedup": first[n], "refined_speedup": self.known[n],
                               "candidates": sorted(first[c] for c in self.pool if c.startswith(m + "/"))}
                           for m, n in chosen.items()},
                "speedups": final, "rounds": self.rounds, "selection_rounds": SELECT_ROUNDS,
                "selection_spread": spread_of(first, chosen.values()),
                "coarse_choice": {m: {"plan": self.pool[n]["plan"], "selection_speedup": self.selection[n]}
                                  for m, n in coarse.items()},
                "refinements": self.refinements, "confirmations": self.confirmations,
                "fills": {m: [{"plan": self.pool[n]["plan"], "speedup": self.known.get(n)} for n in names]
                          for m, names in self.fills.items()},
                "spread": spread_of(final, final)}


def match(target: float, reports: dict[str, dict], landed: dict[str, nn.Module], searches: Callable,
          timer: Timer, rounds: int, original: nn.Module, log: Callable[[str], None] = print) -> dict | None:
    """One network per method at a common measured point at or above ``target`` (module docstring), or None when
    the methods' candidates share no such point. ``reports``: each method's landing report; ``landed``: its
    landed network; ``searches(method)``: its plan search (DepthPlans, WidthPlans or None)."""
    methods = list(reports)
    pool: dict[str, dict] = {}
    for method in methods:
        search = searches(method)
        plan = search.landed(reports[method]) if search is not None else None
        pool |= candidates(method, search, reports[method], target, plan)
    log(f"x{target:g}: timing {len(pool)} candidates of {len(methods)} methods jointly")
    s = _Selection(target, methods, pool, landed, searches, reports, timer, original, rounds, log)
    chosen = s.select()
    if not chosen:
        return None
    coarse = dict(chosen)
    chosen = s.refine(chosen, [])
    if s.refinements[-1]["spread"] > AIM or s.off_band(chosen):
        chosen = s.fill(chosen)
    for m, n in chosen.items():
        log(f"  {m}: {'landed plan' if pool[n]['landed'] else 'another plan'} at x{s.known[n]:.3f}")
    chosen = s.confirm(chosen)
    return s.record(coarse, chosen, s.alone(chosen))       # the first fresh timing: reported whatever it says


def chosen_network(search, pick: dict, landed: nn.Module) -> nn.Module:
    """A chosen network: the landed one, or its plan built again."""
    return landed if pick["landed"] else build(search, pick["plan"])


def recover_chosen(result: dict, searches: Callable, landed_accuracy: dict[str, float | None],
                   save: Callable[[], None] = lambda: None, log: Callable[[str], None] = print) -> None:
    """The accuracy of every chosen network after the same recovery: the landed run's own where it was recovered
    (``landed_accuracy[method]`` not None), else a recovery of the chosen plan now with the run's recipe. Each
    recovery is stored (``save()``) as it finishes, so a killed comparison resumes after it."""
    import time

    for method, pick in result["chosen"].items():
        if "accuracy" in pick:
            continue
        if pick["landed"] and landed_accuracy.get(method) is not None:
            pick["accuracy"] = landed_accuracy[method]
            continue
        t0 = time.time()
        pick["accuracy"] = searches(method).recover(pick["plan"])
        pick["recovery_s"] = time.time() - t0
        save()
        log(f"{method}: recovered the matched plan in {pick['recovery_s']:.0f} s -> {pick['accuracy']:.2f} %")
