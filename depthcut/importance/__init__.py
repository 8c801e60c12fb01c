"""Importance: the resumable per-candidate importance table, its proxies and executors (SPEC A6)."""
from .executor import Executor, LocalExecutor, ProcessExecutor
from .table import (PROXIES, Proxy, ProxyScore, check_entries, importance_scores, importance_store, importance_table, in_shard,
                    make_score_fn, recalibrate_bn, score, score_loss)

__all__ = [
    "Executor", "LocalExecutor", "ProcessExecutor", "PROXIES", "Proxy", "ProxyScore", "check_entries", "importance_scores",
    "importance_store", "importance_table", "in_shard", "make_score_fn", "recalibrate_bn", "score", "score_loss",
]
