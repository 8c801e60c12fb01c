"""A data-free importance proxy, for work that needs plans but no accuracy (latency studies on random weights)."""
from __future__ import annotations

from ..cnn.chain import Candidate


def datafree_importance(candidate: Candidate) -> float:
    """Each pruned conv costs 0.05, each removed activation 0.02: plans that keep more keep more importance."""
    span = candidate.end - candidate.start
    return 1.0 - 0.05 * (span - len(candidate.kept)) - 0.02 * (span - 1)
