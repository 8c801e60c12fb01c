"""Importance: the resumable per-candidate importance table, its proxies and executors (SPEC A6)."""
from .executor import EXECUTORS, Executor, LocalExecutor, ProcessExecutor, RayExecutor, get_executor
from .table import (PROXIES, Failed, ImportanceTaskError, Proxy, check_entries, importance_scores,
                    importance_store, importance_table, in_shard, recalibrate_bn, score, score_loss,
                    StoredCost, stored_cost)

__all__ = [
    "EXECUTORS", "Executor", "LocalExecutor", "ProcessExecutor", "RayExecutor", "get_executor", "PROXIES", "Failed",
    "ImportanceTaskError", "Proxy", "check_entries", "importance_scores", "importance_store",
    "importance_table", "in_shard", "recalibrate_bn", "score", "score_loss", "StoredCost", "stored_cost",
]
