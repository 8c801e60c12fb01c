"""Land on a measured speed-up target: probe plans, calibrate the latency model, stop inside the band.

The DP optimises a *modelled* latency (the sum of table rows). What the user asked for is a *measured*
speed-up S. A probe builds the plan chosen at a modelled budget and times it against the original
(depthcut.latency.compare: a ratio with a 95% interval). A probe

* meets the target when the interval's low end is >= S (the interval says it is fast enough), and
* lands when, in addition, the estimate is <= (1 + tolerance) * S (not needlessly fast: a faster plan
  costs accuracy the user did not need to give).

Between probes the model is calibrated on what was measured. The measured fraction of the original's
latency, f = 1 / ratio, is taken as affine in the modelled cost m; the line passes through the original
(m = full, f = 1) and is fitted to the probes nearest the target, so both a fixed cost outside the table
and a wrong scale of the table are corrected. The next budget solves f(m) = 1 / (S * aim), aim placing the
probe inside the band, and is kept strictly between the largest budget known to meet and the smallest known
to miss (bisection when the model proposes a plan already tried). The search ends at the first plan that
lands, or after ``max_probes``: then the most important plan that met (the largest budget) is chosen, and
the report says it overshoots.

When nothing met, the fastest plan decides feasibility. If its estimate is at or above the target but its
interval still reaches below (a noisy machine, a short timing), it is not infeasible, only undecided: with a
``retime`` the plan is timed once more, longer, and that timing decides.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable

from ..errors import InfeasibleBudgetError

if TYPE_CHECKING:        # the search stays free of torch: the estimate is only a type here
    from ..latency.compare import SpeedupEstimate


@dataclass
class Probe:
    budget: float                     # modelled budget the plan was chosen at
    modelled: float                   # the plan's modelled cost
    estimate: SpeedupEstimate
    meets: bool
    lands: bool
    plan: Any = field(repr=False, default=None)

    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.budget, "modelled": self.modelled, "meets": self.meets, "lands": self.lands,
                **{f"measured_{k}": v for k, v in self.estimate.to_dict().items()}}


@dataclass
class Landing:
    plan: Any
    probe: Probe
    probes: list[Probe]
    overshoot: bool                   # the chosen plan met the target but not within the tolerance


def predicted_fraction(modelled: float, full: float, other: float) -> float:
    """The additive model before any probe: (other + m) / (other + full)."""
    return (other + modelled) / (other + full)


def slope_through_original(points: list[tuple[float, float]], full: float) -> float | None:
    """Slope b of f(m) = 1 + b (m - full) fitted by least squares to (modelled cost, measured fraction) points
    with the original's point (full, 1) fixed. None when no point has a modelled cost different from full, or
    when the measured cost does not increase with the modelled cost (no usable model)."""
    pts = [(m, f) for m, f in points if abs(m - full) > 1e-12]
    if not pts:
        return None
    b = sum((m - full) * (f - 1.0) for m, f in pts) / sum((m - full) ** 2 for m, _ in pts)
    return b if b > 0 else None


def calibrate(probes: list[Probe], full: float, target_fraction: float) -> tuple[float, float] | None:
    """Slope and intercept of f(m) = a + b m through (full, 1) and the probes nearest the target, by least
    squares with the original's point fixed. None when no probe has a modelled cost different from full."""
    pts = sorted(((p.modelled, 1.0 / p.estimate.ratio) for p in probes if abs(p.modelled - full) > 1e-12),
                 key=lambda mf: abs(mf[1] - target_fraction))[:2]
    b = slope_through_original(pts, full)
    return None if b is None else (1.0 - b * full, b)


def land_on_target(choose: Callable[[float], tuple[Hashable, float, Any]],
                   measure: Callable[[Any, Callable[[SpeedupEstimate], bool]], SpeedupEstimate],
                   *, target: float, full: float, floor: float, other: float, max_probes: int = 8,
                   tolerance: float = 0.10, aim: float = 1.04, original_factor: float = 1.0,
                   retime: Callable[[Any, Callable[[SpeedupEstimate], bool]], SpeedupEstimate] | None = None,
                   known: dict[Hashable, SpeedupEstimate] | None = None,
                   say: Callable[[str], None] = lambda s: None) -> Landing:
    """Probe plans until one meets ``target`` (a speed-up > 1) within ``tolerance``.

    ``choose(budget) -> (plan key, modelled cost, plan)`` picks the plan for a modelled budget (raises
    InfeasibleBudgetError below ``floor``, the fastest plan's modelled cost); ``measure(plan, decided)``
    times it (``decided(estimate)`` lets the timing stop early once the interval is clear of the band's
    edges). ``full`` is the original's modelled cost, ``other`` the cost outside the table (same unit), and
    ``original_factor`` the original's time over the modelled identity network's; they seed the model before
    the first probe. ``retime(plan, decided)``, when given, is a
    longer timing for the one case a longer timing can settle: the fastest plan measured fast enough but
    with an interval reaching below the target. ``known`` maps plan keys to estimates that stand instead of
    a new timing (a confirmation that contradicted an earlier landing).
    """
    search = _Search(choose, measure, target=target, tolerance=tolerance, goal=1.0 / (target * aim), full=full,
                     floor=floor, retime=retime, known=known or {}, say=say)
    # first budget: the additive model seeded with the measured cost outside the table
    budget = max(floor, min(full, search.goal * original_factor * (other + full) - other))
    for _ in range(2 * max_probes):                  # a cached probe (same plan) does not count
        if len(search.probes) >= max_probes:
            break
        try:
            p = search.probe(budget)
        except InfeasibleBudgetError:
            p = search.probe(floor)
        if p.lands:
            return Landing(p.plan, p, search.probes, overshoot=False)
        budget = search.next_budget()
        if budget is None:
            break
    met = [p for p in search.probes if p.meets] or [search.fastest_that_meets()]
    best = max(met, key=lambda q: q.budget)            # the most important plan that met
    return Landing(best.plan, best, search.probes, overshoot=not best.lands)


@dataclass
class _Search:
    """The probes of one landing: which plans were timed, what they measured, where to look next."""

    choose: Callable[[float], tuple[Hashable, float, Any]]
    measure: Callable[[Any, Callable[[SpeedupEstimate], bool]], SpeedupEstimate]
    target: float
    tolerance: float
    goal: float                       # the measured fraction of the original's latency aimed at
    full: float
    floor: float
    retime: Callable[[Any, Callable[[SpeedupEstimate], bool]], SpeedupEstimate] | None
    known: dict[Hashable, SpeedupEstimate]
    say: Callable[[str], None]
    probes: list[Probe] = field(default_factory=list)
    tried: dict[Hashable, Probe] = field(default_factory=dict)

    @property
    def upper(self) -> float:
        return self.target * (1.0 + self.tolerance)

    def decided(self, e: SpeedupEstimate) -> bool:
        """The interval is clear of the band's edges: a longer timing would not change the verdict."""
        return e.high < self.target or e.low > self.upper or (e.low >= self.target and e.high <= self.upper)

    def judged(self, budget: float, modelled: float, est: SpeedupEstimate, plan) -> Probe:
        meets = est.low >= self.target
        return Probe(budget, modelled, est, meets=meets, lands=meets and est.ratio <= self.upper, plan=plan)

    def probe(self, budget: float) -> Probe:
        key, modelled, plan = self.choose(budget)
        if key in self.tried:                         # same plan as before: the measurement stands
            return self.tried[key]
        est = self.known[key] if key in self.known else self.measure(plan, self.decided)
        p = self.judged(budget, modelled, est, plan)
        self.tried[key] = p
        self.probes.append(p)
        self.say(f"plan {len(self.probes)}: modelled {modelled:.3f} at budget {budget:.3f}, measured "
                 f"{p.estimate.describe()} -> {'lands in' if p.lands else 'meets' if p.meets else 'misses'} the "
                 f"target x{self.target:.2f}" + (f" (band up to x{self.upper:.2f})" if p.meets and not p.lands else ""))
        return p

    def next_budget(self) -> float | None:
        """The calibrated model's budget, kept strictly between the largest budget known to meet and the
        smallest known to miss; when it picks a plan already tried, bisect. None: nothing untried is left."""
        lo = max((p.budget for p in self.probes if p.meets), default=self.floor)
        hi = min((p.budget for p in self.probes if not p.meets), default=self.full)
        line = calibrate(self.probes, self.full, self.goal)
        want = (self.goal - line[0]) / line[1] if line is not None else (lo + hi) / 2
        if not lo < want < hi:
            want = (lo + hi) / 2                      # the model points outside what is known: bisect
        for _ in range(40):                           # choose() is one DP query: cheap
            key = self.choose(want)[0]
            if key not in self.tried:
                return want
            if self.tried[key].meets:                 # that plan is fast enough: look slower
                lo = max(lo, want)
            else:
                hi = min(hi, want)
            if hi - lo <= 1e-9 * max(self.full, 1e-12):
                return None
            want = (lo + hi) / 2
        return None

    def fastest_that_meets(self) -> Probe:
        """Nothing met: the fastest plan there is decides feasibility. Measured fast enough but with an
        interval reaching below the target, it is undecided, not infeasible: timed once more, longer (with a
        ``retime``), and that timing decides."""
        p = self.probe(self.floor)
        if not p.meets and self.retime is not None and p.estimate.ratio >= self.target:
            self.say(f"the fastest plan measured {p.estimate.describe()}: fast enough but undecided; timing it longer")
            p = self.judged(p.budget, p.modelled, self.retime(p.plan, self.decided), p.plan)
            self.probes.append(p)
            self.say(f"plan {len(self.probes)} (the fastest again, longer): measured {p.estimate.describe()} -> "
                     f"{'meets' if p.meets else 'misses'} the target x{self.target:.2f}")
        if not p.meets:
            e = p.estimate
            raise InfeasibleBudgetError(
                f"no plan reaches x{self.target:.3f} (its 95% interval at or above the target): the fastest plan "
                f"measures {e.compressed_ms:.3f} ms vs {e.original_ms:.3f} ms for the original ({e.describe()})",
                minimum=e.compressed_ms)
        return p
