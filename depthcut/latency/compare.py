"""A measured speed-up with a confidence interval (issue 9).

A shared machine's timings drift and spike: a single median of pooled samples can say x2.02 in one run and
x2.66 in the next for the same plan. So the two networks are timed in *rounds*, interleaved (the order
alternates), and each round gives one paired ratio

    r_k = median(original samples of round k) / median(compressed samples of round k)

A drift slower than a round hits both alike and cancels in r_k. The estimate is the median of the r_k; its
95% confidence interval is distribution-free (order statistics of the rounds: the median lies between the
k-th smallest and k-th largest r with probability >= 95%, k from the binomial(n, 1/2) tail), so one outlier
round moves neither the estimate nor the interval much, and the outlier count is reported, not hidden in a
stdev. Rounds are added until the interval is narrow enough (``rel_width``) or ``max_rounds`` is reached.

Runtime sessions differ too. On this 2-core machine (ONNX Runtime, ResNet-20, ~0.6 ms a call) one session pair
timed for 200 rounds gave a 2 % interval, yet 8 such measurements, each with fresh sessions, spread over 5 %:
an interval covering one session's noise only held another measurement's median 29 % of the time
(``bench/timing_stability.py``). So a comparison may time ``sessions`` runner pairs, each in turn for a
block of rounds; each session's median ratio is one observation of the session effect, and the interval is
widened to cover a Student-t interval on their (log) mean, so it is honest about the spread a fresh
measurement would see.

Sessions are made in turns: session j of every network before session j + 1 of any, the networks' order rotated
with j (:func:`interleaved_sessions`). Made one network after another, the reference's sessions made first,
three copies of MobileNetV2 timed against the original itself measured x1.003 / x1.014 / x1.010 (medians of 40
joint timings; ONNX Runtime, one thread): every speed-up ~1 % too high. Made in turns: x1.002 / x1.000 / x0.998
(bench/timing_order.py, bench/results/timing_order.log).

Several networks in the same rounds (:func:`compare_many`) evict each other's weights and activations from the
caches: a network's first calls after the others ran are slower than a deployed network's, which runs warm, and
more so the more it reads. Its samples are therefore taken after ``warm_calls`` untimed calls. Without them
(OpenVINO float32 MobileNetV2 at 28x28, one thread, 5 plans and the identity network in rounds with the
original, 5 calls a sample) the plans measured on average x1.017 and at worst x1.039 the speed-up the same plan
measures alone against the original (:func:`compare_speed`, as compress probes and reports it), and two timings of
a plan differed by up to 7 %; with 3 untimed calls first, x1.002 and x1.008 at worst, the two timings within 2.1 %
(bench/results/timing_warm_calls_mobilenet_v2_fmnist_openvino.md).
"""
from __future__ import annotations

import contextlib
import math
import statistics
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

import torch
from torch import nn

from .backends import Backend, Runner, get_backend, measure, median_interval, sample_ms, timing_copy

# Student t, two-sided 95 %, by degrees of freedom (the session interval; no scipy dependency)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (the nearest tabulated df at or below;
    1.96 beyond 30)."""
    if df < 1:
        raise ValueError("t needs at least one degree of freedom")
    if df > 30:
        return 1.96
    return T95[max(k for k in T95 if k <= df)]


def session_interval(session_ratios: list[float]) -> tuple[float, float] | None:
    """95 % interval of the ratio across runtime sessions: a t interval on the mean log of each session's
    median ratio (a ratio's noise is multiplicative). None with fewer than two sessions."""
    if len(session_ratios) < 2:
        return None
    logs = [math.log(r) for r in session_ratios]
    mean, sd = statistics.mean(logs), statistics.stdev(logs)
    half = t95(len(logs) - 1) * sd / math.sqrt(len(logs))
    return math.exp(mean - half), math.exp(mean + half)


def session_of_round(k: int, block_rounds: int, sessions: int) -> int:
    """The runtime session round ``k`` uses: each session in turn for ``block_rounds`` rounds."""
    return (k // block_rounds) % sessions


def outliers(values: list[float], scale: float = 3.0) -> int:
    """How many values lie more than ``scale`` robust standard deviations (1.4826 MAD) from the median."""
    if len(values) < 3:
        return 0
    med = statistics.median(values)
    mad = 1.4826 * statistics.median(abs(v - med) for v in values)
    if mad == 0:
        return sum(v != med for v in values)
    return sum(abs(v - med) > scale * mad for v in values)


@dataclass(frozen=True)
class SpeedupEstimate:
    """original / compressed latency from paired interleaved rounds; > 1 means compressed is faster."""

    ratio: float                  # median of the per-round ratios
    low: float                    # 95% confidence interval of that median
    high: float
    rounds: int
    outlier_rounds: int           # rounds whose ratio is > 3 robust stdevs from the median
    original_ms: float            # median over all samples
    compressed_ms: float
    compressed_high_ms: float     # upper end of the 95% interval of the compressed per-round medians
    sessions: int = 1             # runtime session pairs the rounds rotated through
    session_ratios: tuple[float, ...] = ()   # each session's median ratio (the interval covers their spread)
    # how much slower the original ran in the timings this one replaced, over the run's usual pace (:class:`Pace`)
    slow_timings: tuple[float, ...] = ()

    @property
    def rel_width(self) -> float:
        return (self.high - self.low) / self.ratio

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        out = f"x{self.ratio:.3f} [{self.low:.3f}, {self.high:.3f}] over {self.rounds} rounds"
        out += f" in {self.sessions} sessions" if self.sessions > 1 else ""
        out += f", {self.outlier_rounds} outlier rounds" if self.outlier_rounds else ""
        return out + (f", after {len(self.slow_timings)} slow timing(s)" if self.slow_timings else "")


PACE_LIMIT = 1.4      # an original this much slower than the run's usual pace marks a timing of a slow phase
PACE_RETRIES = 2      # timings again of a slow one, at most


@dataclass
class Pace:
    """The pace of the original across one run's paired timings, to catch a timing taken in a slow phase.

    A paired ratio cancels a slowdown that hits both networks in proportion, but a slow phase of a shared
    machine does not: MobileNetV2 int8 on OpenVINO (one thread) ran its original at 0.914 ms in one landing probe
    against 0.485-0.602 ms in the landing's other timings, and the plan measured x1.68 where it measured
    x2.2-2.4 otherwise and the latency model said x2.22 (bench/results/deploy_int8.md, second run). The
    landing took it for a miss. The original's own time is the signal: over both deploy_int8 runs' 219
    timings (reachability, probes, confirmations), each one's original over the median of the run's earlier
    ones stayed at most x1.23, and that probe's was x1.54. A timing whose original runs more than
    ``limit`` times that median is timed again (``retries`` times at most), and the timing whose original
    ran fastest stands; its ``slow_timings`` say how slow the ones it replaced were."""

    limit: float = PACE_LIMIT
    retries: int = PACE_RETRIES
    originals_ms: list[float] = field(default_factory=list)   # the original's time in each standing timing

    def slowdown(self, estimate: SpeedupEstimate) -> float:
        """The original's time in ``estimate`` over its median in the run's timings so far (1 before any)."""
        return estimate.original_ms / statistics.median(self.originals_ms) if self.originals_ms else 1.0

    def steady(self, time_once: Callable[[], SpeedupEstimate],
               say: Callable[[str], None] = lambda s: None) -> SpeedupEstimate:
        """``time_once()``, timed again while its original runs slow; the standing timing is recorded."""
        estimate, slow = time_once(), []
        while self.slowdown(estimate) > self.limit and len(slow) < self.retries:
            slow.append(self.slowdown(estimate))
            say(f"the original ran x{slow[-1]:.2f} its usual pace in this timing ({estimate.original_ms:.3f} ms "
                f"against {statistics.median(self.originals_ms):.3f}): the machine was in a slow phase, timing "
                f"again")
            estimate = min(estimate, time_once(), key=lambda e: e.original_ms)
        self.originals_ms.append(estimate.original_ms)
        return replace(estimate, slow_timings=tuple(slow)) if slow else estimate


def compare_speed(original: nn.Module, compressed: nn.Module, example_input: torch.Tensor,
                  backend: str | Backend = "eager", *, repeats: int = 5, min_rounds: int = 10,
                  max_rounds: int = 40, rel_width: float = 0.03, warmup: int = 3, sessions: int = 1,
                  block_rounds: int = 5, decided: Callable[[SpeedupEstimate], bool] | None = None,
                  drift: float | None = None) -> SpeedupEstimate:
    """Time ``original`` against ``compressed`` in interleaved rounds of ``repeats`` calls each until the 95%
    interval of the ratio is narrower than ``rel_width`` (relative) or ``decided(estimate)`` says the answer
    is already clear, with at least ``min_rounds`` and at most ``max_rounds`` rounds. ``sessions`` runtime
    sessions of each model are prepared and the rounds rotate through them (see the module docstring).
    ``drift``: the interval's floor (:func:`with_drift`), the backend's own (``Backend.drift``) by default."""
    backend = get_backend(backend)
    runners = interleaved_sessions(backend, {"original": original, "compressed": compressed}, example_input,
                                   sessions)
    for runs in runners.values():
        for run in runs:
            measure(run, warmup=warmup, repeats=1)
    return paired_rounds(lambda name, session=0: sample_ms(runners[name][session], repeats), min_rounds=min_rounds,
                         max_rounds=max_rounds, rel_width=rel_width, decided=decided, sessions=sessions,
                         block_rounds=block_rounds, drift=backend.drift() if drift is None else drift)


def paired_rounds(sample: Callable[..., list[float]], *, min_rounds: int = 10, max_rounds: int = 40,
                  rel_width: float = 0.03, decided: Callable[[SpeedupEstimate], bool] | None = None,
                  sessions: int = 1, block_rounds: int = 1, drift: float = 0.0) -> SpeedupEstimate:
    """The one paired-timing loop every comparison uses (CNNs, LLM generation, diffusion sampling):
    ``sample(name)`` times one round of ``"original"`` or ``"compressed"`` (ms, one or more samples); the order
    alternates so drift and a warm cache favour neither; each round gives one ratio of the round medians.
    With ``sessions`` > 1, round k calls ``sample(name, s)`` for session s = (k // block_rounds) % sessions:
    each session pair runs ``block_rounds`` rounds in a row, then the next. (Rotating every round measured
    every call with cold caches - up to 3 % slower ratios than a deployed model's, whose weights stay warm.)
    The order alternates every round (every sweep when ``block_rounds`` is 1), so every session sees both.
    Stops once the 95% interval of the median ratio is narrower than ``rel_width`` (relative) or
    ``decided(estimate)``, with at least ``min_rounds`` and at most ``max_rounds`` rounds. ``drift``: the
    interval is never narrower than +-drift (relative) around the ratio (:func:`with_drift`)."""
    if sessions < 1:
        raise ValueError(f"sessions must be >= 1, got {sessions}")
    if block_rounds < 1:
        raise ValueError(f"block_rounds must be >= 1, got {block_rounds}")
    pooled: dict[str, list[float]] = {"original": [], "compressed": []}
    per_round: dict[str, list[float]] = {"original": [], "compressed": []}
    ratios: list[float] = []
    session_of: list[int] = []
    estimate = None
    for k in range(max(1, max_rounds)):
        session = session_of_round(k, block_rounds, sessions)
        flip = (k if block_rounds > 1 else k // sessions) % 2     # every session sees both orders
        for name in (("original", "compressed") if flip == 0 else ("compressed", "original")):
            s = list(sample(name, session) if sessions > 1 else sample(name))
            pooled[name] += s
            per_round[name].append(statistics.median(s))
        ratios.append(per_round["original"][-1] / max(per_round["compressed"][-1], 1e-12))
        session_of.append(session)
        if len(ratios) >= min_rounds or len(ratios) == max_rounds:
            estimate = with_drift(estimate_from_rounds(ratios, pooled, per_round, session_of), drift)
            if estimate.rel_width <= max(rel_width, 2 * drift) or (decided is not None and decided(estimate)):
                break
    return estimate


def with_drift(estimate: SpeedupEstimate, drift: float) -> SpeedupEstimate:
    """The estimate with its interval at least [ratio / (1 + drift), ratio * (1 + drift)]. A shared machine
    moves between speed levels for tens of seconds, longer than one timing sees: its rounds agree with each
    other and their interval is narrow, yet the next timing lands elsewhere (bench/results/timing_coverage.md
    measures how far, per backend and thread count: ``Backend.drift``)."""
    if drift <= 0:
        return estimate
    return replace(estimate, low=min(estimate.low, estimate.ratio / (1 + drift)),
                   high=max(estimate.high, estimate.ratio * (1 + drift)))


def estimate_from_rounds(ratios: list[float], pooled: dict[str, list[float]], per_round: dict[str, list[float]],
                         session_of: list[int] | None = None) -> SpeedupEstimate:
    """The paired estimate from per-round ratios, all samples (``pooled``) and per-round medians (shared by
    the CNN comparison above and the LLM one, depthcut.llm.latency.compare_generation). ``session_of[k]``:
    the runtime session of round k; the interval then also covers the spread between sessions."""
    low, high = median_interval(ratios)
    _, comp_high = median_interval(per_round["compressed"])
    session_of = session_of or [0] * len(ratios)
    by_session = [[r for r, s in zip(ratios, session_of) if s == k] for k in sorted(set(session_of))]
    session_ratios = tuple(statistics.median(rs) for rs in by_session)
    across = session_interval(list(session_ratios))
    if across is not None:
        low, high = min(low, across[0]), max(high, across[1])
    return SpeedupEstimate(ratio=statistics.median(ratios), low=low, high=high, rounds=len(ratios),
                           outlier_rounds=outliers(ratios), original_ms=statistics.median(pooled["original"]),
                           compressed_ms=statistics.median(pooled["compressed"]), compressed_high_ms=comp_high,
                           sessions=len(session_ratios), session_ratios=session_ratios)


WARM_CALLS = 3           # untimed calls of a network before each of its samples in a round of many (module doc)


def compare_many(runners: dict[str, list[Runner]], *, reference: str = "original", repeats: int = 5,
                 rounds: int = 60, block_rounds: int = 5, warmup: int = 3,
                 warm_calls: int = WARM_CALLS) -> dict[str, SpeedupEstimate]:
    """Time several networks against one ``reference`` *in the same rounds* (issue 9: methods compared at
    equal latency). Separate measurements of two methods, seconds or minutes apart, differ by several percent
    on a shared machine (``bench/results/timing_stability.md``) - more than the differences being compared;
    within one round every network sees the same machine state, so each one's ratio to the reference, and
    their ratios to each other, are free of that drift.

    ``runners[name]`` holds one runner per runtime session (the same count for every name); rounds rotate
    through the sessions in blocks of ``block_rounds``, and the order of the networks inside a round rotates
    and reverses from round to round, so no network always follows the same one. Returns each non-reference
    network's :class:`SpeedupEstimate` against the reference (interval widened by the sessions' spread). Each
    sample follows ``warm_calls`` untimed calls of the same runner (the module docstring says why)."""
    names = list(runners)
    if reference not in runners:
        raise ValueError(f"the reference {reference!r} is not among the runners")
    sessions = {len(v) for v in runners.values()}
    if len(sessions) != 1 or 0 in sessions:
        raise ValueError("every network needs the same, non-zero number of session runners")
    n_sessions = sessions.pop()
    for runs in runners.values():
        for run in runs:
            measure(run, warmup=warmup, repeats=1)
    medians: dict[str, list[float]] = {n: [] for n in names}
    pooled: dict[str, list[float]] = {n: [] for n in names}
    session_of: list[int] = []
    for k in range(max(1, rounds)):
        session = session_of_round(k, max(1, block_rounds), n_sessions)
        order = names[k % len(names):] + names[:k % len(names)]
        for name in (order if (k // len(names)) % 2 == 0 else order[::-1]):
            for _ in range(warm_calls):
                runners[name][session]()
            s = sample_ms(runners[name][session], repeats)
            pooled[name] += s
            medians[name].append(statistics.median(s))
        session_of.append(session)
    out = {}
    for name in names:
        if name == reference:
            continue
        ratios = [r / max(c, 1e-12) for r, c in zip(medians[reference], medians[name])]
        out[name] = estimate_from_rounds(ratios, {"original": pooled[reference], "compressed": pooled[name]},
                                         {"original": medians[reference], "compressed": medians[name]},
                                         session_of)
    return out


def interleaved_sessions(backend: Backend, networks: dict[str, Any], example_input: torch.Tensor,
                         sessions: int) -> dict[str, list[Runner]]:
    """``sessions`` runners of every network (an ``nn.Module``, timed as :func:`timing_copy` gives it, or an
    exported file on a backend that reads one), made in turns: session j of every network before session j + 1
    of any, and the networks' order rotated by j, so that no network's sessions are always the ones made last
    (the module docstring says why). Each network is exported once (``Backend.session_maker``)."""
    names = list(networks)
    runners: dict[str, list[Runner]] = {name: [] for name in names}
    with contextlib.ExitStack() as stack, torch.no_grad():
        make = {name: stack.enter_context(backend.session_maker(
            timing_copy(net) if isinstance(net, nn.Module) else net, example_input)) for name, net in networks.items()}
        for j in range(sessions):
            k = j % len(names)
            for name in names[k:] + names[:k]:
                runners[name].append(make[name]())
    return runners


def time_jointly(original: nn.Module, networks: dict[str, Any], example_input: torch.Tensor,
                 backend: str | Backend = "onnxruntime", *, sessions: int = 4, rounds: int = 60,
                 warmup: int = 5, drift: float | None = None,
                 warm_calls: int = WARM_CALLS) -> dict[str, SpeedupEstimate]:
    """Several networks against ``original`` in the same rounds (:func:`compare_many`), each on ``sessions``
    fresh runtime sessions: ``networks`` maps a name to an ``nn.Module`` (timed as :func:`timing_copy` gives it)
    or, on a backend that can load one, an exported file (``sessions_from_file``). Each interval is floored at
    the backend's drift (``drift`` overrides it): the speed-ups are claims about the network, not only about
    their order. Shared by ``depthcut compare`` and the frontier benchmark."""
    backend = get_backend(backend)
    runners = interleaved_sessions(backend, {"original": original, **networks}, example_input, sessions)
    estimates = compare_many(runners, rounds=rounds, block_rounds=5, warmup=warmup, warm_calls=warm_calls)
    floor = backend.drift() if drift is None else drift
    return {name: with_drift(e, floor) for name, e in estimates.items()}
