"""Latency: measurement backends, the cached per-candidate latency table, and end-to-end timing (SPEC A5)."""
from .backends import (Backend, BackendUnavailableError, Timing, available_backends, device_name, get_backend,
                       measure, register_backend, registered_backends, sample_ms)
from .table import (build_merged_conv, latency_manifest, latency_store, latency_table, make_activation,
                    network_spec, original_spec, row_key, speedup, time_models)

__all__ = [
    "Backend", "BackendUnavailableError", "Timing", "available_backends", "device_name", "get_backend",
    "measure", "register_backend", "registered_backends", "sample_ms", "build_merged_conv", "latency_manifest",
    "latency_store", "latency_table", "make_activation", "network_spec", "original_spec", "row_key", "speedup", "time_models",
]
