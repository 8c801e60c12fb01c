"""Shared test fixtures.

The ``sleepy`` latency backends (tests/simulated_backend.py) make pipeline tests deterministic on a noisy
shared CPU: time passes on a simulated clock, so fewer convs are always faster, whatever the machine's load.
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

os.environ.setdefault("DEPTHCUT_PROGRESS", "0")

# Property tests must hold for every seed: no example database (CI must not replay failures left by an
# earlier run, nor pass because a lucky run never stored one), a fresh random seed each run. A failure
# prints its seed and a @reproduce_failure blob; pin real counter-examples with @example.
settings.register_profile("depthcut", database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "depthcut"))
# DEPTHCUT_TEST_THREADS: torch's intra-op threads for the suite (default 2, at most the machine's)
torch.set_num_threads(min(int(os.environ.get("DEPTHCUT_TEST_THREADS", "2")), torch.get_num_threads()))

import simulated_backend  # noqa: E402,F401  (registers the "sleepy" backends; tests/ is on sys.path)


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"
