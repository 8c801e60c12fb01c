"""The latency model the DP optimises, calibrated on whole networks (SPEC A5, issue 32).

A latency row times one merged conv as its own call. A network does not pay a row's cost: each call pays a
fixed part (binding the input, allocating and returning the output, waking the thread pool) that inside a
network is paid once for the whole network, and a part that grows with the bytes moved. So the model is

    T(plan) = other + sum over the plan's rows of (t_row - call(row) + w * weights(row)),
    call(row) = a + b * bytes(row)

with ``other`` the time outside the modelled body (stem, head, pooling, the network's own call). ``w``: a row
timed alone runs its repeats on weights that stay in cache; inside a network the other convs' weights evict
them and each call reads them again (OpenVINO's per-op profile inside MobileNetV2 at 28x28: the 160 -> 1280
1x1 conv, 0.8 MB of weights, ran 46-49 us in the network over three profiles and 35 us alone, most small
convs within 3 us of their rows). A runtime that times a row by its own per-op profile (OpenVINO: depthcut.latency.backends) gives
rows without the call; there ``a`` and ``b`` come out about zero or negative: each op's dispatch, and
activations read from further away than in a row's repeats. Measuring
``a`` and ``b`` on micro-benchmarks (a chain of 1 vs 5 cheap ops) is a difference of two noisy numbers: on
ONNX Runtime CPU five fresh runs fitted ``a`` between 1.1 and 9.5 us, and with MobileNetV2's 52 rows
a few microseconds per row decided whether a plan was predicted at x2 or at a negative latency. Here they are
fitted where they act, on whole networks: the network of the identity plan, networks of latency-only plans
with fewer and fewer rows (the DP maximising the number of blocks under falling budgets, no importance
needed), the fastest plan inside each third of the chain (early blocks move many bytes per call, late ones
few: these plans tell a from b) and plans that reach the same budgets by other merges (the DP with each merge
worth a seeded random amount, as the DP with importance reaches them) are timed against the identity, all in
the same paired rounds
(depthcut.latency.compare.time_jointly; each sample after untimed warm calls, as the plan runs alone when compress
probes it: without them, OpenVINO float32 MobileNetV2's plans measured up to 4 % faster in those rounds than
alone, and the model inherited it, bench/results/timing_warm_calls_mobilenet_v2_fmnist_openvino.md), and
``other``, ``a`` and ``b`` are the least-squares fit of the measured times. The leave-one-out fits give the
overhead's range, and the fit's error on its own networks is reported.

A row costs the network at least ROW_FLOOR of its time alone. Sanity checks refuse a broken model before the
DP uses it: a calibration network with a non-positive modelled latency, a negative time outside the body, a
modelled identity network off its measurement by more than MAX_SELF_ERROR, or a calibration network off by
more than MAX_FIT_ERROR (the table and the networks timed in different states of the machine) among those a
landing can use (at most CHECKED_SPEEDUP faster than the identity network, or the target's reach). A failed check
re-times the table and the calibration once (fresh sessions); if it fails again, compress stops with one line
(:class:`LatencyModelError`).
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..cnn.build import is_trivial
from ..cnn.chain import Candidate
from ..errors import DepthcutError

# calibration plans' budgets, fractions of the single-call body (0: fastest): as many networks as the fit
# has noise to average (four left MobileNetV2's fitted bytes term 0 - 23 us/MB apart between fresh runs), as
# many at the deep end, where a wrong per-call cost shows most, as at the shallow end
FRACTIONS = (0.85, 0.75, 0.65, 0.55, 0.47, 0.4, 0.35, 0.3, 0.25, 0.2, 0.0)
REGIONS = 3                           # plus the fastest plan inside each third of the chain (calibration_plans)
# plus, for each of these seeds, the plans at RANDOM_FRACTIONS when each merge is worth a random amount: the DP
# with importance reaches a budget by other merges than the one counting blocks (calibration_plans)
RANDOM_SERIES = (1, 2, 3)
RANDOM_FRACTIONS = (0.75, 0.6, 0.45, 0.3)
MAX_SELF_ERROR = 0.10                 # the model must reproduce the identity plan's network this well ...
MAX_FIT_ERROR = 0.20                  # ... and every other calibration network this well ...
# ... that runs at most this much faster than the identity network (or than the target asks, if more): the
# fastest plan (MobileNetV2 at 28x28: 4 convs, ~x9) is fitted and reported but does not veto the model. It is
# an extrapolation no landing uses, and the one network the fit misses: OpenVINO int8 MobileNetV2's calibrations
# missed it by -21 / -24 % in bench/deploy_int8.py (bench/results/deploy_int8.md at c6bf1a8), which then fell back
# to the additive model and erred up to 27 %; two exploratory warm calibrations (not kept, docs/benchmarks.md)
# missed it by -23 / -27 % with every other network within 7 % in the first
CHECKED_SPEEDUP = 4.0
# a row never costs a network less than this fraction of its time alone: the fitted per-call cost is one line
# through all rows, and can exceed the smallest rows' time alone (MobileNetV2's 32-channel 1x1 convs at
# 28x28 time 21 us; one fit gave a = 21 us + 13.6 us/MB), which would make them free for the DP
ROW_FLOOR = 0.1


def row_bytes(candidate: Candidate, batch_size: int | None = None) -> float:
    """Bytes of the row's input and output tensors (float32): what the per-byte part of a call moves."""
    n = batch_size or candidate.input_shape[0]
    h, w = candidate.input_shape[2:]
    oh, ow = -(-h // candidate.stride), -(-w // candidate.stride)
    return 4.0 * n * (candidate.in_channels * h * w + candidate.out_channels * oh * ow)


class LatencyModelError(DepthcutError):
    """The latency table and its calibration do not make a usable model (the message says which check).
    ``models``: the refused fits of the last calibration (each anchor's), their networks included, for a
    benchmark to record."""

    def __init__(self, message: str, models: Sequence["LatencyModel"] = ()):
        super().__init__(message)
        self.models = list(models)


@dataclass
class LatencyModel:
    """What the DP sees of a row, and what a plan is predicted to cost end to end."""

    kind: str = "additive"                 # "per-call" (calibrated) or "additive" (the rows as timed)
    call_ms: float = 0.0                   # a: fixed cost of one call
    call_ms_per_byte: float = 0.0          # b: cost per byte of a row's input and output
    other_ms: float = 0.0                  # time outside the modelled body
    batch_size: int | None = None
    call_ms_range: tuple[float, float] = (0.0, 0.0)            # leave-one-out fits of a
    call_ms_per_byte_range: tuple[float, float] = (0.0, 0.0)   # and of b
    calibration: list[dict[str, Any]] = field(default_factory=list)   # the networks it was fitted on
    attempts: int = 1
    # the original's measured time over the identity plan's network (eager keeps BatchNorm as its own op, a
    # runtime that folds it gives ~1): speed-ups are against the original
    original_factor: float = 1.0
    # why the per-call model gave way to this additive one (latency_model "auto"), else None
    fallback: str | None = None
    # the identity plan's network as timed with the calibration networks over the same network at the table's
    # pace (1: no table-paced anchor): how much the machine's pace moved between the table and the calibration
    calibration_pace: float = 1.0
    # which milliseconds the calibration networks' ratios were turned into: the original as timed with the
    # table ("table"), or the identity network as timed with the networks ("networks"; calibrate)
    anchor: str = "networks"
    weight_ms_per_byte: float = 0.0        # w: reading a row's weights inside a network, per byte (float32)
    # the calibration networks its fit was checked on: those at most this much faster than the identity network
    # (None: every one)
    checked_speedup: float | None = None

    def call_cost_ms(self, candidate: Candidate) -> float:
        return self.call_ms + self.call_ms_per_byte * row_bytes(candidate, self.batch_size)

    def row_ms(self, candidate: Candidate, timed_ms: float) -> float:
        """A row's cost inside a network (identity options cost nothing)."""
        if not candidate.kept or timed_ms == 0:
            return 0.0
        if self.kind != "per-call":
            return timed_ms
        return max(timed_ms - self.call_cost_ms(candidate), ROW_FLOOR * timed_ms) \
            + self.weight_ms_per_byte * weight_bytes(candidate)

    def network_ms(self, body_ms: float) -> float:
        return self.other_ms + body_ms

    @property
    def identity_ms(self) -> float | None:
        """The identity plan's network as measured at calibration (None: an additive model, never timed)."""
        return next((p["measured_ms"] for p in self.calibration if p["network"] == "identity"), None)

    def original_over_model(self, full_body_ms: float) -> float:
        """The original's time over the modelled identity network's (``full_body_ms``: the identity plan's
        modelled body): the original_factor, times how far the model misses the identity network, which was
        measured. Speed-ups are measured against the original, so the model is asked only for the plan: on
        OpenVINO int8 the rows floored at ROW_FLOOR put the identity network 6-8 % above its measurement and
        every plan's predicted speed-up as much too high (MobileNetV2 at 28x28: 11.3 % worst error modelling
        both; anchored, 3.1 % on the same runs and 4.4 % over 3 fresh ones; bench/results/latency_model_*)."""
        modelled = self.network_ms(full_body_ms)
        return self.original_factor * self.identity_network_ms(full_body_ms) / modelled if modelled > 0 \
            else self.original_factor

    def identity_network_ms(self, full_body_ms: float) -> float:
        """The identity plan's network: as measured at calibration, else (never timed) as modelled."""
        return self.identity_ms or self.network_ms(full_body_ms)

    def predicted_speedup(self, body_ms: float, full_body_ms: float) -> float:
        """The speed-up over the original of a plan whose modelled body is ``body_ms`` (``full_body_ms``: the
        identity plan's): the original as measured at calibration over the plan's modelled network."""
        return self.original_factor * self.identity_network_ms(full_body_ms) / self.network_ms(body_ms)

    @property
    def self_error(self) -> float:
        """The largest relative error of the model on the networks it was fitted on."""
        return max((abs(p["modelled_ms"] / p["measured_ms"] - 1) for p in self.calibration), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencyModel":
        d = dict(d)
        for k in ("call_ms_range", "call_ms_per_byte_range"):
            d[k] = tuple(d[k])
        return cls(**d)


def weight_bytes(candidate: Candidate) -> float:
    """Bytes of the row's merged kernel in float32 (an int8 runtime's fit scales ``w`` to its own)."""
    groups = candidate.in_channels if candidate.depthwise else candidate.groups
    return 4.0 * (candidate.in_channels // groups) * candidate.out_channels * candidate.kernel ** 2


# -------------------------------------------------------------------------------------------- the fit ---

@dataclass(frozen=True)
class Point:
    """One timed network: its rows' call count, bytes and summed single-call timings, and its measured time."""

    calls: int
    bytes: float
    rows_ms: float
    measured_ms: float
    weights: float = 0.0   # bytes of its rows' weights


Params = tuple[float, float, float, float]      # other, a, b, w


def _design(points: Sequence[Point], terms: str) -> np.ndarray:
    columns = [np.ones(len(points))]
    if "calls" in terms:
        columns.append(np.array([-float(p.calls) for p in points]))
    if "bytes" in terms:
        columns.append(np.array([-p.bytes for p in points]))
    if "weights" in terms:
        columns.append(np.array([p.weights for p in points]))
    return np.column_stack(columns)


def _solve(points: Sequence[Point], terms: str) -> Params | None:
    """Least squares of measured = other + rows - a * calls - b * bytes + w * weights with the given terms (None
    when the points cannot determine them), with other >= 0: the time outside the body cannot be negative, and
    where it is about nothing (ResNet-20 at 28x28: a one-conv stem and a pooled head) the unconstrained fit puts
    it a few microseconds below zero, so it is fitted at 0 instead."""
    X = _design(points, terms)
    if len(points) < X.shape[1] or np.linalg.matrix_rank(X) < X.shape[1]:
        return None
    y = np.array([p.measured_ms - p.rows_ms for p in points])
    coef = list(np.linalg.lstsq(X, y, rcond=None)[0])
    if coef[0] < 0 and X.shape[1] > 1:                 # the bound is active: other = 0
        coef = [0.0] + list(np.linalg.lstsq(X[:, 1:], y, rcond=None)[0])
    other = float(coef.pop(0))
    a = float(coef.pop(0)) if "calls" in terms else 0.0
    b = float(coef.pop(0)) if "bytes" in terms else 0.0
    w = float(coef.pop(0)) if "weights" in terms else 0.0
    return other, a, b, w


def _predict(params: Params, p: Point) -> float:
    other, a, b, w = params
    return other + p.rows_ms - a * p.calls - b * p.bytes + w * p.weights


def fit(points: Sequence[Point], plausible: Callable[[Params], bool] = lambda f: True) -> Params:
    """Least squares of measured = other + rows - a * calls - b * bytes + w * weights. Returns (other, a, b, w).

    The weights term first, and kept only if reading weights comes out costing time (w >= 0); else the same
    forms without it. Refitted without it on the same stored runs (bench/latency_model_terms.py, 3 fresh tables
    each), the model missed its calibration networks by 32 % (OpenVINO float32 MobileNetV2 at 28x28, rows from
    the per-op profile) and 33 % (OpenVINO int8, ResNet-20 and MobileNetV2) against 13 % and 19 % with it, and
    the probed plans by 10.0 % and 18.1 % against 6.3 % and 10.0 %; ONNX Runtime int8's plans 5.2 % either way.
    (A term for the residual adds a plan keeps, tried first, fitted the networks too, an add at 12-15 us; the
    profile shows the adds fused into the convs at about nothing, and it missed the plans by up to 32 %.)

    Either sign: a runtime that pays a fixed cost per call (ONNX Runtime) gives a, b > 0; eager CPU gives a
    network *more* per op than a row timed alone, whose input and weights stay in cache across repeats
    (MobileNetV2: its 52 rows sum to 6.9 ms, the network runs 9.1), so there a or b comes out negative.
    The form is both terms when the points determine them, ``plausible`` accepts them (the time outside the
    body is not negative) and a and b have the same sign: calls and bytes fall together from plan to plan, so
    a fit can trade one against the other (a = -500 us, b = +400 us/MB on one ResNet-34 table), which is
    noise. Otherwise the single term (calls or bytes) with the smaller relative residuals, else a constant.
    Not the form that predicts each calibration network best when fitted on the others: on ten fresh
    MobileNetV2 tables that leave-one-out choice dropped the bytes term whenever the fastest network (an
    extrapolation for the rest) was held out badly, and erred up to 13.7 % on the plans the DP chose, where
    both terms erred at most 10.5 %."""
    if len({p.weights for p in points}) > 1:
        with_weights = _fit_form(points, plausible, "+weights")
        if with_weights[3] >= 0:
            return with_weights
    return _fit_form(points, plausible, "")


def _fit_form(points: Sequence[Point], plausible: Callable[[Params], bool], extra: str) -> Params:
    """:func:`fit`'s choice among the per-call forms, each with the ``extra`` term ("" or "+weights")."""
    both = _solve(points, "calls+bytes" + extra)
    if both is not None and plausible(both) and both[1] * both[2] >= 0:
        return both
    # one term: the one that reproduces the networks better (calls alone missed one MobileNetV2 table's plans
    # by 38 %, bytes alone by 8 %)
    single = [f for f in (_solve(points, t + extra) for t in ("calls", "bytes")) if f is not None and plausible(f)]
    if single:
        # (rounded: where calls and bytes are proportional the two fit alike, and calls is kept)
        return min(single, key=lambda f: round(sum((_predict(f, p) / p.measured_ms - 1) ** 2 for p in points), 12))
    return _solve(points, "constant" + extra) or (0.0, 0.0, 0.0, 0.0)


def leave_one_out(points: Sequence[Point], plausible: Callable[[Params], bool] = lambda f: True) -> list[Params]:
    """The fit without each point in turn (how much one network moves it)."""
    if len(points) <= 3:
        return []
    return [fit([p for j, p in enumerate(points) if j != i], plausible) for i in range(len(points))]


def plan_point(rows: Sequence[tuple[Candidate, float]], measured_ms: float, batch_size: int | None) -> Point:
    """The fit's view of one network: ``rows`` are (candidate, single-call ms) of its plan."""
    kept = [(c, t) for c, t in rows if c.kept and t > 0]
    return Point(calls=len(kept), bytes=sum(row_bytes(c, batch_size) for c, _ in kept),
                 rows_ms=sum(t for _, t in kept), measured_ms=measured_ms,
                 weights=sum(weight_bytes(c) for c, _ in kept))


def model_from_points(points: Sequence[Point], plans: Sequence[Sequence[tuple[Candidate, float]]],
                      names: Sequence[str], batch_size: int | None,
                      intervals: Sequence[tuple[float, float]] | None = None, attempts: int = 1) -> LatencyModel:
    """The fitted model; ``plans`` (each point's (candidate, single-call ms) rows) model each calibration
    network as the DP will, rows floored at ROW_FLOOR of their time alone."""
    def plausible(params: Params) -> bool:
        """The time outside the body is not negative (rows cannot go below their floor)."""
        return params[0] >= 0

    other, a, b, w = fit(points, plausible)
    loo = leave_one_out(points, plausible)
    model = LatencyModel("per-call", a, b, other, batch_size,
                         call_ms_range=(min((f[1] for f in loo), default=a), max((f[1] for f in loo), default=a)),
                         call_ms_per_byte_range=(min((f[2] for f in loo), default=b),
                                                 max((f[2] for f in loo), default=b)),
                         attempts=attempts, weight_ms_per_byte=w)
    for i, (name, p) in enumerate(zip(names, points)):
        low, high = intervals[i] if intervals else (p.measured_ms, p.measured_ms)
        model.calibration.append({"network": name, "calls": p.calls, "bytes": p.bytes, "rows_ms": p.rows_ms,
                                  "weights": p.weights,
                                  "measured_ms": p.measured_ms, "low_ms": low, "high_ms": high,
                                  "modelled_ms": other + sum(model.row_ms(c, t) for c, t in plans[i]),
                                  # (the plan's non-identity rows: what a refit offline needs besides the table)
                                  "merged": [c.key for c, _ in plans[i] if not is_trivial(c)]})
    return model


def problems(model: LatencyModel, checked_speedup: float | None = CHECKED_SPEEDUP) -> list[str]:
    """What makes ``model`` unusable for the DP (empty: usable). Its fit is checked on the calibration networks
    at most ``checked_speedup`` times faster than the identity network (CHECKED_SPEEDUP; None: on every one)."""
    found = []
    if model.other_ms < 0:
        found.append(f"the time outside the modelled body comes out negative ({model.other_ms:.4f} ms)")
    for p in model.calibration:
        if p["modelled_ms"] <= 0:
            found.append(f"the {p['network']} network is modelled at {p['modelled_ms']:.4f} ms")
    fastest_checked = (model.identity_ms or 0.0) / checked_speedup if checked_speedup else 0.0
    checked = [p for p in model.calibration if p["measured_ms"] >= fastest_checked]
    worst = max(checked, key=lambda p: abs(p["modelled_ms"] / p["measured_ms"] - 1), default=None)
    if worst is not None and abs(worst["modelled_ms"] / worst["measured_ms"] - 1) > MAX_FIT_ERROR:
        found.append(f"the model misses its own {worst['network']} network by "
                     f"{worst['modelled_ms'] / worst['measured_ms'] - 1:+.0%} (at most {MAX_FIT_ERROR:.0%} allowed): "
                     f"the table and the networks disagree, as when the machine changed pace between them")
    identity = next((p for p in model.calibration if p["network"] == "identity"), None)
    if identity is not None and abs(identity["modelled_ms"] / identity["measured_ms"] - 1) > MAX_SELF_ERROR:
        found.append(f"the identity plan's network is modelled at {identity['modelled_ms']:.3f} ms but measures "
                     f"{identity['measured_ms']:.3f} ms [{identity['low_ms']:.3f}, {identity['high_ms']:.3f}]")
    return found


# ----------------------------------------------------------------------------------- the calibration ---

def calibration_plans(rows: Sequence[tuple[Candidate, float]], length: int,
                      fractions: Sequence[float] = FRACTIONS, regions: int = REGIONS,
                      random_series: Sequence[int] = RANDOM_SERIES,
                      random_fractions: Sequence[float] = RANDOM_FRACTIONS) -> list[tuple[str, list[Candidate]]]:
    """Latency-only plans with fewer and fewer rows: the DP maximising the number of blocks (every row worth
    1) under budgets of ``fractions`` of the single-call body (0: the fastest plan); the fastest plan inside
    each of ``regions`` parts of the chain; and for each seed of ``random_series`` the plans at
    ``random_fractions`` of the body when each merged row is worth a random amount. No importance needed;
    duplicates dropped. The identity plan (every block its own conv) comes first."""
    import random

    from ..search.layermerge import solve
    from ..search.tables import Row

    table = [Row(c.start, c.end, t, 1.0, ref=c) for c, t in rows]
    identity = [c for c, _ in rows if is_trivial(c)]
    body = sum(t for c, t in rows if c in identity)
    frontier = solve(table, length, max_latency_ms=body)
    plans, seen = [("identity", identity)], {tuple(c.key for c in identity)}

    def add(name: str, chosen: list[Candidate]) -> None:
        key = tuple(c.key for c in chosen)
        if key not in seen:
            seen.add(key)
            plans.append((name, chosen))

    for f in fractions:
        budget = max(frontier.min_latency_ms, f * body)
        add(f"{f:.0%} budget" if f > 0 else "fastest", [r.ref for r in frontier.best(budget).rows])
    # the plans above remove early and late blocks together, so their call counts and bytes fall in step and
    # the fit cannot tell a per-call cost from a per-byte one; a plan that merges only one part of the chain
    # (the early, wide-activation part or the late, narrow one) moves them apart
    for r in range(regions):
        lo, hi = length * r // regions, length * (r + 1) // regions
        inside = [row for row in table if row.ref in identity or lo <= row.ref.start and row.ref.end <= hi]
        region = solve(inside, length, max_latency_ms=body)
        add(f"fastest in positions {lo}-{hi}", [row.ref for row in region.best(region.min_latency_ms).rows])
    # counting blocks, every tight budget takes the same cheapest merges (MobileNetV2 at 28x28: the stem and the
    # first five blocks into one 7x7 conv, 0-12-k7, in every plan at or under 47 % of the body), while the DP
    # with importance reaches them by others (OpenVINO int8: 6-12-k5, 3-6-k3, 3-12-k7, which no calibration
    # network had; the model missed those plans by 12.5-20 % in bench/results/deploy_int8.md at 8a9d0a9). A
    # merged row worth a random amount (a seeded draw, scaled by the convs it keeps, as an importance would
    # reward them) makes the DP reach each budget another way. Refitted on the same timings (3 fresh runs each,
    # bench/results/latency_model_terms.md), the worst error on those compress plans timed alone went from 11.1 to
    # 9.1 % (OpenVINO int8 MobileNetV2, every run 1.5-3 points better) and 9.0 to 5.6 % (float32); where the
    # errors were small or the rows' own noise rules, it costs under a point (ONNX Runtime int8 4.1 -> 4.9 %,
    # OpenVINO int8 ResNet-20 13.3 -> 13.9 %).
    for seed in random_series:
        draw = random.Random(seed)
        worth = [1.0 if is_trivial(r.ref) else draw.uniform(0.3, 1.5) * max(1, len(r.ref.kept)) ** 0.5
                 for r in table]
        scattered = solve([Row(r.start, r.end, r.latency_ms, w, ref=r.ref) for r, w in zip(table, worth)], length,
                          max_latency_ms=body)
        for f in random_fractions:
            budget = max(scattered.min_latency_ms, f * body)
            add(f"random {seed} at {f:.0%}", [r.ref for r in scattered.best(budget).rows])
    return plans


def calibrate(rows: Mapping[str, tuple[Candidate, float]], length: int, *,
              time_networks: Callable[[dict[str, list[Candidate] | None]], Mapping[str, Any]],
              batch_size: int | None = None, retries: int = 1,
              retime_rows: Callable[[], Mapping[str, float]] | None = None,
              original_ms: Callable[[], float] | None = None,
              checked_speedup: float | None = CHECKED_SPEEDUP,
              say: Callable[[str], None] = lambda s: None) -> LatencyModel:
    """Fit the per-call model on whole networks (module docstring). ``rows``: candidate key -> (candidate,
    single-call ms) of every candidate the DP may use; ``time_networks(plans)`` times the identity plan's
    network against every plan's network of ``plans`` (name -> blocks; None: the original network) *in the same
    rounds*, and returns name -> SpeedupEstimate whose ratio is identity / that network (:func:`network_timer`).
    One joint timing, not one per network: timed one after another, the networks saw different states of a
    shared machine, and that drift went into the fit (one MobileNetV2 calibration on ONNX Runtime measured
    the original at x0.981 of the identity network, the plans' joint timing minutes later at x1.016, and
    the model missed the plans by 10.7 %). Re-times up to ``retries`` times when a sanity check fails, then
    raises :class:`LatencyModelError`; the fit is checked on the networks at most ``checked_speedup`` times faster
    than the identity network (:func:`problems`; the model records it). A re-time takes the rows again too when ``retime_rows`` is given (it
    returns key -> single-call ms, replacing the cached table): a slow phase of a shared machine can last the
    whole table (one fresh MobileNetV2 table on ONNX Runtime came out 50 % slower than the networks it
    models, and no per-call cost could reconcile them), and the caller reads the table again afterwards.

    ``original_ms()``: the original network timed with the table, in its passes (depthcut.latency.table.
    network_spec; read after a re-time, which times it again). The joint timing gives every calibration network
    as a ratio to the identity network, which is free of the machine's pace; only the anchor that turns those
    ratios into milliseconds is not. Anchored on the identity network as timed with the networks, a machine
    that ran the calibration at another pace than the table handed the fit networks and rows at two paces (three
    fresh OpenVINO int8 MobileNetV2 runs timed their calibration networks at x1.02-1.19 the pace of their tables'
    fastest passes, bench/results/latency_model_openvino_int8_mobilenet_v2_fmnist_threads1.md). Anchored on the
    original as timed with the table (times the joint timing's identity / original ratio), rows and networks are
    at one pace. Rows are timed alone, though, and networks in rounds with others: where the rows' fixed
    coefficient fits the networks' own milliseconds better (OpenVINO float32 MobileNetV2 at 28x28: 4 of 4
    calibrations on the table's anchor modelled the identity network 12-15 % above it), the same timings are
    fitted again on the networks' anchor before anything is re-timed (``LatencyModel.anchor`` says which held)."""
    found: list[str] = []
    for attempt in range(1, retries + 2):
        if attempt > 1 and retime_rows is not None:
            fresh = retime_rows()
            rows = {k: (c, fresh[k]) for k, (c, _) in rows.items()}
        plans = calibration_plans(list(rows.values()), length)
        timed = {c.key: t for c, t in rows.values()}
        estimates = time_networks({ORIGINAL: None, **{name: plan for name, plan in plans[1:]}})
        now_ms = statistics.median(e.original_ms for e in estimates.values())   # the identity network, now
        anchors = ([("table", original_ms() * estimates[ORIGINAL].ratio)] if original_ms is not None else []) \
            + [("networks", now_ms)]
        found, refused = [], []
        for anchor, identity_ms in anchors:
            model = _fit_anchored(plans, timed, estimates, identity_ms, batch_size, attempt)
            model.anchor, model.calibration_pace = anchor, now_ms / identity_ms
            model.checked_speedup = checked_speedup
            fit_problems = problems(model, checked_speedup)
            if not fit_problems:
                return model
            found = found or fit_problems       # the first anchor's problems are reported
            refused.append(model)
        again = "the latency table and the calibration networks" if retime_rows else "the calibration networks"
        say(f"latency model, attempt {attempt}: {'; '.join(found)}"
            + (f"; timing {again} again" if attempt <= retries else ""))
    raise LatencyModelError(
        f"the latency table does not make a usable per-call model after {retries + 1} calibrations: "
        f"{found[0]}; time again on a quieter machine, or use --latency-model additive", refused)


def _fit_anchored(plans, timed: Mapping[str, float], estimates: Mapping[str, Any], identity_ms: float,
                  batch_size: int | None, attempt: int) -> LatencyModel:
    """The per-call model of the calibration networks, their ratios to the identity network (``estimates``)
    turned into milliseconds with the identity network at ``identity_ms``."""
    points = [plan_point([(c, timed[c.key]) for c in plans[0][1]], identity_ms, batch_size)]
    intervals = [(identity_ms, identity_ms)]
    for name, plan in plans[1:]:
        e = estimates[name]
        points.append(plan_point([(c, timed[c.key]) for c in plan], identity_ms / e.ratio, batch_size))
        intervals.append((identity_ms / e.high, identity_ms / e.low))
    model = model_from_points(points, [[(c, timed[c.key]) for c in plan] for _, plan in plans],
                              [name for name, _ in plans], batch_size, intervals, attempt)
    model.original_factor = 1.0 / estimates[ORIGINAL].ratio
    return model


ORIGINAL = "the original network"     # its name among the calibration networks (time_jointly keeps "original")
CALIBRATION_ROUNDS = 40               # paired rounds of the calibration networks' joint timing


def network_timer(analysis: Any, backend: Any, example: Any, original: Any, sessions: int = 2,
                  rounds: int = CALIBRATION_ROUNDS) -> Callable[[dict[str, list[Candidate] | None]], dict[str, Any]]:
    """``time_networks`` for :func:`calibrate`: builds the plans' networks from ``analysis`` (as the landing
    does) and times them and the original against the identity plan's network in the same paired rounds
    (depthcut.latency.compare.time_jointly), each on ``sessions`` fresh runtime sessions."""
    from ..cnn.build import build_merged, build_unmerged, plan_from_blocks
    from .compare import time_jointly

    def build(blocks: list[Candidate]):
        plan = plan_from_blocks(analysis.chain, blocks)
        return build_merged(build_unmerged(analysis.gm, analysis.chain, plan).eval(), analysis.chain, plan).eval()

    def timer(plans: dict[str, list[Candidate] | None]) -> dict[str, Any]:
        identity = build([c for c in analysis.candidates if is_trivial(c)])
        networks = {name: original if blocks is None else build(blocks) for name, blocks in plans.items()}
        return time_jointly(identity, networks, example, backend, sessions=sessions, rounds=rounds)
    return timer


def additive(batch_size: int | None = None, fallback: str | None = None) -> LatencyModel:
    """The rows as timed, summed (no per-call correction); ``fallback``: why a per-call model gave way to it."""
    return LatencyModel("additive", batch_size=batch_size, fallback=fallback)


__all__ = ["CHECKED_SPEEDUP", "LatencyModel", "LatencyModelError", "Point", "additive", "calibrate", "calibration_plans",
           "fit", "leave_one_out", "model_from_points", "network_timer", "problems", "row_bytes", "weight_bytes"]
