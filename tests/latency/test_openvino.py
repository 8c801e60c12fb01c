"""The OpenVINO latency backend (issue 31), each check in a fresh interpreter.

OpenVINO's CPU plugin brings its own TBB thread pool and ONNX frontend; in one pytest process with
scikit-learn's data loaders and ONNX Runtime loaded, a later ``subprocess.run`` (a fork) crashed the process
(SIGSEGV) after an OpenVINO model had been read from ONNX. The checks therefore run in their own interpreter,
as a user's timing run does, and the suite's process never loads OpenVINO."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from depthcut.errors import DepthcutError
from depthcut.latency import BackendUnavailableError, get_backend
from depthcut.latency import backends

needs_openvino = pytest.mark.skipif(not get_backend("openvino", check=False).available(),
                                    reason="openvino not installed")


def run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@needs_openvino
def test_openvino_rows_compute_the_row():
    """Rows are built from OpenVINO's opset, not exported: they must compute the row's function (conv,
    grouped or not, strided, bias, every activation the analysis records)."""
    print(run_python("""
        import torch
        from torch import nn
        from depthcut.latency import get_backend
        from depthcut.latency.backends import conv_row_openvino
        backend = get_backend("openvino")
        for act in (nn.ReLU(), nn.ReLU6(), nn.Sigmoid(), nn.Tanh(), nn.SiLU(), nn.Hardswish(), nn.Hardsigmoid(),
                    nn.Identity()):
            for groups, stride, kernel in ((1, 1, 3), (8, 2, 5), (1, 2, 1)):
                row = nn.Sequential(nn.Conv2d(8, 16, kernel, stride=stride, padding=kernel // 2, groups=groups),
                                    act).eval()
                x = torch.randn(2, 8, 9, 9)
                assert conv_row_openvino(row, tuple(x.shape)) is not None
                out = torch.as_tensor(backend.prepare(row, x)()[0])
                torch.testing.assert_close(out, row(x).detach(), rtol=1e-4, atol=1e-5)
        print("rows ok")
    """))


@needs_openvino
def test_openvino_sessions_tables_and_fingerprint(tmp_path):
    """Networks: one ONNX export, n independent compiled models computing the network. The latency table
    deduplicates and caches its rows on OpenVINO as on the other backends, under its own fingerprint."""
    run_python(f"""
        import torch
        from torch import nn
        from depthcut.cnn.chain import Candidate
        from depthcut.latency import get_backend, latency_store, latency_table
        from depthcut.latency import backends
        exports = []
        real = backends.export_onnx
        backends.export_onnx = lambda *a, **k: (exports.append(1), real(*a, **k))[1]
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
        x = torch.randn(1, 3, 8, 8)
        runners = get_backend("openvino").prepare_sessions(net, x, 3)
        assert len({{id(r) for r in runners}}) == 3 and len(exports) == 1
        for run in runners:
            torch.testing.assert_close(torch.as_tensor(run()[0]), net(x).detach(), rtol=1e-4, atol=1e-5)
        c = Candidate(start=0, end=2, kept=(0, 1), kernel=5, stride=1, depthwise=False, in_channels=16,
                      out_channels=32, input_shape=(1, 16, 8, 8), activation="relu")
        twin = Candidate(start=2, end=4, kept=(2, 3), kernel=5, stride=1, depthwise=False, in_channels=16,
                         out_channels=32, input_shape=(1, 16, 8, 8), activation="relu")
        how = dict(cache_dir={str(tmp_path)!r}, repeats=3, warmup=1, passes=2, progress=False)
        table = latency_table([c, twin], "openvino", **how)
        assert table[c.key] == table[twin.key] and table[c.key].median_ms > 0
        assert latency_table([c, twin], "openvino", **how) == table
        described = get_backend("openvino", threads=1).describe()
        assert (described["backend"], described["threads"], described["inference_precision"]) == ("openvino", 1, "f32")
        assert latency_store(get_backend("openvino"), 1, {str(tmp_path)!r}).dir != latency_store(
            get_backend("onnxruntime"), 1, {str(tmp_path)!r}).dir
    """)


def test_a_missing_openvino_names_its_extra_in_one_line(monkeypatch):
    assert backends.has_own_threads("openvino")              # timing_threads sets its inference threads
    real = backends.importlib.util.find_spec
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda n, *a: None if n == "openvino" else real(n, *a))
    with pytest.raises(BackendUnavailableError) as e:
        get_backend("openvino")
    assert "pip install depthcut[openvino]" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DepthcutError, match="threads must be >= 1"):
        get_backend("openvino", check=False, threads=0)


@needs_openvino
def test_openvino_int8_rows_networks_and_predictor_run_quantized():
    """quantize="int8" on OpenVINO: rows and networks are quantized to QDQ ONNX (ONNX Runtime's quantizer)
    and read by OpenVINO, which runs them in int8: a network's outputs within quantization error of float32,
    not equal; a row computes ONNX Runtime's int8 row; the predictor runs a deployed file at any batch."""
    print(run_python("""
        import tempfile, torch
        from torch import nn
        from depthcut.latency import get_backend
        from depthcut.latency.quantize import quantized_file
        backend = get_backend("openvino", quantize="int8")
        assert backend.describe()["quantize"] == "int8"
        torch.manual_seed(0)
        row = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU()).eval()
        net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                            nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
        x = torch.randn(1, 1, 12, 12)
        ref = net(x).detach()
        for run in backend.prepare_sessions(net, x, 2):
            out = torch.as_tensor(run()[0]).reshape(ref.shape)
            err = float((out - ref).norm() / ref.norm())
            assert 1e-5 < err < 0.05, err
        # a row: uint8 in and out (quantize.int8_row), the same int8 function as ONNX Runtime's, to one step
        torch.manual_seed(1)
        ov_row = backend.prepare(row, torch.randn(1, 16, 12, 12))()[0]
        torch.manual_seed(1)
        ort_row = get_backend("onnxruntime", quantize="int8").prepare(row, torch.randn(1, 16, 12, 12))()[0]
        assert ov_row.dtype == ort_row.dtype == "uint8"
        assert abs(ov_row.astype(int) - ort_row.astype(int)).max() <= 1
        with tempfile.TemporaryDirectory() as tmp:
            path = quantized_file(net, torch.randn(1, 1, 12, 12), tmp, [torch.randn(16, 1, 12, 12)],
                                  dynamic_batch=True)
            assert backend.predictor(path)(torch.randn(5, 1, 12, 12)).shape == (5, 10)
        print("int8 ok")
    """))


@needs_openvino
def test_openvino_rows_are_timed_by_their_ops_profile_and_networks_by_the_wall(tmp_path):
    """A latency row is timed by OpenVINO's per-op profile: its pass's wall-clock timing scaled by the share of
    those calls its compute ops ran (the call, and the layout reorders a lone conv needs, are left out), in
    float32 and int8; the row still computes the row. The profile keeps each op's mean over the compiled
    model's calls: the share is of the timed calls only, whatever the warm-up took. A whole network is timed
    by the wall clock (what a deployment pays), and the profile is part of the table's fingerprint."""
    print(run_python(f"""
        import time, torch
        from torch import nn
        from depthcut.cnn.chain import Candidate
        from depthcut.latency import get_backend, latency_store, latency_table
        row = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU6()).eval()
        net = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 1)).eval()
        x = torch.randn(1, 16, 14, 14)
        c = Candidate(start=0, end=2, kept=(0, 1), kernel=3, stride=1, depthwise=False, in_channels=16,
                      out_channels=32, input_shape=(1, 16, 14, 14), activation="relu6")
        for quantize in (None, "int8"):
            backend = get_backend("openvino", threads=1, **({{"quantize": quantize}} if quantize else {{}}))
            assert backend.describe()["row_clock"] == "per-op profile"
            run = backend.prepare_row(row, x)
            for _ in range(5):
                out = run()
            calls, ops_ms = run.profile()
            assert calls == 5 and 0 < ops_ms / calls <= run.wall_ms(0), (ops_ms, run.wall_ms(0))
            start = run.profile()
            for _ in range(20):
                run()
            end = run.profile()
            share = (end[1] - start[1]) / 20 / run.wall_ms(5)
            assert end[0] == 25 and 0 < share <= 1.05, share
            if quantize is None:
                torch.testing.assert_close(torch.as_tensor(out[0]), row(x).detach(), rtol=1e-4, atol=1e-5)
            assert not hasattr(backend.prepare_row(net, x), "profile")     # not a row: the wall clock
            assert not hasattr(backend.prepare(row, x), "profile")         # a row outside the table too
            timed = latency_table([c], backend, cache_dir={str(tmp_path)!r}, repeats=10, warmup=2, passes=2,
                                  progress=False)[c.key]
            entry = latency_store(backend, None, {str(tmp_path)!r})[
                next(iter(latency_store(backend, None, {str(tmp_path)!r}).keys()))]
            for p in entry["passes"]:
                assert 0 < p["time_scale"] <= 1 and p["median_ms"] == p["measured_median_ms"] * p["time_scale"]
            assert timed.median_ms == min(p["median_ms"] for p in entry["passes"])
        # a whole network op by op (bench/op_profile.py): its convs in execution order, inside the call's time
        ops, wall_ms = get_backend("openvino", threads=1).op_profile(net, x, calls=20, warmup=5)
        convs = [op for op in ops if op["type"] == "Convolution"]
        assert len(convs) == 2 and all(op["us"] >= 0 for op in ops)
        assert 0 < sum(op["us"] for op in ops) / 1e3 <= wall_ms
        print("profiled rows ok")
    """))
