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


def test_max_wait_ms_gathers_a_lone_request_with_the_next_one():
    """``max_wait_ms: 200``: a request on an idle server waits up to 200 ms (not 0, not 200 s) for
    company, so two requests 30 ms apart are one batch."""
    model = Model()

    async def main():
        batcher = MicroBatcher(model, max_batch=8, max_wait_ms=200, max_queue=100)
        batcher.start()
        a = asyncio.ensure_future(batcher.submit([{"query": "a"}]))
        await asyncio.sleep(0.03)
        b = asyncio.ensure_future(batcher.submit([{"query": "b"}]))
        out = await asyncio.wait_for(asyncio.gather(a, b), timeout=5)
        await batcher.stop()
        return out

    assert [o.shape for o in asyncio.run(main())] == [(1, 3), (1, 3)]
    assert model.batches == [["a", "b"]]


def test_the_rate_counts_the_gap_between_back_to_back_batches(monkeypatch):
    """The admission estimate's rate: pairs over the wall-clock gap since the previous batch when
    the batches ran back to back (a gap under twice the batch's own time), else over the batch's
    own time; a batch that took no time leaves the rate alone; smoothed 0.8 / 0.2."""
    from reasondistill import micro_batcher

    clock = {"now": 100.0}
    monkeypatch.setattr(micro_batcher.time, "perf_counter", lambda: clock["now"])
    batcher = MicroBatcher(Model(), max_batch=8, max_wait_ms=0, max_queue=100)
    batcher._scored(10, 0.5)  # the first: its own half second
    assert batcher.pairs_per_s == pytest.approx(20.0)
    clock["now"] = 100.9  # 0.9 s after the last, under 2 x 0.5 s: back to back, the gap counts
    batcher._scored(10, 0.5)
    assert batcher.pairs_per_s == pytest.approx(0.8 * 20 + 0.2 * 10 / 0.9)
    before = batcher.pairs_per_s
    clock["now"] = 102.1  # 1.2 s: an idle gap, the batch's own time counts
    batcher._scored(10, 0.5)
    assert batcher.pairs_per_s == pytest.approx(0.8 * before + 0.2 * 20)
    before = batcher.pairs_per_s
    clock["now"] = 200.0
    batcher._scored(5, 0.0)
    assert batcher.pairs_per_s == before and batcher.stats.batches == 4 and batcher.stats.pairs == 35


def test_a_gone_or_late_request_at_the_head_does_not_stop_the_batch_behind_it():
    """The next batch skips a request whose client went and one past its deadline (refused, counted
    once), and still takes the request behind them, in the same call; a request forgotten when its
    client goes leaves the queue with its pairs and is counted once."""
    import time

    from reasondistill.micro_batcher import _Job

    loop = asyncio.new_event_loop()
    try:
        batcher = MicroBatcher(Model(), max_batch=8, max_wait_ms=0, max_queue=100, max_queue_ms=100)
        now = time.perf_counter()
        gone, late, fresh = (_Job([{"query": q}] * n, loop.create_future(), now, {})
                             for q, n in (("gone", 1), ("late", 2), ("fresh", 1)))
        gone.future.cancel()
        late.enqueued = now - 1.0  # queued a second ago, past max_queue_ms
        batcher.queue.extend([gone, late, fresh])
        batcher.queued_pairs = 4
        segments = batcher._next_batch()
        assert [(s.job, s.start, s.stop) for s in segments] == [(fresh, 0, 1)]
        assert batcher.stats.refused_wait == 1 and "more than max_queue_ms 100" in late.future.exception().reason
        assert batcher.queued_pairs == 1 and not batcher.queue
        waiting = _Job([{"query": "w"}] * 3, loop.create_future(), now, {})
        waiting.cursor = 1  # one pair already in a batch
        batcher.queue.append(waiting)
        batcher.queued_pairs += 3
        batcher._forget(waiting)
        batcher._forget(waiting)  # already gone: nothing more
        assert batcher.stats.dropped_disconnected == 1 and batcher.queued_pairs == 2 and not batcher.queue
    finally:
        loop.close()


def test_isolating_a_failed_batch_skips_requests_already_answered_and_scores_the_rest():
    """After a batch fails, each request's part is scored alone: a part whose request is already
    done (its client went) is skipped, the one the model cannot take fails, the rest are answered."""
    import time

    from reasondistill.micro_batcher import _Job, _Segment

    model = Model()

    async def main():
        loop = asyncio.get_running_loop()
        batcher = MicroBatcher(model, max_batch=8, max_wait_ms=0, max_queue=100)
        jobs = [_Job([{"query": q}], loop.create_future(), time.perf_counter(), {}) for q in ("gone", "boom", "fine")]
        jobs[0].future.cancel()
        await batcher._isolate([_Segment(j, 0, 1) for j in jobs], TypeError("the batch failed"))
        await batcher.stop()
        return jobs

    gone, boom, fine = asyncio.run(main())
    assert isinstance(boom.future.exception(), TypeError) and fine.future.result().shape == (1, 3)
    assert model.batches == [["boom"], ["fine"]]


def test_a_split_request_gets_each_pair_its_own_probabilities():
    """A request larger than max_batch is scored over several batches, the last shared with the
    next request: every pair gets the row the model gave it, in order."""

    class ByQuery(Model):
        """Model's batches and hold; the first probability is the number in the query ("a4": 4)."""

        def __call__(self, pairs):
            super().__call__(pairs)
            return np.array([[float(p["query"][1:]) if p["query"][0] in "ab" else 0.0, 0.0, 1.0] for p in pairs])

    model = ByQuery(hold="hold")

    async def main():
        batcher = MicroBatcher(model, max_batch=4, max_wait_ms=0, max_queue=100)
        batcher.start()
        hold = asyncio.ensure_future(batcher.submit([{"query": "hold"}]))
        await asyncio.sleep(0.02)
        big = asyncio.ensure_future(batcher.submit([{"query": f"a{i}"} for i in range(6)]))
        small = asyncio.ensure_future(batcher.submit([{"query": "b7"}]))
        await asyncio.sleep(0.02)
        model.gate.set()
        out = await asyncio.wait_for(asyncio.gather(hold, big, small), timeout=10)
        await batcher.stop()
        return out

    _, big, small = asyncio.run(main())
    assert model.batches[1:] == [["a0", "a1", "a2", "a3"], ["a4", "a5", "b7"]]
    assert big[:, 0].tolist() == [0, 1, 2, 3, 4, 5] and small[:, 0].tolist() == [7]
