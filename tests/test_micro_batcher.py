"""The server's queue (:mod:`reasondistill.micro_batcher`) on its own, with a model stand-in that
records each batch it gets: isolation of a failing request, the queue's deadline and admission
boundaries, and split requests. The real server and model are in test_serve*.py."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from reasondistill.micro_batcher import MicroBatcher
from reasondistill.score_inputs import BadRequest


class Model:
    """Uniform probabilities; raises on a "boom" query; holds the first batch until ``gate`` is set
    when ``hold`` names its first query, so that the next requests queue behind it."""

    def __init__(self, hold: str | None = None):
        self.batches: list[list[str]] = []
        self.gate, self.hold = threading.Event(), hold

    def __call__(self, pairs):
        self.batches.append([p["query"] for p in pairs])
        if pairs[0]["query"] == self.hold:
            self.gate.wait(5)
        if any(p["query"] == "boom" for p in pairs):
            raise TypeError("cannot encode")
        return np.full((len(pairs), 3), 1 / 3)


def test_a_request_the_model_cannot_take_fails_alone_in_its_micro_batch():
    """Three requests batched together, one of which makes the model raise: it fails, the others
    are re-scored without it and answered."""
    model = Model(hold="first")

    async def main():
        batcher = MicroBatcher(model, max_batch=64, max_wait_ms=0, max_queue=100)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit([{"query": "first"}]))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(batcher.submit([{"query": q}, {"query": q}])) for q in ("a", "boom", "b")]
        await asyncio.sleep(0.05)
        model.gate.set()
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        await batcher.stop()
        return results

    first, a, boom, b = asyncio.run(main())
    assert isinstance(boom, TypeError)
    assert a.shape == (2, 3) and b.shape == (2, 3) and first.shape == (1, 3)
    assert model.batches[1] == ["a", "a", "boom", "boom", "b", "b"]  # one batch, then each request alone
    assert model.batches[2:] == [["a", "a"], ["boom", "boom"], ["b", "b"]]


def test_a_failing_part_of_a_split_request_fails_that_request_only():
    async def main():
        batcher = MicroBatcher(Model(), max_batch=4, max_wait_ms=0, max_queue=100)
        batcher.start()
        bad = asyncio.ensure_future(batcher.submit([{"query": "ok"}] * 5 + [{"query": "boom"}] * 5))
        good = asyncio.ensure_future(batcher.submit([{"query": "fine"}] * 3))
        out = await asyncio.gather(bad, good, return_exceptions=True)
        left = batcher.queued_pairs
        await batcher.stop()
        return out, left

    (bad, good), left = asyncio.run(main())
    assert isinstance(bad, TypeError) and good.shape == (3, 3) and left == 0


def test_a_request_that_waited_past_max_queue_ms_is_refused_not_scored_late():
    """The admission estimate can be wrong (no rate measured yet): the queue's deadline still holds."""
    model = Model(hold="first")

    async def main():
        batcher = MicroBatcher(model, max_batch=8, max_wait_ms=0, max_queue=100, max_queue_ms=100)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit([{"query": "first"}]))
        await asyncio.sleep(0.02)
        late = asyncio.ensure_future(batcher.submit([{"query": "late"}]))
        await asyncio.sleep(0.25)  # past max_queue_ms while the model is busy
        model.gate.set()
        out = await asyncio.gather(first, late, return_exceptions=True)
        await batcher.stop()
        return out, batcher.stats

    (first, late), stats = asyncio.run(main())
    assert first.shape == (1, 3)
    assert isinstance(late, BadRequest) and late.status == 503 and late.retry_after >= 1
    assert "waited" in late.reason and "more than max_queue_ms 100" in late.reason
    assert model.batches == [["first"]] and stats.refused_wait == 1


def test_admission_refuses_at_once_when_the_queued_work_exceeds_max_queue_ms():
    """Boundary of the estimate: queued work equal to 0.8 of max_queue_ms is admitted, more is refused."""
    batcher = MicroBatcher(Model(), max_batch=8, max_wait_ms=0, max_queue=1000, max_queue_ms=625)
    batcher.pairs_per_s = 100.0  # as measured: 50 queued pairs are 500 ms of work
    batcher._busy = True
    batcher.queued_pairs = 50
    batcher.admit(1)  # 500 ms: equal to ADMIT_SHARE (0.8) of the limit, admitted
    batcher.queued_pairs = 51
    with pytest.raises(BadRequest) as refused:
        batcher.admit(1)
    assert refused.value.status == 503 and refused.value.retry_after == 1
    assert "about 510 ms" in refused.value.reason and "max_queue_ms 625" in refused.value.reason


def test_full_queue_boundary_in_pairs():
    batcher = MicroBatcher(Model(), max_batch=8, max_wait_ms=0, max_queue=10)
    batcher.queued_pairs = 6
    batcher.admit(4)  # exactly max_queue
    with pytest.raises(BadRequest) as refused:
        batcher.admit(5)
    assert refused.value.status == 503 and "6 pairs queued (max_queue 10)" in refused.value.reason
