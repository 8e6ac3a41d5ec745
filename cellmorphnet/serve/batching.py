"""Micro-batching: one thread owns a model and runs the small jobs of many callers as a few large batches.

Callers ``submit`` arrays and get a future of their probabilities; the thread takes whatever jobs arrived
within ``max_wait_ms`` of each other, up to ``max_batch`` arrays, and runs them as one forward pass, so many
clients sending one image each get close to the throughput of one client sending many. ``call`` runs any
other model work (Grad-CAM, a warm-up) on the same thread. Work is taken in order of its ``priority`` (0 first),
then of arrival: a small request's images (priority 0) go before the next batch of a large one's (1), which
sends them a batch at a time, so a field of 200 cells delays a single-cell request by one batch at most.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cellmorphnet.errors import ConfigError

DEFAULT_MAX_BATCH = 32  # images per forward pass (times 8 views with the 8-view average)
DEFAULT_MAX_WAIT_MS = 5.0  # how long the model thread waits for more requests to join a batch


@dataclass
class _Job:
    arrays: list[np.ndarray]
    future: Future = field(default_factory=Future)
    priority: int = 0


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: Future = field(default_factory=Future)
    priority: int = 0


_LAST = 99  # the close marker's priority: after everything queued before it

class MicroBatcher:
    """One thread that owns the model: gathers queued jobs into batches of at most ``max_batch`` images.

    ``submit(arrays)`` returns a future of the (N, C) probabilities of those arrays; ``call(fn)`` runs
    ``fn`` on the model thread between batches (Grad-CAM needs the model to itself). With
    ``max_batch=1`` every image runs alone: no micro-batching.
    """

    def __init__(self, forward: Callable[[list[np.ndarray]], np.ndarray], max_batch: int = DEFAULT_MAX_BATCH,
                 max_wait_ms: float = DEFAULT_MAX_WAIT_MS) -> None:  # fmt: skip
        if max_batch < 1 or max_wait_ms < 0:
            raise ConfigError("--max-batch must be at least 1 and --batch-wait-ms not negative.")
        self.forward = forward
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._seq = itertools.count()  # arrival order among equal priorities
        self._thread = threading.Thread(target=self._loop, name="cellmorphnet-model", daemon=True)
        self._thread.start()

    def _put(self, priority: int, item) -> None:
        self._queue.put((priority, next(self._seq), item))

    def submit(self, arrays: list[np.ndarray], priority: int = 0) -> Future:
        job = _Job(list(arrays), priority=priority)
        if not job.arrays:
            job.future.set_result(np.zeros((0, 0), np.float32))
        else:
            self._put(priority, job)
        return job.future

    def call(self, fn: Callable[[], Any], priority: int = 0) -> Future:
        c = _Call(fn, priority=priority)
        self._put(priority, c)
        return c.future

    def close(self) -> None:
        self._put(_LAST, None)
        self._thread.join(timeout=10)

    def _gather(self, first: _Job) -> tuple[list[_Job], tuple | None]:
        """``first`` and the jobs that arrive within the wait, up to ``max_batch`` images; and the queue entry that
        stopped it (a call, the end, or a job that would not fit), to be put back in its place."""
        jobs, n = [first], len(first.arrays)
        deadline = time.monotonic() + self.max_wait
        while n < self.max_batch:
            try:
                entry = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return jobs, None
            nxt = entry[2]
            if not isinstance(nxt, _Job) or n + len(nxt.arrays) > self.max_batch:
                return jobs, entry
            jobs.append(nxt)
            n += len(nxt.arrays)
        return jobs, None

    def _run(self, jobs: list[_Job]) -> None:
        arrays = [a for j in jobs for a in j.arrays]
        try:
            parts = []
            for i in range(0, len(arrays), self.max_batch):
                parts.append(self.forward(arrays[i : i + self.max_batch]))
            probs = np.concatenate(parts)
        except Exception as e:  # noqa: BLE001 - handed to every waiting request, never lost in this thread
            for j in jobs:
                j.future.set_exception(e)
            return
        start = 0
        for j in jobs:
            j.future.set_result(probs[start : start + len(j.arrays)])
            start += len(j.arrays)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()[2]
            if item is None:
                return
            if isinstance(item, _Call):
                try:
                    item.future.set_result(item.fn())
                except Exception as e:  # noqa: BLE001
                    item.future.set_exception(e)
                continue
            jobs, stopped_at = self._gather(item)
            if stopped_at is not None:
                self._queue.put(stopped_at)  # back in its place: same priority, same arrival
            self._run(jobs)
