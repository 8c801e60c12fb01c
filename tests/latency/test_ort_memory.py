"""ONNX Runtime rows over the NCHWc memory cap (issue 7: ResNet-152's giant rows): timed with the NCHWc
transformer off, so a session costs ~1x its weights instead of ~5x, and scaled by the gain measured on a
channel-scaled proxy."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")

from depthcut.cnn.chain import Candidate  # noqa: E402
from depthcut.latency import get_backend, latency_table  # noqa: E402


PEAK = r"""
import json, sys
import torch
from torch import nn
from depthcut.latency import get_backend
torch.set_num_threads(1)


def high_water_mb():   # this process's peak RSS; getrusage's would include the forking parent's
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1e3


row = nn.Sequential(nn.Conv2d(512, 1024, 7, padding=3), nn.ReLU()).eval()   # 103 MB of weights
x = torch.randn(1, 512, 14, 14)
base = high_water_mb()
backend = get_backend("onnxruntime", max_transient_gb=float(sys.argv[1]))
run = backend.prepare(row, x)
run()
peak = high_water_mb()
print(json.dumps({"growth_mb": peak - base, "estimated": len(backend.nchwc_estimated_rows)}))
"""


def peak_growth(cap_gb: float) -> dict:
    out = subprocess.run([sys.executable, "-c", PEAK, str(cap_gb)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_row_over_the_cap_is_built_without_the_nchwc_transient():
    weights_mb = 4 * 1024 * 512 * 49 / 1e6
    capped, free = peak_growth(0.1), peak_growth(4.0)
    assert capped["estimated"] == 1 and free["estimated"] == 0
    # measured here: ~1.1x the weights capped, ~4.9x with the transformer's transient
    assert capped["growth_mb"] < 2.5 * weights_mb < free["growth_mb"]


def test_over_the_cap_the_table_stores_the_scaled_time_and_says_so(tmp_path):
    backend = get_backend("onnxruntime", max_transient_gb=0.001)      # 1 MB: a 1.2 MB row is over it
    c = Candidate(start=0, end=2, kept=(0, 1), kernel=5, stride=1, depthwise=False, in_channels=96,
                  out_channels=128, input_shape=(1, 96, 8, 8), activation="relu")
    table = latency_table([c], backend, cache_dir=tmp_path, repeats=5, warmup=1, progress=False, passes=1)
    [entry] = [json.loads(p.read_text())["value"]["passes"][0] for p in (tmp_path / "latency").rglob("conv*.json")]
    assert 0 < entry["time_scale"] <= 1.0 and len(backend.nchwc_estimated_rows) == 1
    assert table[c.key].median_ms == pytest.approx(entry["measured_median_ms"] * entry["time_scale"])
    assert get_backend("onnxruntime").describe()["nchwc_transient_cap_gb"] == 2.0   # in the fingerprint


def test_the_proxy_gain_falls_back_to_no_gain_for_grouped_rows():
    backend = get_backend("onnxruntime", max_transient_gb=1e-6)
    row = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.ReLU()).eval()
    x = torch.randn(1, 32, 8, 8)
    run = backend.prepare(row, x)
    assert run.time_scale == 1.0                          # an over-estimate, never an under-estimate
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(run()[0]), row(x), atol=1e-5)   # the row itself still runs
