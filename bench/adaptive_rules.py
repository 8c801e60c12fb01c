"""Which refinement rule can adaptive importance use on a small table? Each rule replayed on the full table (issue 30).

For each (model, seed), depthcut computes the full importance table and every candidate's cheap score once (a
full-mode and an adaptive-mode ``Compression`` sharing one cache). Then the adaptive frontier
(``depthcut.importance.adaptive.AdaptiveFrontier``) is replayed offline under each rule, its fine-tunes answered
from the full table. Reported per rule: entries fine-tuned (random sample and refinements), the share of the
table, and whether its answers equal the full table's at every budget. The budgets are the modelled body time
over each of ``--speedups``; a landing probes a few budgets around each target.

The floor is the distinct candidates in the full table's own answers at those budgets: a rule that certifies an
answer by fine-tuning it (the rule built) must fine-tune at least them. The exchange certificate need not (entries
every rival shares cancel).

    python bench/adaptive_rules.py [--models resnet20_fmnist mobilenet_v2_fmnist] [--seeds 0 1 2] [--cheap NAME ...]
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path

from depthcut.cache import atomic_write_result
from depthcut.cnn.build import is_trivial
from depthcut.compression import Compression
from depthcut.config import LayerMergeConfig
from depthcut.importance import score, stored_cost
from depthcut.importance.scorer import cheap_scores
from depthcut.importance.adaptive import (AdaptiveFrontier, Bounds, calibrate_bounds, conformal_quantile, isotonic,
                                          loo_residuals, sample_keys)
from depthcut.registry import get_method
from depthcut.search.tables import Row

import cnn_frontier as cf

ROOT = Path(__file__).resolve().parents[1]
ORACLE = "the other seeds' fine-tuned tables (an oracle)"
CHEAP_PROXIES = {   # name: (proxy, scoring images): the cheap score as built, as it was, and the one before it
    "bn-batch": ("bn-batch", 128), "bn-batch (512 images)": ("bn-batch", 512),
    "bn-recalibration": ("bn-recalibration", 512),
    # not a proxy any run has: the mean of the *other* seeds' full tables (a key they lack: this seed's own
    # entry). Fine-tuned accuracy varies from seed to seed, and no score computed without this seed's fine-tunes
    # can predict that part, so this is about the best a seed-independent cheap score could do: what it still
    # fine-tunes bounds what a better cheap score could save
    ORACLE: (None, 0)}
SPEEDUPS = (1.45, 1.5, 1.55, 1.6, 1.95, 2.0, 2.05, 2.1)
RULES = {   # name: (sample minimum, coverage, recalibrate on every fine-tuned entry, refinement (REFINEMENTS),
            #        margin: "two-sided" (as built), "one-sided", "scaled" or "zero", sample fraction[, strata (STRATA)])
    # the exchange certificate (ExchangeCertificate) with the calibration as built, and variants
    "exchange certificate: sample 5 % (at least 8), coverage 90 %":
        (8, 0.9, False, "exchange", "two-sided", 0.05),
    "exchange certificate, one contested candidate per round": (8, 0.9, False, "exchange, one", "two-sided", 0.05),
    "exchange certificate, coverage 70 %": (8, 0.7, False, "exchange", "two-sided", 0.05),
    "exchange certificate, sample 4, coverage 80 %": (4, 0.8, False, "exchange", "two-sided", 0.05),
    "exchange certificate, point estimates (margin 0; no guarantee)": (8, 0.9, False, "exchange", "zero", 0.05),
    # the isotonic map is constant beyond the sample's range, so a candidate whose cheap score lies far below every
    # sampled one is estimated at the lowest sampled accuracy (ResNet-20's 15-19-k3, cheap 37 %, fine-tuned 78 %,
    # estimated 88 %): continued linearly with the sample's least-squares slope instead
    "isotonic continued linearly below the sample": (8, 0.9, False, "optimistic", "low tail", 0.05),
    "isotonic continued linearly on both sides": (8, 0.9, False, "optimistic", "tails", 0.05),
    # the refinement as built (depthcut.importance.adaptive.AdaptiveFrontier): fine-tune the optimistic plan
    # until it is fully fine-tuned
    "as built: sample 5 % (at least 8), coverage 90 %": (8, 0.9, False, "optimistic", "two-sided", 0.05),
    "one-sided margins (above and below apart)": (8, 0.9, False, "optimistic", "one-sided", 0.05),
    "one-sided, sample 10 %": (8, 0.9, False, "optimistic", "one-sided", 0.10),
    "one-sided, sample 15 %": (8, 0.9, False, "optimistic", "one-sided", 0.15),
    "margin recalibrated on every fine-tuned entry": (8, 0.9, True, "optimistic", "two-sided", 0.05),
    "one candidate of the optimistic plan per round": (8, 0.9, False, "one", "two-sided", 0.05),
    "sample 4, recalibrated": (4, 0.9, True, "optimistic", "two-sided", 0.05),
    "sample 4, recalibrated, one per round, coverage 80 %": (4, 0.8, True, "one", "two-sided", 0.05),
    "margin scaled by the cheap score's loss (normalised conformal)": (8, 0.9, False, "optimistic", "scaled", 0.05),
    "Mondrian by position (thirds of the chain), 5 % per stratum (at least 8)":
        (8, 0.9, False, "optimistic", "two-sided", 0.05, "position"),
    "Mondrian by position, one-sided": (8, 0.9, False, "optimistic", "one-sided", 0.05, "position"),
    "Mondrian by merged kernel (1 / 3 / 5 and more), 5 % per stratum (at least 8)":
        (8, 0.9, False, "optimistic", "two-sided", 0.05, "kernel"),
    "Mondrian by merged kernel, one-sided": (8, 0.9, False, "optimistic", "one-sided", 0.05, "kernel"),
    # lower coverage: narrower intervals, fewer refinements, a weaker per-entry guarantee - the trade-off curve
    "coverage 70 %": (8, 0.7, False, "optimistic", "two-sided", 0.05),
    "coverage 50 % (the median residual)": (8, 0.5, False, "optimistic", "two-sided", 0.05),
    "point estimates (margin 0: refine the point plan until it is fully fine-tuned; no guarantee)":
        (8, 0.9, False, "optimistic", "zero", 0.05),
    "sample 4, point estimates": (4, 0.9, False, "optimistic", "zero", 0.05),
}
# Mondrian (stratified) conformal calibration: the sample drawn per stratum, one isotonic map and margin per
# stratum, so that a stratum's wrecks (large merged kernels early in the chain that a short fine-tune ruins) do not
# widen every other stratum's margin. The guarantee stays per entry, now conditional on the stratum
STRATA = {"position": lambda c, length: min(2, 3 * c.start // length),
          "kernel": lambda c, length: 0 if c.kernel == 1 else 1 if c.kernel == 3 else 2}


class ScaledBounds(Bounds):
    """Bounds with a margin per candidate (and, given ``below``, another under the estimate): the scaled rule's
    g(cheap) +- q * (loss of the cheap score + 1 point), or the one-sided rule's two margins."""

    def __init__(self, estimate, margins, exact, below=None):
        super().__init__(estimate, max(margins.values()), exact)
        self.margins, self.below = margins, below or margins

    def low(self, key):
        return self.exact[key] if key in self.exact else self.estimate[key] - self.below[key]

    def high(self, key):
        return self.exact[key] if key in self.exact else self.estimate[key] + self.margins[key]


def scaled_bounds(cheap, exact, base, coverage):
    keys, scale = list(exact), {k: max(base - v, 0.0) + 1.0 for k, v in cheap.items()}
    signed = loo_residuals([cheap[k] for k in keys], [exact[k] for k in keys])
    q = conformal_quantile([abs(r) / scale[k] for k, r in zip(keys, signed)], coverage)
    g = isotonic([cheap[k] for k in keys], [exact[k] for k in keys])
    return ScaledBounds({k: g(v) for k, v in cheap.items()}, {k: q * scale[k] for k in cheap}, dict(exact))


def one_sided_bounds(cheap, exact, coverage):
    """g(cheap) + above / - below, each a one-sided conformal quantile of the signed leave-one-out residuals:
    the wrecks (a short fine-tune ruining a candidate the cheap score rated well) then widen only the lower
    side, not the optimistic one that decides the refinements."""
    keys = list(exact)
    signed = loo_residuals([cheap[k] for k in keys], [exact[k] for k in keys])
    above = max(0.0, conformal_quantile(signed, coverage))
    below = max(0.0, conformal_quantile([-r for r in signed], coverage))
    g = isotonic([cheap[k] for k in keys], [exact[k] for k in keys])
    return ScaledBounds({k: g(v) for k, v in cheap.items()}, {k: above for k in cheap}, dict(exact),
                        below={k: below for k in cheap})


def with_tails(xs, ys, low_only: bool):
    """The isotonic map, continued beyond the points' range with their least-squares slope (at least 0)."""
    g, lo, hi = isotonic(xs, ys), min(xs), max(xs)
    slope = max(0.0, statistics.linear_regression(xs, ys).slope) if len(set(xs)) > 1 else 0.0
    return lambda x: g(x) + slope * (x - lo) if x < lo else g(x) + slope * (x - hi) if x > hi and not low_only \
        else g(x)


def tails_bounds(cheap, exact, coverage, low_only: bool):
    """Bounds as built (a split-conformal margin of the leave-one-out residuals) around ``with_tails``'s map."""
    keys = list(exact)
    xs, ys = [cheap[k] for k in keys], [exact[k] for k in keys]
    residuals = [abs(ys[j] - with_tails(xs[:j] + xs[j + 1:], ys[:j] + ys[j + 1:], low_only)(xs[j]))
                 for j in range(len(keys))]
    g = with_tails(xs, ys, low_only)
    return Bounds({k: g(v) for k, v in cheap.items()}, conformal_quantile(residuals, coverage), dict(exact))


def margins_of(bounds, key) -> tuple[float, float]:
    """(above, below) of ``key``'s interval under ``bounds``."""
    if isinstance(bounds, ScaledBounds):
        return bounds.margins[key], bounds.below[key]
    return bounds.margin, bounds.margin


def stratified_bounds(calibrate_one, cheap, exact, stratum):
    """Mondrian calibration (STRATA): ``calibrate_one(cheap, exact)`` within each stratum on its own fine-tuned
    entries (all of them where a stratum holds fewer than 2), each candidate's interval from its stratum's."""
    estimate, above, below = {}, {}, {}
    for s in set(stratum.values()):
        keys = [k for k in cheap if stratum[k] == s]
        known = {k: v for k, v in exact.items() if stratum[k] == s}
        known = known if len(known) >= 2 else dict(exact)
        bounds = calibrate_one({k: cheap[k] for k in {*keys, *known}}, known)
        for k in keys:
            estimate[k] = bounds.estimate[k]
            above[k], below[k] = margins_of(bounds, k)
    return ScaledBounds(estimate, above, dict(exact), below=below)


def stratified_sample(keys, stratum, seed, fraction, minimum):
    """The seeded sample of every stratum (``sample_keys`` within each)."""
    return sorted(k for s in set(stratum.values())
                  for k in sample_keys(sorted(k for k in keys if stratum[k] == s), seed, fraction=fraction,
                                       minimum=minimum))


class ExchangeCertificate(AdaptiveFrontier):
    """A weaker stopping rule than the one built, with the same guarantee: certify the plan ``P`` the point
    estimates choose against an adversary that scores every unrefined entry at its upper bound where ``P`` does
    not use it and at its lower bound where ``P`` does. Any plan's true value minus ``P``'s is at most its
    adversarial value minus ``P``'s - the entries both use cancel - so where the bounds hold nothing the search
    considers beats ``P`` once the adversary's best is ``P``'s own value. Until then, fine-tune the unrefined
    entries in which ``P`` and the adversary's plan differ. Unlike the rule built, an entry of the answer that
    every rival shares is never fine-tuned."""

    def _adversary(self, plan):
        key = (plan, len(self.bounds.exact))
        if key not in self._solved:
            self._solved = {k: v for k, v in self._solved.items() if k[1] == key[1]}
            self._solved[key] = self._solve_fn([self._scored(r, "low" if r.ref.key in plan else "high")
                                                for r in self.rows])
        return self._solved[key]

    def _value(self, solution, plan):
        return sum(self._scored(r, "low" if r.ref.key in plan else "high").importance for r in solution.rows)

    def _keys(self, solution):
        return frozenset(r.ref.key for r in solution.rows if r.ref.key in self.bounds.estimate)

    def pick(self, contested):
        return contested

    def best(self, budget_ms):
        while True:
            answer = self.frontier("point").best(budget_ms)
            plan = self._keys(answer)
            rival = self._adversary(plan).best(budget_ms)
            if self._value(rival, plan) <= self._value(answer, plan) + 1e-9 * max(1.0, abs(answer.importance)):
                return answer
            contested = plan ^ self._keys(rival)
            todo = [c for c in self.unrefined(answer) + self.unrefined(rival) if c.key in contested]
            if not todo:        # they differ only in fine-tuned entries: the rival is truly better
                return rival
            self.bounds.exact.update(self._refine(self.pick(todo)))


class ExchangeOnePerRound(ExchangeCertificate):
    """The exchange certificate fine-tuning one contested candidate a round: the one whose interval is widest
    (ties: the highest estimate), then solving again."""

    def pick(self, contested):
        return [max(contested, key=lambda c: (self.bounds.high(c.key) - self.bounds.low(c.key),
                                              self.bounds.estimate[c.key]))]


class OnePerRound(AdaptiveFrontier):
    """Refine one unrefined candidate of the optimistic plan (the lowest estimate) and solve again."""

    def best(self, budget_ms):
        while True:
            optimistic = self.frontier("high").best(budget_ms)
            todo = self.unrefined(optimistic)
            if not todo:
                return optimistic
            one = min(todo, key=lambda c: self.bounds.estimate[c.key])
            self.bounds.exact.update(self._refine([one]))


REFINEMENTS = {"optimistic": AdaptiveFrontier, "one": OnePerRound, "exchange": ExchangeCertificate,
               "exchange, one": ExchangeOnePerRound}


def collect(model: str, seed: int, args) -> dict:
    """The full table (accuracy per candidate) and each cheap proxy's scores, from depthcut itself, with the
    seconds each took: the stage's wall time when this invocation computed all of it, else None (a table
    reused from another run's cache, or resumed, does not say what it costs here)."""
    steps = int(cf.per_model(args.importance_steps, model, "20"))
    cfg = LayerMergeConfig(speedup=SPEEDUPS[0], data="fashion-mnist", seed=seed, channels_last=True,
                           importance_steps=steps, cache_dir=str(Path(args.cache) / f"{model}-s{seed}"),
                           timing_threads=1, progress=False)
    full = Compression(model, cfg)
    full.rows
    cached = stored_cost(full.cache_dir)
    t0 = time.perf_counter()
    importance = full.importance
    seconds = {"finetune": time.perf_counter() - t0 if not cached.finetuned else None}
    cheap = {}
    for name in (n for n in args.cheap if CHEAP_PROXIES[n][0] is not None):
        proxy, images = CHEAP_PROXIES[name]
        before, t0 = stored_cost(full.cache_dir).cheap, time.perf_counter()
        cheap[name] = cheap_scores(full.original, full.analysis, full.rows.candidates, full.splits, cfg,
                                   full.cache_dir, full.resolved.chain_exclude, proxy=proxy, images=images)
        seconds[name] = time.perf_counter() - t0 if stored_cost(full.cache_dir).cheap - before == len(cheap[name]) \
            else None
    return {"full": full, "cheap": cheap, "base": full.base_accuracy, "seconds": seconds,
            "accuracy": {k: full.base_accuracy + 100 * math.log(v) for k, v in importance.items()
                         if k in cheap[args.cheap[0]]}}


def seed_noise(tables: list[dict[str, float]]) -> dict:
    """How far one candidate's fine-tuned accuracy moves from seed to seed: |difference| over every pair of
    seeds, on the candidates every seed's table has. No seed-independent cheap score can predict that part."""
    keys = sorted(set.intersection(*(set(t) for t in tables)))
    diffs = sorted(abs(a[k] - b[k]) for k in keys for i, a in enumerate(tables) for b in tables[i + 1:])
    return {"candidates": len(keys), "median": statistics.median(diffs),
            "p90": diffs[min(len(diffs) - 1, int(0.9 * len(diffs)))], "max": diffs[-1]}


def oracle_scores(collected: dict[int, dict]) -> None:
    """Each seed's ORACLE score: the mean of the other seeds' fine-tuned accuracy per candidate."""
    if len(collected) < 2:
        raise SystemExit(f"the cheap score {ORACLE!r} needs at least two seeds")
    for seed, data in collected.items():
        others = [d["accuracy"] for s, d in collected.items() if s != seed]
        data["cheap"][ORACLE] = {k: statistics.mean([o[k] for o in others if k in o] or [own])
                                 for k, own in data["accuracy"].items()}


def replay(data: dict, proxy: str, rule: tuple, seed: int) -> dict:
    minimum, coverage, recalibrate, refinement, margin, fraction, *strata = rule
    run, cheap, accuracy, base = data["full"], data["cheap"][proxy], data["accuracy"], data["base"]
    method, chain, rows = get_method("layermerge"), run.analysis.chain, run.rows
    stratum = ({c.key: STRATA[strata[0]](c, chain.length) for c in rows.candidates if c.key in cheap} if strata
               else None)

    def solve(scored):
        return method.search(scored, chain.length, run.config.dp_steps, rows.body_ms(), chain=chain)

    def calibrate_one(cheap, exact):
        if margin == "scaled":
            return scaled_bounds(cheap, exact, base, coverage)
        if margin == "one-sided":
            return one_sided_bounds(cheap, exact, coverage)
        if margin in ("low tail", "tails"):
            return tails_bounds(cheap, exact, coverage, low_only=margin == "low tail")
        if margin == "zero":
            return replace(calibrate_bounds(cheap, exact, coverage), margin=0.0)
        return calibrate_bounds(cheap, exact, coverage)

    def calibrate(exact):
        return stratified_bounds(calibrate_one, cheap, exact, stratum) if stratum else calibrate_one(cheap, exact)
    table = [Row(c.start, c.end, rows.latency_ms[c.key], 1.0, ref=c) for c in rows.candidates]
    truth = solve([replace(r, importance=score(accuracy[r.ref.key], base)) if r.ref.key in cheap else r for r in table])
    sample = (stratified_sample(cheap, stratum, seed, fraction, minimum) if stratum
              else sample_keys(sorted(cheap), seed, fraction=fraction, minimum=minimum))
    refined: set[str] = set()

    def refine(candidates):
        found = {c.key: accuracy[c.key] for c in candidates}
        refined.update(found)
        if recalibrate:
            frontier.bounds = calibrate({**frontier.bounds.exact, **found})
        return found
    frontier = REFINEMENTS[refinement](table, solve, calibrate({k: accuracy[k] for k in sample}),
                                                          lambda acc: score(acc, base), refine)
    def true_value(solution) -> float:
        return sum(score(accuracy[r.ref.key], base) if r.ref.key in cheap else r.importance for r in solution.rows)
    same, floor, given_away = 0, set(), 0.0
    for speedup in SPEEDUPS:
        budget = rows.body_ms() / speedup
        best, got = truth.best(budget), frontier.best(budget)
        want = {r.ref.key for r in best.rows if not is_trivial(r.ref)}
        same += {r.ref.key for r in got.rows if not is_trivial(r.ref)} == want
        # what a wrong answer costs: the optimum's true importance over the answer's, in points (I = e^(acc/100))
        given_away = max(given_away, 100 * (true_value(best) - true_value(got)))
        floor |= want
    finetuned = len(set(sample) | refined)
    return {"finetuned": finetuned, "candidates": len(cheap), "share": finetuned / len(cheap), "same": same,
            "budgets": len(SPEEDUPS), "floor": len(floor), "given_away": given_away,
            "margin": calibrate({k: accuracy[k] for k in sample}).margin}


def stage_line(secs: list[dict]) -> str:
    """Stage times, mean over the seeds whose stage this invocation computed from an empty cache ("-" where
    none did: a table reused from another run's cache)."""
    def mean(k):
        known = [s[k] for s in secs if s[k] is not None]
        return statistics.mean(known) if known else None

    def share(k):
        known = [s[k] / s["finetune"] for s in secs if s[k] is not None and s["finetune"]]
        return f"{statistics.mean(known):.0%}" if known else "-"
    cheap = [k for k in secs[0] if k != "finetune"]
    return ("Stage times from an empty cache, mean over seeds: the full table (fine-tunes) "
            + ", ".join(f"{k} " + (f"{mean(k):.0f} s" if mean(k) is not None else "- (reused)") for k in secs[0])
            + "; a cheap score costs " + ", ".join(f"{k} {share(k)}" for k in cheap) + " of a fine-tuned entry.")


def markdown(report: dict) -> str:
    lines = [f"# Adaptive importance rules replayed on the full table: `{report['command']}`", "",
             "Each rule's fine-tunes (sample + refinements) over the full table's entries, mean over seeds (worst "
             f"seed in brackets); answers: the DP's answer at {len(SPEEDUPS)} budgets (the modelled body over "
             f"x{', x'.join(f'{s:g}' for s in SPEEDUPS)}) equal to the full table's, over all seeds. The floor: the "
             "distinct candidates in the full table's own answers, what a rule that fine-tunes its answers must "
             "fine-tune.", ""]
    for model, per_rule in report["models"].items():
        floor = [r["floor"] / r["candidates"] for r in next(iter(per_rule.values()))]
        noise = report.get("seed_noise", {}).get(model)
        lines += [f"## {model} (floor {statistics.mean(floor):.0%}, worst {max(floor):.0%})", "",
                  stage_line(report["seconds"][model]), ""]
        if noise:
            lines += [f"A candidate's fine-tuned accuracy from seed to seed ({noise['candidates']} candidates every "
                      f"seed's table has, every pair of seeds): |difference| median {noise['median']:.2f}, 90th "
                      f"percentile {noise['p90']:.2f}, largest {noise['max']:.2f} points.", ""]
        lines += ["| rule | fine-tuned | answers equal | most given away (points) | margin above (points, first "
                  "calibration) |", "|---|---|---|---|---|"]
        for name, runs in per_rule.items():
            lines.append(f"| {name} | {statistics.mean(r['share'] for r in runs):.0%} "
                         f"({max(r['share'] for r in runs):.0%}) | {sum(r['same'] for r in runs)} of "
                         f"{sum(r['budgets'] for r in runs)} | {max(r['given_away'] for r in runs):.2f} | "
                         + ", ".join(f"{r['margin']:.2f}" for r in runs) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet20_fmnist"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--importance-steps", nargs="+", default=["mobilenet_v2_fmnist=10"],
                    help="fine-tune steps per importance entry, MODEL=STEPS pairs (default 20; the frontier "
                         "benchmark's recipe)")
    proxies = [k for k in CHEAP_PROXIES if k != ORACLE]
    ap.add_argument("--cheap", nargs="+", default=proxies, choices=list(CHEAP_PROXIES),
                    help="cheap scores to replay (the first, not the oracle, also picks the candidates compared)")
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES), metavar="RULE",
                    help="rules to replay (default: every rule in RULES)")
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "adaptive_rules"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "adaptive_rules"))
    args = ap.parse_args()
    if args.cheap[0] == ORACLE:
        ap.error(f"--cheap: name a real cheap score before {ORACLE!r} (the first picks the candidates)")
    report = {"command": "python bench/adaptive_rules.py " + " ".join(
        [f"--models {' '.join(args.models)}", f"--seeds {' '.join(map(str, args.seeds))}",
         f"--importance-steps {' '.join(args.importance_steps)}"]
        + ([f"--cheap {' '.join(repr(c) if ' ' in c else c for c in args.cheap)}"]
           if args.cheap != proxies else [])
        + ([f"--rules {' '.join(repr(r) for r in args.rules)}"] if args.rules != list(RULES) else [])
        + ([f"--out {args.out}"] if args.out != ap.get_default("out") else [])),
        "models": {}}
    for model in args.models:
        per_rule = {f"{proxy}: {name}": [] for proxy in args.cheap for name in args.rules}
        collected = {seed: collect(model, seed, args) for seed in args.seeds}
        if ORACLE in args.cheap:
            oracle_scores(collected)
        if len(collected) > 1:
            report.setdefault("seed_noise", {})[model] = seed_noise([d["accuracy"] for d in collected.values()])
        seconds = []
        for seed, data in collected.items():
            seconds.append(data["seconds"])
            for proxy in args.cheap:
                for name in args.rules:
                    rule = RULES[name]
                    per_rule[f"{proxy}: {name}"].append({"seed": seed, **replay(data, proxy, rule, seed)})
        report["models"][model] = per_rule
        report.setdefault("seconds", {})[model] = seconds
    out = Path(args.out)
    atomic_write_result(out, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
