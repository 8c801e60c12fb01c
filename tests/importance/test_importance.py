"""The resumable importance table (SPEC A6): kill -9 safety, resume, executors, shards, proxies, scores."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from depthcut.cache import EntryStore
from depthcut.cnn.chain import Candidate
from depthcut.errors import CacheError, DepthcutError
from depthcut.importance import (ImportanceTaskError, LocalExecutor, ProcessExecutor, Proxy, RayExecutor,
                                 get_executor, importance_scores, importance_store, importance_table, in_shard, recalibrate_bn, score, score_loss)

MANIFEST = {"model": "toy", "proxy": "none"}

# A stand-alone script: computes an 8-entry table, writing to the store directory given on the command line; its
# score function finishes three entries and then never returns, so the test kills it mid-table whatever the
# machine's speed (no deadline to miss under load). The test imports the same file to share
# `metric`/`candidates`.
HELPER = '''
import sys, time
from depthcut.cache import EntryStore
from depthcut.cnn.chain import Candidate
from depthcut.importance import importance_table

MANIFEST = {"model": "toy", "proxy": "none"}
FINISHED = []


def candidates():
    return [Candidate(start=i, end=i + 1 + (i % 2), kept=(i + 1,), kernel=3 + 2 * (i % 2), stride=1,
                      depthwise=False, in_channels=4, out_channels=4, input_shape=(1, 4, 8, 8),
                      activation="relu") for i in range(8)]


def metric(c):
    return 90.0 - 1.5 * c.start - 0.25 * c.kernel


def slow_metric(c):
    if len(FINISHED) == 3:      # stuck on the fourth entry until killed
        while True:
            time.sleep(1)
    FINISHED.append(c.key)
    return metric(c)


if __name__ == "__main__":
    importance_table(candidates(), slow_metric, store=EntryStore(sys.argv[1], MANIFEST), progress=False)
'''


@pytest.fixture
def helper(tmp_path):
    path = tmp_path / "slow_table.py"
    path.write_text(HELPER)
    spec = importlib.util.spec_from_file_location("slow_table", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.path = path
    return mod


def metric_fn(c: Candidate) -> float:
    """Module-level (picklable) deterministic metric for the process-pool test."""
    return 80.0 - c.start + 0.1 * c.kernel


def failing_fn(c: Candidate) -> float:
    if c.start == 3:
        raise RuntimeError(f"candidate {c.key} diverged")
    return 1.0


def test_resume_after_real_kill_9(helper, tmp_path):
    store_dir = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, str(helper.path), str(store_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # Wait until a few entries exist, then kill without any chance to clean up (pytest-timeout bounds it).
        while proc.poll() is None:
            if store_dir.exists() and len(list(store_dir.glob("*.json"))) - 1 >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"helper ended early: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    store = EntryStore(store_dir, MANIFEST)
    done = set(store.keys())             # every file present parses: no half-written entry survives a kill
    everything = {c.key for c in helper.candidates()}
    assert len(done) == 3

    calls = []

    def counting(c):
        calls.append(c.key)
        return helper.metric(c)
    resumed = importance_table(helper.candidates(), counting, store=store, progress=False)
    assert sorted(calls) == sorted(everything - done), "finished entries must not be recomputed"

    clean = importance_table(helper.candidates(), helper.metric, progress=False,
                             store=EntryStore(tmp_path / "clean", MANIFEST))
    assert resumed == clean and set(clean) == everything
    assert importance_table(helper.candidates(), counting, store=store, progress=False) == clean
    assert len(calls) == len(everything - done)


def test_process_executor_matches_local(helper, tmp_path):
    cands = helper.candidates()
    local = importance_table(cands, metric_fn, store=EntryStore(tmp_path / "a", MANIFEST),
                             executor=LocalExecutor(), progress=False)
    pooled = importance_table(cands, metric_fn, store=EntryStore(tmp_path / "b", MANIFEST),
                              executor=ProcessExecutor(2), progress=False)
    assert pooled == local == {c.key: metric_fn(c) for c in cands}


@pytest.mark.parametrize("executor", ["local", "process"])
def test_a_failing_entry_is_reported_and_the_others_go_on(helper, tmp_path, executor):
    """Issue 8: a task that raises is reported with its candidate and traceback; every other entry is
    computed and stored, and a rerun computes only the failed ones."""
    store = EntryStore(tmp_path / "s", MANIFEST)
    cands = helper.candidates()
    failing = [c for c in cands if c.start == 3]
    assert failing and len(failing) < len(cands)
    with pytest.raises(ImportanceTaskError, match=rf"{len(failing)} of {len(cands)} importance entries failed "
                                                  rf"\(first: .*diverged\).*failures.log"):
        importance_table(cands, failing_fn, store=store, progress=False, executor=get_executor(executor, 2))
    assert len(store) == len(cands) - len(failing)
    log = (store.dir / "failures.log").read_text()
    assert all(c.key in log for c in failing) and "Traceback" in log and "failing_fn" in log
    assert importance_table(cands, metric_fn, store=store, progress=False) == {
        c.key: (1.0 if c.start != 3 else metric_fn(c)) for c in cands}


def test_ray_executor_gives_the_local_table_and_survives_a_failure(helper, tmp_path):
    """The same entries, values and on-disk cache through Ray tasks (a local Ray instance here), with a
    failing task reported while the others finish."""
    pytest.importorskip("ray")
    import ray

    cands = helper.candidates()
    local = importance_table(cands, metric_fn, store=EntryStore(tmp_path / "a", MANIFEST), progress=False)
    here = str(Path(__file__).parent)       # Ray workers import this module's functions by name
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}})
    try:
        ray_store = EntryStore(tmp_path / "b", MANIFEST)
        assert importance_table(cands, metric_fn, store=ray_store, executor=RayExecutor(), progress=False) == local
        assert sorted(ray_store.keys()) == sorted(local)
        flaky = EntryStore(tmp_path / "c", MANIFEST)
        with pytest.raises(ImportanceTaskError, match="diverged"):
            importance_table(cands, failing_fn, store=flaky, executor=RayExecutor(), progress=False)
        assert len(flaky) == sum(c.start != 3 for c in cands)
    finally:
        ray.shutdown()


def test_shards_partition_the_work(helper, tmp_path):
    cands = helper.candidates()
    shared = tmp_path / "shared"
    part0 = importance_table(cands, helper.metric, store=EntryStore(shared, MANIFEST), shard=(0, 2),
                             progress=False)
    assert set(part0) == {c.key for c in cands if in_shard(c.key, (0, 2))}
    calls = []

    def counting(c):
        calls.append(c.key)
        return helper.metric(c)
    full = importance_table(cands, counting, store=EntryStore(shared, MANIFEST), progress=False)
    assert set(calls) == {c.key for c in cands if in_shard(c.key, (1, 2))}
    assert not set(calls) & set(part0)
    assert full == {c.key: helper.metric(c) for c in cands}
    with pytest.raises(ValueError):
        in_shard("x", (2, 2))


def test_corrupted_entry_and_foreign_store(helper, tmp_path):
    store = importance_store(MANIFEST, tmp_path)
    cands = helper.candidates()[:2]
    importance_table(cands, helper.metric, store=store, progress=False)
    bad = store.path(cands[0].key)
    bad.write_text(json.dumps({"key": cands[0].key, "value": {"oops": 1}}))
    with pytest.raises(CacheError, match=bad.name):
        importance_table(cands, helper.metric, store=store, progress=False)
    assert importance_store({**MANIFEST, "proxy": "finetune"}, tmp_path).dir != store.dir
    with pytest.raises(CacheError):
        EntryStore(store.dir, {"model": "another"})


def test_scores():
    assert score(75.0, 75.0) == 1.0
    assert score(70.0, 75.0) == pytest.approx(math.exp(-0.05))
    assert score_loss(2.0, 2.0) == 1.0
    assert score_loss(3.0, 2.0) == pytest.approx(math.exp(-0.5))
    assert importance_scores({"a": 74.0}, 75.0) == {"a": pytest.approx(math.exp(-0.01))}
    assert importance_scores({"a": 2.2}, 2.0, "loss") == {"a": pytest.approx(math.exp(-0.1))}
    with pytest.raises(ValueError):
        score_loss(1.0, 0.0)


# ------------------------------------------------------------------------------------------ proxies ---

@pytest.mark.parametrize("proxy", list(Proxy))
def test_the_scorer_applies_its_proxy_to_the_candidate_alone(proxy, monkeypatch):
    """depthcut's scorer (CandidateAccuracy): the network with only the candidate applied, adapted by the
    configured proxy (a short fine-tune, BatchNorm statistics re-estimated, or nothing), scored on the scoring
    split."""
    import torch

    import depthcut.train as training
    from depthcut.cnn.build import build_unmerged, single_block_plan
    from depthcut.cnn.graph import analyze
    from depthcut.config import LayerMergeConfig
    from depthcut.data import make_splits
    from depthcut.importance.scorer import CandidateAccuracy
    from test_compression import TinyNet

    splits = make_splits("digits", finetune_size=64, score_size=64, seed=0)
    torch.manual_seed(0)
    model = TinyNet().eval()
    analysis = analyze(model, (1, 1, 8, 8))
    candidate = next(c for c in analysis.candidates if c.end - c.start == 2)
    log: list[str] = []
    real_train, real_recal = training.train, training.recalibrate_bn
    monkeypatch.setattr(training, "train", lambda net, *a, **k: (log.append("train"), real_train(net, *a, **k))[1])
    monkeypatch.setattr(training, "recalibrate_bn",
                        lambda net, *a, **k: (log.append("bn"), real_recal(net, *a, **k))[1])
    config = LayerMergeConfig(data="digits", importance=proxy.value, importance_steps=2, input_shape=(1, 1, 8, 8),
                              progress=False)
    scorer = CandidateAccuracy(model, (1, 1, 8, 8), (), splits.finetune, splits.score, config)
    accuracy = scorer(candidate)
    assert log == {Proxy.FINETUNE: ["train"], Proxy.BN_RECALIBRATION: ["bn"], Proxy.BN_BATCH: [], Proxy.NONE: []}[proxy]
    built = build_unmerged(analysis.gm, analysis.chain, single_block_plan(analysis.chain, candidate)).eval()
    if proxy is Proxy.NONE:            # nothing adapted: exactly the network with the block applied, as built
        assert accuracy == training.evaluate(built, splits.score)
    if proxy is Proxy.BN_BATCH:        # the network as built, each scoring batch normalised by its own statistics
        assert accuracy == training.evaluate(built, splits.score, batch_size=128, batch_statistics=True)
    assert 0.0 <= accuracy <= 100.0


def test_bn_recalibration_is_exact_average_without_gradient_steps():
    import torch
    from torch import nn

    model = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2), nn.Dropout(0.5))
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [(torch.randn(4, 2, 3, 3) * 2 + 1, torch.zeros(4)) for _ in range(3)]
    recalibrate_bn(model, batches, num_batches=2)
    with torch.no_grad():
        feats = torch.cat([model[0](x) for x, _ in batches[:2]])
    assert torch.allclose(model[1].running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    assert model[1].momentum == 0.1 and not model.training
    after = {k: v for k, v in model.state_dict().items() if k in before}
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(DepthcutError, match="no batches"):
        recalibrate_bn(model, iter([]))


def test_stored_cost_counts_every_table_under_a_cache_by_proxy_with_the_seconds_entries_recorded(helper, tmp_path):
    from depthcut.importance import StoredCost, stored_cost

    cands = helper.candidates()
    finetuned = importance_store({"model": "toy", "proxy": "finetune"}, tmp_path)
    cheap = importance_store({"model": "toy", "proxy": "bn-batch"}, tmp_path)
    for i, cand in enumerate(cands[:3]):
        finetuned[cand.key] = {"metric": 80.0, "seconds": 2.0 + i, "candidate": cand.to_dict()}
    cheap[cands[0].key] = {"metric": 70.0, "seconds": 0.5, "candidate": cands[0].to_dict()}
    assert stored_cost(tmp_path) == StoredCost(finetuned=3, cheap=1, seconds=9.5)

    # entries importance_table computes record their own time: at least what the slow score took each
    def slow(c):
        time.sleep(0.02)
        return 60.0

    importance_table(cands[3:5], slow, store=cheap, progress=False)
    cost = stored_cost(tmp_path)
    assert (cost.finetuned, cost.cheap) == (3, 3) and cost.seconds >= 9.5 + 2 * 0.02
    assert stored_cost(tmp_path / "empty") == StoredCost(0, 0, 0.0)
