"""Dynamic micro-batching for ``reasondistill serve``: the pairs of concurrent requests scored together.

Batches are formed by pairs, not by requests: small requests are merged and a large one (a
50-document ``/rerank``) is split over as many batches as it needs, its results reassembled in
order. The queue is bounded twice, in pairs (``max_queue``) and in time (``max_queue_ms``): a
request that would wait longer than ``max_queue_ms`` before its first pair is scored is refused at
once with a 503 and ``Retry-After``, and one that still waited too long (the estimate was wrong) is
refused when its turn comes, never scored late. Work for a client that has gone is dropped before
it runs. No library offers this for a synchronous model call (Starlette and uvicorn only bound
connections), so it is written here, small.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .score_inputs import BadRequest

#: admit while the estimated wait is within this share of ``max_queue_ms``: the estimate's errors are
#: absorbed before the deadline would refuse a request late (measured in benchmarks/serve.py)
ADMIT_SHARE = 0.8


@dataclass
class _Job:
    pairs: list[dict[str, Any]]
    future: asyncio.Future
    enqueued: float
    timing: dict[str, float]
    cursor: int = 0  # pairs handed to a batch so far
    left: int = 0  # pairs not yet scored
    probs: np.ndarray | None = None
    started: float | None = None

    def __post_init__(self) -> None:
        self.left = len(self.pairs)


@dataclass
class _Segment:
    job: _Job
    start: int
    stop: int


@dataclass
class BatchStats:
    """What ``/metrics`` and ``/health`` show of the batcher."""

    batches: int = 0
    pairs: int = 0
    refused_queue_full: int = 0
    refused_wait: int = 0
    dropped_disconnected: int = 0


class MicroBatcher:
    """Scores the pairs of concurrent requests together, one batch at a time, in one worker thread.

    Without ``max_wait_ms`` a lone request is scored at once; requests that arrive while the model
    is busy queue up and are scored together next, so batches grow with load by themselves.
    """

    def __init__(self, score: Callable[[list[dict[str, Any]]], np.ndarray], max_batch: int, max_wait_ms: float,
                 max_queue: int, max_queue_ms: float = math.inf,
                 on_batch: Callable[[int, float], None] | None = None):
        """``on_batch(pairs, seconds)`` is called after each batch scored (the server's metrics)."""
        self.score, self.max_batch, self.max_wait, self.max_queue = score, max_batch, max_wait_ms / 1000, max_queue
        self.max_queue_s, self.on_batch = max_queue_ms / 1000, on_batch
        self.queue: deque[_Job] = deque()
        self.queued_pairs = 0
        self.stats = BatchStats()
        self.pairs_per_s: float | None = None  # measured, smoothed: the admission estimate's rate
        self._busy = False
        self._last_done = 0.0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reasondistill-score")

    @property
    def batches(self) -> int:
        return self.stats.batches

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def warm_up(self, pairs: list[dict[str, Any]]) -> None:
        """Score ``pairs`` once in the worker thread, outside the queue and the statistics."""
        await asyncio.get_running_loop().run_in_executor(self._pool, self.score, pairs)

    async def stop(self) -> None:
        """Finish every queued request, then stop."""
        while self.queue or self._busy:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
        self._pool.shutdown(wait=True)

    def expected_wait_s(self) -> float:
        """Seconds a request arriving now waits before its first pair is scored (0 while unmeasured)."""
        if not self.pairs_per_s or not (self.queue or self._busy):
            return 0.0
        return self.queued_pairs / self.pairs_per_s  # the batch being scored counts whole: a cautious guess

    def admit(self, n: int) -> None:
        """Refuse (``BadRequest`` 503) ``n`` more pairs now; ``admit(0)`` before a body is read
        refuses at the cost of its headers alone while the queue is already over the limit."""
        if self.queued_pairs + n > self.max_queue:
            self.stats.refused_queue_full += 1
            raise BadRequest(503, f"server busy: {self.queued_pairs} pairs queued (max_queue {self.max_queue})",
                             retry_after=self._retry_after(self.expected_wait_s()))
        wait = self.expected_wait_s()
        if wait > ADMIT_SHARE * self.max_queue_s:
            self.stats.refused_wait += 1
            raise BadRequest(503, f"server busy: about {wait * 1000:.0f} ms of queued work, more than max_queue_ms "
                                  f"{self.max_queue_s * 1000:g}", retry_after=self._retry_after(wait))

    @staticmethod
    def _retry_after(wait_s: float) -> int:
        return max(1, math.ceil(wait_s))

    def idle_for(self, n: int) -> bool:
        """Whether ``n`` pairs submitted now are scored at once, without queueing."""
        return not self._busy and not self.queue and not self.max_wait and n <= self.max_batch

    async def submit(self, pairs: list[dict[str, Any]], timing: dict[str, float] | None = None) -> np.ndarray:
        """Probabilities for ``pairs`` in order. ``timing`` gets ``queue_ms`` (wait before the first
        pair was scored). Cancelling the awaiting task drops the request's work not yet started."""
        timing = timing if timing is not None else {}
        self.admit(len(pairs))
        loop = asyncio.get_running_loop()
        if self.idle_for(len(pairs)):
            timing["queue_ms"] = 0.0  # idle: score now, no hop through the loop
            self._busy, self.queued_pairs = True, self.queued_pairs + len(pairs)
            begun = time.perf_counter()
            try:
                return await loop.run_in_executor(self._pool, self.score, pairs)
            finally:
                self._scored(len(pairs), time.perf_counter() - begun)
                self._busy, self.queued_pairs = False, self.queued_pairs - len(pairs)
                if self.queue:
                    self._wake.set()
        job = _Job(pairs, loop.create_future(), time.perf_counter(), timing)
        self.queue.append(job)
        self.queued_pairs += len(pairs)
        self._wake.set()
        try:
            return await job.future
        except asyncio.CancelledError:
            self._forget(job)
            raise

    def _forget(self, job: _Job) -> None:
        """A request whose client went: its pairs not yet handed to a batch leave the queue now."""
        if job in self.queue:
            self.queue.remove(job)
            self.queued_pairs -= len(job.pairs) - job.cursor
            self.stats.dropped_disconnected += 1

    def _scored(self, n: int, seconds: float) -> None:
        """Counts a batch and updates the rate the admission estimate uses: pairs per second of wall
        clock between back-to-back batches, so the event loop's own work (reading requests,
        writing answers, on the same cores) is in it, not only the model's."""
        now = time.perf_counter()
        self.stats.batches += 1
        self.stats.pairs += n
        if self.on_batch is not None:
            self.on_batch(n, seconds)
        since = now - self._last_done if self._last_done and now - self._last_done < 2 * seconds + 0.01 else seconds
        self._last_done = now
        if since > 0:
            rate = n / since
            self.pairs_per_s = rate if self.pairs_per_s is None else 0.8 * self.pairs_per_s + 0.2 * rate

    def _next_batch(self) -> list[_Segment]:
        """Up to ``max_batch`` pairs from the head of the queue; a request that waited past
        ``max_queue_ms`` before any of its pairs started is refused instead."""
        now, size, segments = time.perf_counter(), 0, []
        while self.queue and size < self.max_batch:
            job = self.queue[0]
            if job.future.done():  # cancelled meanwhile
                self.queue.popleft()
                self.queued_pairs -= len(job.pairs) - job.cursor
                continue
            if job.started is None:
                waited = now - job.enqueued
                if waited > self.max_queue_s:
                    self.queue.popleft()
                    self.queued_pairs -= len(job.pairs)
                    self.stats.refused_wait += 1
                    job.future.set_exception(BadRequest(
                        503, f"server busy: waited {waited * 1000:.0f} ms in the queue, more than max_queue_ms "
                             f"{self.max_queue_s * 1000:g}", retry_after=self._retry_after(self.expected_wait_s())))
                    continue
                job.started = now
                job.timing["queue_ms"] = waited * 1000
            take = min(self.max_batch - size, len(job.pairs) - job.cursor)
            segments.append(_Segment(job, job.cursor, job.cursor + take))
            job.cursor += take
            size += take
            if job.cursor == len(job.pairs):
                self.queue.popleft()
        return segments

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.queue and not self._busy:
                if self.max_wait and self.queued_pairs < self.max_batch:
                    await asyncio.sleep(self.max_wait)
                segments = self._next_batch()
                if not segments:
                    continue
                pairs = [p for s in segments for p in s.job.pairs[s.start:s.stop]]
                self._busy = True
                begun = time.perf_counter()
                try:
                    probs = await loop.run_in_executor(self._pool, self.score, pairs)
                except Exception as exc:
                    await self._isolate(segments, exc)
                else:
                    self._scored(len(pairs), time.perf_counter() - begun)
                    offset = 0
                    for seg in segments:
                        self._deliver(seg, probs[offset:offset + seg.stop - seg.start])
                        offset += seg.stop - seg.start
                finally:
                    self.queued_pairs -= len(pairs)
                    self._busy = False

    def _deliver(self, seg: _Segment, probs: np.ndarray) -> None:
        job = seg.job
        if job.future.done():  # its client went, or another segment failed
            return
        if job.probs is None:
            job.probs = np.empty((len(job.pairs), probs.shape[1]), dtype=probs.dtype)
        job.probs[seg.start:seg.stop] = probs
        job.left -= seg.stop - seg.start
        if job.left == 0:
            job.future.set_result(job.probs)

    def _fail(self, job: _Job, exc: Exception) -> None:
        if not job.future.done():
            job.future.set_exception(exc)
        self._forget(job)  # the rest of a split request is not scored

    async def _isolate(self, segments: list[_Segment], exc: Exception) -> None:
        """A batch failed: score each request's part alone, so one request the model cannot take
        fails by itself and the others it was batched with still get their answers."""
        if len(segments) == 1:
            self._fail(segments[0].job, exc)
            return
        loop = asyncio.get_running_loop()
        for seg in segments:
            if seg.job.future.done():
                continue
            try:
                probs = await loop.run_in_executor(self._pool, self.score, seg.job.pairs[seg.start:seg.stop])
            except Exception as alone:
                self._fail(seg.job, alone)
            else:
                self._deliver(seg, probs)
