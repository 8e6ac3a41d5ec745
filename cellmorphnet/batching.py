"""Micro-batching: one thread owns a model and runs the small jobs of many callers as a few large batches.

Callers ``submit`` arrays and get a future of their probabilities; the thread takes whatever jobs arrived
within ``max_wait_ms`` of each other, up to ``max_batch`` arrays, and runs them as one forward pass, so many
clients sending one image each get close to the throughput of one client sending many. ``call`` runs any
other model work (Grad-CAM, a warm-up) on the same thread, in order.
"""

from __future__ import annotations

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


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: Future = field(default_factory=Future)


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
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="cellmorphnet-model", daemon=True)
        self._thread.start()

    def submit(self, arrays: list[np.ndarray]) -> Future:
        job = _Job(list(arrays))
        if not job.arrays:
            job.future.set_result(np.zeros((0, 0), np.float32))
        else:
            self._queue.put(job)
        return job.future

    def call(self, fn: Callable[[], Any]) -> Future:
        c = _Call(fn)
        self._queue.put(c)
        return c.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _gather(self, first: _Job) -> tuple[list[_Job], Any]:
        """``first`` and the jobs that arrive within the wait, up to ``max_batch`` images; and what stopped it."""
        jobs, n = [first], len(first.arrays)
        deadline = time.monotonic() + self.max_wait
        while n < self.max_batch:
            try:
                nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return jobs, None
            if not isinstance(nxt, _Job) or n + len(nxt.arrays) > self.max_batch:
                return jobs, nxt  # a call, the end, or a job that would not fit: handled next
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
        pending = None
        while True:
            item = pending if pending is not None else self._queue.get()
            pending = None
            if item is None:
                return
            if isinstance(item, _Call):
                try:
                    item.future.set_result(item.fn())
                except Exception as e:  # noqa: BLE001
                    item.future.set_exception(e)
                continue
            jobs, pending = self._gather(item)
            self._run(jobs)
