"""Random chains with a known fine-tuned table, for the adaptive-importance tests (tests/importance and the bench's
replayed rules; tests/ is on sys.path)."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from depthcut.search.tables import Row


@dataclass(frozen=True)
class Cand:
    start: int
    end: int
    option: int = 0

    @property
    def key(self) -> str:
        return f"{self.start}-{self.end}-{self.option}"


def instance(seed: int, length: int = 9):
    """A random chain: identity rows (importance 1), merge candidates of 2-4 positions with a true fine-tuned
    accuracy, a cheap score that errs by at most ``noise`` (so the bounds hold), and the latencies."""
    rng = random.Random(seed)
    rows, true = [], {}
    for i in range(length):
        rows.append(Row(i, i + 1, rng.uniform(1, 3), 1.0, ref=Cand(i, i + 1, -1)))
        for j in range(i + 2, min(length, i + 4) + 1):
            for k in range(rng.randint(1, 2)):
                c = Cand(i, j, k)
                true[c.key] = 90 - rng.expovariate(1 / 3) * (j - i)
                rows.append(Row(i, j, rng.uniform(0.5, 1.2) * (j - i) * 0.8 + 0.2 * k, 0.0, ref=c))
    noise = 1.5
    cheap = {k: a + rng.uniform(-noise, noise) for k, a in true.items()}
    return rows, true, cheap, noise, length


def score(acc: float) -> float:
    return math.exp((acc - 90.0) / 100)
