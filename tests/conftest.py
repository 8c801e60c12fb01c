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
# One torch thread by default (DEPTHCUT_TEST_THREADS to change it), for the suite and the commands it spawns: on
# this 2-core machine a subset of the pipeline tests took 41 s at 1 thread and 44 s at 2 when the machine was
# quiet, but 70 s against 203 s beside two busy processes - two threads spinning on a shared core is what made
# CI's time vary 2.5x (441 s to 1201 s for the same suite)
THREADS = os.environ.setdefault("DEPTHCUT_TEST_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", THREADS)
torch.set_num_threads(min(int(THREADS), torch.get_num_threads()))

import simulated_backend  # noqa: E402,F401  (registers the "sleepy" backends; tests/ is on sys.path)


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"
