"""Where importance entries are computed: an ``Executor`` maps a function over items and yields
``(item, result)`` pairs as they finish (possibly out of order).

The importance table (``depthcut.importance.table``) writes each result to its store the moment it arrives,
so any executor gets resumability for free, and it wraps the function so that an item that raises comes back
as a :class:`~depthcut.importance.table.Failed` result (candidate, error, traceback) while the others go on.
Three are provided (``get_executor(name)``, ``--executor``):

- :class:`LocalExecutor` ("local"): sequential, in-process (debuggable; the default).
- :class:`ProcessExecutor` ("process"): a ``concurrent.futures`` process pool with the *spawn* start method
  (safe with torch and threads). ``fn`` and the items must be picklable: a module-level function, or an
  instance of a module-level class such as :class:`depthcut.importance.scorer.CandidateAccuracy`.
- :class:`RayExecutor` ("ray"): one Ray task per item on a local or remote cluster (``address``), each with
  its resources (a GPU each where the cluster has GPUs). The function is put in the object store once. A
  worker that dies mid-task is retried by Ray (``max_retries``); a driver that restarts finds every finished
  entry in the cache and submits only the rest.

Across machines *without* a scheduler, run the same command on each machine with ``--shard i/n``
(``importance_table(..., shard=(i, n))``) against a shared cache directory: each computes its 1/n of the
entries and any of them (or a final run) assembles the complete table.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import pickle
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Callable, Iterable, Iterator, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")
R = TypeVar("R")


@runtime_checkable
class Executor(Protocol):
    """Anything that maps ``fn`` over ``items`` and yields ``(item, fn(item))`` as results arrive."""

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[T, R]]: ...


class LocalExecutor:
    """Sequential, in the calling process: results arrive in input order."""

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[T, R]]:
        for item in items:
            yield item, fn(item)

    def __repr__(self) -> str:
        return "LocalExecutor()"


class ProcessExecutor:
    """A pool of ``workers`` spawned processes. At most ``workers`` items are in flight at a time, so a
    killed parent loses at most ``workers`` entries. A failing item re-raises its exception here and the
    items not yet started are cancelled."""

    def __init__(self, workers: int = 2, *, start_method: str = "spawn"):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.start_method = start_method

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[T, R]]:
        items = iter(items)
        ctx = multiprocessing.get_context(self.start_method)
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx) as pool:
            pending: dict[Future, T] = {}

            def refill() -> None:
                # Submit lazily: queueing every item up front would put them all "in flight" at once.
                while len(pending) < self.workers:
                    try:
                        item = next(items)
                    except StopIteration:
                        return
                    pending[pool.submit(fn, item)] = item

            refill()
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        item = pending.pop(fut)
                        yield item, fut.result()
                    refill()
            finally:
                for fut in pending:
                    fut.cancel()

    def __repr__(self) -> str:
        return f"ProcessExecutor(workers={self.workers})"


class RayExecutor:
    """One Ray task per item, at most ``max_in_flight`` submitted at a time (default: the cluster's share
    of the resources each task asks for). ``address=None`` starts a local Ray instance (or joins the one
    ``RAY_ADDRESS`` names); ``num_gpus=None`` asks one GPU per task when the cluster has GPUs, else none."""

    def __init__(self, address: str | None = None, *, num_cpus: float = 1, num_gpus: float | None = None,
                 max_retries: int = 3, max_in_flight: int | None = None):
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        self.max_retries, self.max_in_flight = max_retries, max_in_flight

    def _start(self):
        try:
            import ray
        except ImportError:
            from ..errors import DepthcutError
            raise DepthcutError("--executor ray needs Ray: pip install 'depthcut[ray]' (or ray)") from None
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, ignore_reinit_error=True)
        return ray

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[T, R]]:
        ray = self._start()
        gpus = self.num_gpus
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        task = ray.remote(num_cpus=self.num_cpus, num_gpus=gpus, max_retries=self.max_retries)(_call_pickled)
        # shipped once, not once per task; pickled with the standard pickle, which (unlike Ray's cloudpickle)
        # handles torch.fx GraphModules
        fn_ref = ray.put(pickle.dumps(fn))
        limit = self.max_in_flight or max(1, int(ray.cluster_resources().get("CPU", 1) // max(self.num_cpus, 1e-9)))
        items = iter(items)
        pending: dict = {}
        try:
            while True:
                while len(pending) < limit:
                    try:
                        item = next(items)
                    except StopIteration:
                        break
                    pending[task.remote(fn_ref, item)] = item
                if not pending:
                    return
                done, _ = ray.wait(list(pending), num_returns=1)
                item = pending.pop(done[0])
                yield item, ray.get(done[0])
        finally:
            for ref in pending:
                ray.cancel(ref)

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r}, num_gpus={self.num_gpus})"


_UNPICKLED: dict[bytes, Callable] = {}


def _call_pickled(blob: bytes, item):
    """Runs in a Ray worker: unpickle the function once per worker process, then call it."""
    digest = hashlib.sha1(blob).digest()
    if digest not in _UNPICKLED:
        _UNPICKLED.clear()
        _UNPICKLED[digest] = pickle.loads(blob)
    return _UNPICKLED[digest](item)


EXECUTORS = ("local", "process", "ray")


def get_executor(name: str, workers: int = 2, address: str | None = None) -> Executor:
    """The executor registered as ``name`` (:data:`EXECUTORS`)."""
    if name == "local":
        return LocalExecutor()
    if name == "process":
        return ProcessExecutor(workers)
    if name == "ray":
        return RayExecutor(address)
    from ..errors import DepthcutError
    raise DepthcutError(f"unknown executor {name!r}: choose one of {', '.join(EXECUTORS)}")
