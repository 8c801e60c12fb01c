"""Where importance entries are computed: an ``Executor`` maps a function over items and yields
``(item, result)`` pairs as they finish (possibly out of order).

The importance table (``depthcut.importance.table``) writes each result to its store the moment it arrives,
so any executor gets resumability for free. Two are provided:

- :class:`LocalExecutor`: sequential, in-process (debuggable; the default).
- :class:`ProcessExecutor`: a ``concurrent.futures`` process pool with the *spawn* start method (safe with
  torch and threads). ``fn`` and the items must be picklable: a module-level function, or an instance of a
  module-level class such as :class:`depthcut.importance.table.ProxyScore`.

A distributed engine plugs in as any object with the same ``map``. For example, with Ray::

    class RayExecutor:
        def __init__(self, **remote_options):          # e.g. num_gpus=1
            self.options = remote_options

        def map(self, fn, items):
            import ray
            task = ray.remote(**self.options)(fn) if self.options else ray.remote(fn)
            pending = {task.remote(item): item for item in items}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                yield pending.pop(done[0]), ray.get(done[0])

Across machines *without* a scheduler, run the same command on each machine with
``importance_table(..., shard=(i, n))`` against a shared cache directory: each computes its 1/n of the
entries and any of them (or a final run) assembles the complete table.
"""
from __future__ import annotations

import multiprocessing
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
