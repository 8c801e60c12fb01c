"""Latency backends, the cached latency table and interleaved end-to-end timing (SPEC A5).

No assertion depends on how fast anything is; only on structure, caching and error behaviour."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from torch import nn

from depthcut.cnn.chain import Candidate
from depthcut.errors import CacheError, DepthcutError
from depthcut.latency import (BackendUnavailableError, Timing, available_backends, get_backend, latency_store,
                              latency_table, measure, row_key, speedup, time_models)
from depthcut.latency import table as table_mod

FAST = dict(warmup=1, repeats=3, progress=False)
PASSES = table_mod.PASSES


def cand(start, end, kept, kernel=3, stride=1, depthwise=False, cin=4, cout=4, hw=8, act="relu", batch=1):
    return Candidate(start=start, end=end, kept=tuple(kept), kernel=kernel, stride=stride, depthwise=depthwise,
                     in_channels=cin, out_channels=cout, input_shape=(batch, cin, hw, hw), activation=act)


@pytest.fixture
def candidates():
    return [
        cand(0, 1, [1]),                                   # plain 3x3 + relu
        cand(1, 2, [2]),                                   # same conv config and shape as the first -> one row
        cand(0, 2, [1, 2], kernel=5),                      # merged 5x5
        cand(0, 2, []),                                    # identity option: costs 0
        cand(2, 3, [3], stride=2, depthwise=True, act="relu6"),
        cand(3, 4, [4], kernel=1, cin=4, cout=8, hw=4, act=None),
        cand(4, 5, [5], kernel=1, cin=8, cout=8, hw=4, act="hardswish"),
    ]


@pytest.fixture
def count_builds(monkeypatch):
    calls = []
    real = table_mod.build_merged_conv

    def counting(c):
        calls.append(c.key)
        return real(c)
    monkeypatch.setattr(table_mod, "build_merged_conv", counting)
    return calls


@pytest.mark.parametrize("backend", ["eager", "onnxruntime"])
def test_latency_table_values_dedup_and_cache_hit(backend, candidates, count_builds, tmp_path):
    if backend not in available_backends():
        pytest.skip(f"{backend} not installed")
    table = latency_table(candidates, backend, cache_dir=tmp_path, **FAST)
    assert set(table) == {c.key for c in candidates}
    for c in candidates:
        t = table[c.key]
        if c.kept:
            assert t.median_ms > 0 and t.n >= 3 and t.p10_ms <= t.median_ms <= t.p90_ms
        else:
            assert t == Timing.zero()
    # 7 candidates, one identity, two sharing a row -> 5 distinct rows timed, each in PASSES passes
    assert len(count_builds) == 5 * PASSES
    assert table[candidates[0].key] == table[candidates[1].key]

    again = latency_table(candidates, backend, cache_dir=tmp_path, **FAST)
    assert len(count_builds) == 5 * PASSES, "second call must be served from the cache"
    assert again == table


def test_batch_size_replaces_batch_and_changes_fingerprint(candidates, count_builds, tmp_path):
    latency_table(candidates[:1], "eager", cache_dir=tmp_path, **FAST)
    latency_table(candidates[:1], "eager", cache_dir=tmp_path, batch_size=2, **FAST)
    assert len(count_builds) == 2 * PASSES
    assert row_key(candidates[0], 2).endswith("in2x4x8x8")
    dirs = sorted(p.name for p in (tmp_path / "latency").iterdir())
    assert len(dirs) == 2


def test_fingerprint_covers_backend_threads_batch(tmp_path):
    eager, ort = get_backend("eager"), get_backend("onnxruntime")
    base = latency_store(eager, None, tmp_path).dir
    assert latency_store(ort, None, tmp_path).dir != base
    assert latency_store(eager, 8, tmp_path).dir != base
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert latency_store(eager, None, tmp_path).dir != base
    finally:
        torch.set_num_threads(threads)
    assert latency_store(eager, None, tmp_path).dir == base
    desc = eager.describe()
    assert {"backend", "backend_version", "torch", "device", "threads", "dtype"} <= set(desc)


def test_onnxruntime_threads_set_its_sessions_and_its_fingerprint(tmp_path):
    pytest.importorskip("onnxruntime")
    default, one = get_backend("onnxruntime"), get_backend("onnxruntime", threads=1)
    assert default.describe()["threads"] == torch.get_num_threads() and one.describe()["threads"] == 1
    assert one._options().intra_op_num_threads == 1
    assert default._options().intra_op_num_threads == torch.get_num_threads()
    if torch.get_num_threads() != 1:
        assert latency_store(one, None, tmp_path).dir != latency_store(default, None, tmp_path).dir
    # the default fingerprint is the one stored before the option existed: no cached table is orphaned
    assert latency_store(get_backend("onnxruntime", threads=torch.get_num_threads()), None, tmp_path).dir == \
        latency_store(default, None, tmp_path).dir
    with pytest.raises(DepthcutError, match="threads must be >= 1"):
        get_backend("onnxruntime", threads=0)


def test_corrupted_row_raises_cache_error_naming_file(candidates, tmp_path):
    latency_table(candidates[:1], "eager", cache_dir=tmp_path, **FAST)
    store = latency_store(get_backend("eager"), None, tmp_path)
    path = store.path(row_key(candidates[0]))
    path.write_text('{"key": "conv4-4-k3')         # truncated mid-write by something else
    with pytest.raises(CacheError, match=path.name):
        latency_table(candidates[:1], "eager", cache_dir=tmp_path, **FAST)
    # a well-formed file with the wrong content is just as bad
    path.write_text(json.dumps({"key": row_key(candidates[0]), "value": {"median": 1}}))
    with pytest.raises(CacheError, match=path.name):
        latency_table(candidates[:1], "eager", cache_dir=tmp_path, **FAST)


def test_foreign_manifest_raises_cache_error(candidates, tmp_path):
    store = latency_store(get_backend("eager"), None, tmp_path)
    manifest = json.loads((store.dir / "manifest.json").read_text())
    manifest["device"] = "some other machine"
    (store.dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="another configuration"):
        latency_table(candidates[:1], "eager", cache_dir=tmp_path, **FAST)


def test_unknown_activation_is_a_user_error(tmp_path):
    with pytest.raises(DepthcutError, match="swishy"):
        latency_table([cand(0, 1, [1], act="swishy")], "eager", cache_dir=tmp_path, **FAST)


def test_every_activation_the_analysis_finds_can_be_timed():
    from depthcut.cnn.graph import _ACT_FUNCTIONS, _ACT_MODULES

    for kind in {k for _, k in _ACT_MODULES} | set(_ACT_FUNCTIONS.values()) | {None}:
        assert isinstance(table_mod.make_activation(kind), torch.nn.Module)


def test_merged_conv_shapes():
    m = table_mod.build_merged_conv(cand(2, 3, [3], kernel=5, stride=2, depthwise=True, act="silu"))
    conv = m[0]
    assert (conv.kernel_size, conv.stride, conv.padding, conv.groups) == ((5, 5), (2, 2), (2, 2), 4)
    assert isinstance(m[1], nn.SiLU)
    assert m(torch.randn(1, 4, 8, 8)).shape == (1, 4, 4, 4)


def test_tensorrt_unavailable_is_clear():
    if "tensorrt" in available_backends():
        pytest.skip("TensorRT is available here")
    with pytest.raises(BackendUnavailableError, match="tensorrt") as e:
        get_backend("tensorrt")
    assert "needs" in str(e.value)
    assert not get_backend("tensorrt", check=False).available()
    with pytest.raises(DepthcutError, match="unknown latency backend 'nope'"):
        get_backend("nope")


def test_time_models_interleaved(monkeypatch):
    # Record the order in which runners are called: interleaving means models alternate across rounds.
    order = []
    backend = get_backend("eager")
    real_prepare = backend.prepare

    def prepare(module, x):
        run = real_prepare(module, x)
        name = module.tag

        def tagged():
            order.append(name)
            return run()
        return tagged
    monkeypatch.setattr(backend, "prepare", prepare)
    big = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
    small = nn.Conv2d(3, 8, 3, padding=1)
    big.tag, small.tag = "big", "small"
    out = time_models({"big": big, "small": small}, torch.randn(1, 3, 16, 16), backend, rounds=4, repeats=2,
                      warmup=1)
    assert set(out) == {"big", "small"}
    assert all(t.n == 8 and t.median_ms > 0 for t in out.values())
    timed = order[4:]                                  # after 2 x (1 warmup + 1) untimed calls
    blocks = [timed[i] for i in range(0, len(timed), 2)]
    assert blocks == ["big", "small", "small", "big", "big", "small", "small", "big"]
    assert speedup(out["big"], out["small"]) == pytest.approx(out["big"].median_ms / out["small"].median_ms)


def test_measure_and_timing_stats():
    calls = []
    t = measure(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7 and t.n == 5
    s = Timing.from_samples([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s.median_ms, s.p10_ms, s.p90_ms) == (3.0, 1.4, 4.6)
    assert Timing.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError):
        speedup(s, Timing.zero())


def test_measure_queues_calls_where_the_runner_can(monkeypatch):
    """A GPU row sample is k calls queued back to back with one synchronisation, divided by k: the
    synchronisation is paid once per sample, not once per call, as inside a network. A controlled clock:
    the test does not depend on how long a sleep takes on a loaded machine."""
    import types
    from depthcut.latency import backends
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(backends, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))
    syncs, calls = [], []

    def run():                      # one call costing 0.1 ms, then a synchronisation costing 5 ms
        calls.append(1)
        clock.now += 0.0001 + 0.005
        syncs.append(1)

    def queued(k):
        calls.extend([1] * k)
        clock.now += 0.0001 * k + 0.005
        syncs.append(1)
    run.queued = queued
    one = measure(run, warmup=0, repeats=3)
    many = measure(run, warmup=0, repeats=3, queued=10)
    assert len(calls) == 3 + 30 and len(syncs) == 6
    assert one.median_ms == pytest.approx(5.1) and many.median_ms == pytest.approx(0.6)
    plain = measure(lambda: calls.append(1), warmup=0, repeats=3, queued=10)   # nothing to queue: one call each
    assert plain.n == 3 and len(calls) == 36
    assert get_backend("eager").row_calls == 1 and "row_calls" not in get_backend("eager").describe()


def test_onnx_export_failure_names_module(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("unsupported op")
    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(DepthcutError, match="cannot export Sequential to ONNX: unsupported op"):
        get_backend("onnxruntime").prepare(nn.Sequential(nn.ReLU()), torch.randn(1, 2))


def test_backends_never_move_or_change_the_callers_module():
    from depthcut.latency.backends import get_backend

    module = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    for memory_format in ("contiguous", "channels_last"):
        backend = get_backend("eager", memory_format=memory_format)
        placed, x = backend._place(module, torch.randn(1, 3, 8, 8))
        assert placed is not module and placed[0].weight is not module[0].weight
        assert x.is_contiguous(memory_format=torch.channels_last if memory_format == "channels_last"
                               else torch.contiguous_format)
        backend.prepare(module, torch.randn(1, 3, 8, 8))()
    assert module[0].weight.is_contiguous()
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


def test_the_fingerprint_covers_the_math_mode():
    from depthcut.latency.backends import get_backend

    described = get_backend("eager").describe()
    assert {"matmul_precision", "memory_format"} <= set(described)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert get_backend("eager").describe() != described
    finally:
        torch.set_float32_matmul_precision(before)
    assert get_backend("eager", memory_format="channels_last").describe() != described
    # ONNX Runtime times an exported graph, which has no memory format: channels_last fine-tunes share its tables
    if importlib.util.find_spec("onnxruntime"):
        assert get_backend("onnxruntime", memory_format="channels_last").describe() == get_backend("onnxruntime").describe()
    with pytest.raises(DepthcutError, match="memory format"):
        get_backend("onnxruntime", memory_format="nhwc")

