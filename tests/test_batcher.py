"""The batcher's grouping and splitting, with an in-process executor standing in for the Ray hop.

The executor here is a real function over numpy arrays (it doubles its input and
records the batches it saw), so these tests check the batcher's own logic:
who gets which rows, when a batch leaves, what happens on failure. The Ray path
itself is covered end to end in test_concurrency.py.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import numpy as np
import pytest

from gateway import batcher as batcher_module
from gateway.arrivals import ArrivalRate
from gateway.batcher import Batcher, BatchPolicy
from gateway.errors import BadRequest, DeadlineExceeded, Overloaded, Unavailable
from gateway.loop_load import LoopLoad
from serving.batch_inputs import Arrays, Parts, joined


class RecordingExecutor:
    def __init__(self, delay_s: float = 0.0, fail_with: Exception | None = None) -> None:
        self.delay_s = delay_s
        self.fail_with = fail_with
        self.batch_rows: list[int] = []
        self.parts: list[np.ndarray] = []
        """Each request's input array, as handed over."""

    async def __call__(self, parts: Parts) -> Arrays:
        self.parts.extend(part["x"] for part in parts)
        inputs = joined(parts)
        self.batch_rows.append(len(inputs["x"]))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_with is not None:
            raise self.fail_with
        return {"double": inputs["x"] * 2, "first": inputs["x"][:, 0].copy()}


def _rows(start: int, count: int) -> Arrays:
    return {"x": np.arange(start * 3, (start + count) * 3, dtype=np.float32).reshape(count, 3)}


def test_concurrent_requests_share_batches_and_get_their_own_rows() -> None:
    executor = RecordingExecutor(delay_s=0.005)
    batcher = Batcher("m", executor, BatchPolicy(max_batch_rows=64, max_wait_s=0.0, max_inflight=1))
    sizes = [1, 5, 2, 7, 3, 1, 4, 9, 2, 6] * 4
    starts = np.cumsum([0, *sizes[:-1]])
    requests = [_rows(int(s), n) for s, n in zip(starts, sizes, strict=True)]

    async def main() -> list[Arrays]:
        return await asyncio.gather(*(batcher.submit(inputs, n) for inputs, n in zip(requests, sizes, strict=True)))

    results = asyncio.run(main())
    start = 0
    for size, result in zip(sizes, results, strict=True):
        np.testing.assert_array_equal(result["double"], _rows(start, size)["x"] * 2)
        np.testing.assert_array_equal(result["first"], _rows(start, size)["x"][:, 0])
        start += size
    assert sum(executor.batch_rows) == sum(sizes)
    assert len(executor.batch_rows) < len(sizes) / 4, executor.batch_rows  # they really were grouped
    assert max(executor.batch_rows) <= 64
    # each request's own array, in queue order: the executor joins them where it copies them anyway
    assert len(executor.parts) == len(requests)
    assert all(seen is inputs["x"] for seen, inputs in zip(executor.parts, requests, strict=True))


def test_row_budget_splits_batches_but_never_blocks_a_large_request() -> None:
    executor = RecordingExecutor(delay_s=0.002)
    batcher = Batcher("m", executor, BatchPolicy(max_batch_rows=10, max_wait_s=0.0, max_inflight=1))

    async def main() -> None:
        await asyncio.gather(*(batcher.submit(_rows(0, n), n) for n in (4, 4, 4, 12, 1)))

    asyncio.run(main())
    assert executor.batch_rows[0] == 4  # dispatched alone: the slot was free
    assert sorted(executor.batch_rows[1:]) == [1, 8, 12]


def test_lone_request_is_not_held_back_when_work_conserving() -> None:
    executor = RecordingExecutor()
    batcher = Batcher("m", executor, BatchPolicy(max_batch_rows=64, max_wait_s=0.0, max_inflight=2))

    async def main() -> float:
        started = time.perf_counter()
        await batcher.submit(_rows(0, 1), 1)
        return time.perf_counter() - started

    assert asyncio.run(main()) < 0.05
    assert executor.batch_rows == [1]


def _stream(batcher: Batcher, rows_per_s: float, seconds: float = 1.0) -> None:
    """Tell the arrival-rate estimate that rows have been arriving at ``rows_per_s`` until now."""
    now = time.monotonic()
    batcher.arrivals = ArrivalRate(now=now - seconds)
    steps = 100
    for step in range(steps + 1):
        batcher.arrivals.add(round(rows_per_s * seconds / steps), now - seconds + step * seconds / steps)


def test_a_trained_batcher_sends_a_lone_request_at_once_at_low_load() -> None:
    executor = RecordingExecutor()
    batcher = _trained(Batcher("m", executor, BatchPolicy(max_batch_rows=64, max_wait_s=0.0, max_inflight=1)), 0.005)
    _stream(batcher, rows_per_s=20)  # keeps up with one-row batches: 20/s x 5 ms is far below a slot

    async def main() -> list[int]:
        request = asyncio.ensure_future(batcher.submit(_rows(0, 1), 1))
        for _ in range(3):  # a few turns of the loop: no timer could have fired yet
            await asyncio.sleep(0)
        sent = list(executor.batch_rows)
        await request
        return sent

    assert batcher.keep_up_rows(time.monotonic()) < 1
    assert asyncio.run(main()) == [1]  # sent at once, not held for the 5 ms a batch is worth


def test_waits_for_company_when_a_batch_that_small_could_not_keep_up() -> None:
    executor = RecordingExecutor()
    batcher = _trained(Batcher("m", executor, BatchPolicy(max_batch_rows=64, max_wait_s=0.0, max_inflight=1)), 0.05)
    _stream(batcher, rows_per_s=100)  # one slot at 50 ms per batch keeps up with 100 rows/s only at 5+ rows

    async def main() -> float:
        started = time.perf_counter()
        first = asyncio.ensure_future(batcher.submit(_rows(0, 1), 1))
        for i in range(1, 5):
            await asyncio.sleep(0.0005)
            assert executor.batch_rows == []  # held: still waiting for the rows it needs
            await batcher.submit(_rows(i, 1), 1) if i == 4 else asyncio.ensure_future(batcher.submit(_rows(i, 1), 1))
        await first
        return time.perf_counter() - started

    assert 4.5 < batcher.keep_up_rows(time.monotonic()) < 5.5
    waited = asyncio.run(main())
    assert executor.batch_rows == [5]  # one batch of the size that keeps up, not five calls
    assert waited < 0.04  # it left when it had them, before the 50 ms it would have held out for


def test_objective_limit_recovers_after_a_slow_spell() -> None:
    executor = RecordingExecutor(delay_s=0.03)
    policy = BatchPolicy(max_batch_rows=8, max_wait_s=0.0, max_inflight=1, objective_s=0.02)
    batcher = _trained(Batcher("m", executor, policy), 0.001)
    assert batcher.admission is not None

    async def burst() -> list[BaseException | Arrays]:
        return await asyncio.gather(*(batcher.submit(_rows(i, 1), 1) for i in range(40)), return_exceptions=True)

    initial = batcher.admission.rows
    for _ in range(40):  # every batch takes 30 ms, over the objective: the limit is cut
        asyncio.run(burst())
        if batcher.admission.rows < initial:
            break
    cut = batcher.admission.rows
    assert cut < initial
    executor.delay_s = 0.001  # the deployment is fast again
    assert isinstance(asyncio.run(batcher.submit(_rows(0, 1), 1)), dict)  # an empty deployment always admits
    for _ in range(150):
        asyncio.run(burst())
    assert batcher.admission.rows > cut * 1.5  # the limit grew back with every burst answered in time
    results = asyncio.run(burst())
    assert sum(isinstance(r, dict) for r in results) > 5


def test_max_wait_holds_a_partial_batch_to_collect_more() -> None:
    executor = RecordingExecutor()
    batcher = Batcher("m", executor, BatchPolicy(max_batch_rows=64, max_wait_s=0.05, max_inflight=2))

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(_rows(0, 1), 1))
        await asyncio.sleep(0.01)
        await asyncio.gather(first, batcher.submit(_rows(1, 2), 2))

    asyncio.run(main())
    assert executor.batch_rows == [3]


def test_the_hold_is_reckoned_from_the_first_live_request() -> None:
    """A head whose caller left set the hold of the request behind it: that one waited 0.2 s instead of 0.3 s
    and left without the request that came 0.25 s after it."""
    executor = RecordingExecutor()
    batcher = Batcher("m", executor, BatchPolicy(max_batch_rows=64, max_wait_s=0.3, max_inflight=1))

    async def main() -> None:
        left = asyncio.ensure_future(batcher.submit(_rows(0, 1), 1))
        await asyncio.sleep(0.05)
        left.cancel()
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(batcher.submit(_rows(1, 1), 1))
        await asyncio.sleep(0.25)  # past the dead head's hold (0.3 s), well before the second's (0.4 s)
        await asyncio.gather(second, batcher.submit(_rows(2, 1), 1))

    asyncio.run(main())
    assert executor.batch_rows == [2]


def test_full_batch_leaves_without_waiting() -> None:
    executor = RecordingExecutor()
    batcher = Batcher("m", executor, BatchPolicy(max_batch_rows=4, max_wait_s=10.0, max_inflight=1))

    async def main() -> None:
        await asyncio.wait_for(asyncio.gather(*(batcher.submit(_rows(i, 1), 1) for i in range(4))), timeout=1)

    asyncio.run(main())
    assert executor.batch_rows == [4]


def test_executor_failure_fails_every_request_of_the_batch_cleanly() -> None:
    executor = RecordingExecutor(delay_s=0.002, fail_with=RuntimeError("replica died"))
    batcher = Batcher("model 'm' version '1'", executor, BatchPolicy(64, 0.0, 1))

    async def main() -> list[BaseException | Arrays]:
        return await asyncio.gather(*(batcher.submit(_rows(i, 1), 1) for i in range(5)), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, Unavailable) for r in results)
    assert "model 'm' version '1' failed to execute the batch (RuntimeError)" in str(results[0])
    assert batcher.inflight == 0 and batcher.queued_rows == 0


def test_inference_errors_pass_through_unchanged() -> None:
    batcher = Batcher("m", RecordingExecutor(fail_with=BadRequest("nope")), BatchPolicy(64, 0.0, 1))
    with pytest.raises(BadRequest, match="nope"):
        asyncio.run(batcher.submit(_rows(0, 1), 1))


def test_wrong_output_row_count_is_reported_not_mis_split() -> None:
    async def broken(parts: Parts) -> Arrays:
        return {"y": parts[0]["x"][:1]}

    batcher = Batcher("m", broken, BatchPolicy(64, 0.0, 1))

    async def main() -> None:
        await asyncio.gather(batcher.submit(_rows(0, 2), 2), batcher.submit(_rows(2, 2), 2))

    with pytest.raises(Unavailable, match="returned output 'y' with shape"):
        asyncio.run(main())


def test_a_drain_cut_short_at_shutdown_answers_the_abandoned_batch_with_unavailable() -> None:
    """Shutdown waits for the drain only so long; cancelling it cancels the batches in flight. Their callers, who may
    have no deadline, got nothing before: they waited until their connection was dropped."""
    executor = RecordingExecutor(delay_s=10.0)
    batcher = Batcher("m", executor, BatchPolicy(64, 0.0, 1))

    async def main() -> BaseException | Arrays:
        caller = asyncio.ensure_future(batcher.submit(_rows(0, 1), 1))
        await asyncio.sleep(0.01)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher.drain(), timeout=0.05)
        done, _ = await asyncio.wait([caller], timeout=1.0)
        assert done, "the caller was left waiting"
        return caller.exception() or caller.result()

    outcome = asyncio.run(main())
    assert isinstance(outcome, Unavailable) and "shutting down" in str(outcome)
    assert batcher.inflight == 0


def test_cancelled_requests_are_not_executed() -> None:
    executor = RecordingExecutor(delay_s=0.02)
    batcher = Batcher("m", executor, BatchPolicy(64, 0.0, 1))

    async def main() -> None:
        busy = asyncio.ensure_future(batcher.submit(_rows(0, 1), 1))
        await asyncio.sleep(0.001)
        doomed = asyncio.ensure_future(batcher.submit(_rows(1, 5), 5))
        kept = asyncio.ensure_future(batcher.submit(_rows(6, 2), 2))
        await asyncio.sleep(0.001)
        doomed.cancel()
        await asyncio.gather(busy, kept)
        await batcher.drain()

    asyncio.run(main())
    assert executor.batch_rows == [1, 2]


def test_holds_for_company_while_the_event_loop_runs_late_and_not_when_it_is_on_time() -> None:
    executor = RecordingExecutor()
    policy = BatchPolicy(max_batch_rows=64, max_wait_s=0.0, max_inflight=1, objective_s=0.02)
    batcher = _trained(Batcher("m", executor, policy), 0.001)
    _stream(batcher, rows_per_s=1000)  # 1 ms batches keep up with 1,000 rows/s one row at a time

    async def hold_for(pressure: float) -> float:
        LoopLoad.of(asyncio.get_running_loop()).pressure = pressure  # no tick runs before this returns
        request = asyncio.ensure_future(batcher.submit(_rows(0, 1), 1))
        await asyncio.sleep(0)
        now = time.monotonic()
        held = batcher._hold_until(now) - now if batcher.queued_rows else 0.0
        await request
        return held

    assert batcher.keep_up_rows(time.monotonic()) < 1
    assert asyncio.run(hold_for(0.0)) == 0.0 and executor.batch_rows == [1]  # on time: sent at once
    held = asyncio.run(hold_for(1.0))
    assert 0.002 < held <= 0.005  # late: held for the 5 rows due within a quarter of the objective
    assert executor.batch_rows == [1, 1]  # alone in the end, it still went


def _after(seconds: float) -> float:
    """A deadline ``seconds`` from now, as the protocol layers pass it to the batcher."""
    return time.monotonic() + seconds


def _trained(batcher: Batcher, seconds: float) -> Batcher:
    for rows in (1, 8, 64) * 4:
        batcher.latency.observe(rows, seconds)
    return batcher


def test_request_that_cannot_meet_its_deadline_is_refused_at_once() -> None:
    executor = RecordingExecutor(delay_s=0.02)
    batcher = _trained(Batcher("m", executor, BatchPolicy(64, 0.0, 1, objective_s=1.0)), 0.02)

    async def main() -> Arrays:
        return await batcher.submit(_rows(0, 1), 1, deadline=_after(0.005))

    with pytest.raises(Overloaded, match=r"cannot answer within the request's timeout, [45]\.\d ms from now "
                                         r"\(predicted 20\.0 ms"):
        asyncio.run(main())
    assert executor.batch_rows == []  # refused before it reached the model


def test_a_timeout_longer_than_the_objective_is_not_held_to_the_objective_by_prediction() -> None:
    """The objective is the admission limit's to enforce, for requests with a timeout as for those without; the
    prediction only judges the request's own timeout. Once, a request with a 1 s timeout was refused here for a
    predicted 20 ms against a 5 ms objective, which the same request without a timeout was not."""
    executor = RecordingExecutor(delay_s=0.02)
    batcher = _trained(Batcher("m", executor, BatchPolicy(64, 0.0, 1, objective_s=0.005)), 0.02)

    async def main() -> tuple[Arrays, Arrays]:
        with_timeout = await batcher.submit(_rows(0, 1), 1, deadline=_after(1.0))
        without = await batcher.submit(_rows(1, 1), 1)
        return with_timeout, without

    with_timeout, without = asyncio.run(main())
    np.testing.assert_array_equal(with_timeout["double"], _rows(0, 1)["x"] * 2)
    np.testing.assert_array_equal(without["double"], _rows(1, 1)["x"] * 2)
    assert executor.batch_rows == [1, 1]


def test_request_with_no_time_left_is_refused_even_before_the_model_is_learned() -> None:
    executor = RecordingExecutor(delay_s=0.001)
    batcher = Batcher("m", executor, BatchPolicy(64, 0.0, 1))
    assert batcher.latency.observations == 0

    with pytest.raises(Overloaded, match="none of it was left when the request reached the batcher"):
        asyncio.run(batcher.submit(_rows(0, 1), 1, deadline=time.monotonic()))
    assert executor.batch_rows == []


def test_objective_sheds_load_when_the_queue_would_make_everyone_late() -> None:
    executor = RecordingExecutor(delay_s=0.02)
    policy = BatchPolicy(max_batch_rows=4, max_wait_s=0.0, max_inflight=1, objective_s=0.07)
    batcher = _trained(Batcher("m", executor, policy), 0.02)

    async def main() -> list[BaseException | Arrays]:
        return await asyncio.gather(*(batcher.submit(_rows(i, 1), 1) for i in range(40)), return_exceptions=True)

    started = time.perf_counter()
    results = asyncio.run(main())
    elapsed = time.perf_counter() - started
    refused = [r for r in results if isinstance(r, Overloaded)]
    served = [r for r in results if isinstance(r, dict)]
    assert refused and served and len(refused) + len(served) == 40
    assert all(r.retry_after_s is not None and r.retry_after_s >= 0 for r in refused)
    assert elapsed < 0.07 + 0.05  # every admitted request was answered within the objective (+ tolerance)


def test_a_limit_cut_below_a_large_request_still_lets_one_request_run_per_slot() -> None:
    """Two slots, 40-row requests, the limit cut to 10 rows: while one runs, neither the early shedding (before a
    body is read) nor admission refuses a second; with both slots taken, both refuse a third."""
    executor = RecordingExecutor(delay_s=0.05)
    batcher = Batcher("m", executor, BatchPolicy(max_batch_rows=64, max_wait_s=0.0, max_inflight=2, objective_s=0.2))
    assert batcher.admission is not None
    batcher.admission.rows = 10

    async def main() -> list[BaseException | Arrays]:
        first = asyncio.ensure_future(batcher.submit(_rows(0, 40), 40))
        await asyncio.sleep(0.01)
        batcher.shed_early()
        second = asyncio.ensure_future(batcher.submit(_rows(40, 40), 40))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded, match="80 rows queued or running, limit 10"):
            batcher.shed_early()
        third = asyncio.ensure_future(batcher.submit(_rows(80, 40), 40))
        return await asyncio.gather(first, second, third, return_exceptions=True)

    first, second, third = asyncio.run(main())
    assert isinstance(first, dict) and isinstance(second, dict)
    np.testing.assert_array_equal(second["double"], _rows(40, 40)["x"] * 2)
    assert isinstance(third, Overloaded)
    assert executor.batch_rows == [40, 40]


def test_queue_is_bounded() -> None:
    batcher = Batcher("m", RecordingExecutor(delay_s=0.01), BatchPolicy(8, 0.0, 1, max_queue_rows=10))

    async def main() -> list[BaseException | Arrays]:
        return await asyncio.gather(*(batcher.submit(_rows(0, 4), 4) for _ in range(4)), return_exceptions=True)

    results = asyncio.run(main())
    # the first leaves at once (its slot was free), the next two wait (8 rows), the fourth would make 12
    assert [isinstance(r, Overloaded) for r in results] == [False, False, False, True]
    assert "queue full" in str(next(r for r in results if isinstance(r, Overloaded)))


def test_own_timeout_cuts_off_a_slow_execution_with_504() -> None:
    batcher = Batcher("model 'm' version '1'", RecordingExecutor(delay_s=0.3), BatchPolicy(8, 0.0, 1))
    started = time.perf_counter()

    async def main() -> Arrays:
        return await batcher.submit(_rows(0, 1), 1, deadline=_after(0.05))

    with pytest.raises(DeadlineExceeded, match=r"deadline passed (49\.\d|50\.0) ms after it was queued"):
        asyncio.run(main())
    assert time.perf_counter() - started < 0.2  # answered at its deadline, not when the batch finished


def test_request_expired_while_queued_is_never_executed() -> None:
    executor = RecordingExecutor(delay_s=0.05)
    batcher = Batcher("m", executor, BatchPolicy(8, 0.0, 1))

    async def main() -> list[BaseException | Arrays]:
        busy = batcher.submit(_rows(0, 1), 1)
        doomed = batcher.submit(_rows(1, 3), 3, deadline=_after(0.01))
        results = await asyncio.gather(busy, doomed, return_exceptions=True)
        await batcher.drain()
        return results

    results = asyncio.run(main())
    assert isinstance(results[1], DeadlineExceeded)
    assert executor.batch_rows == [1]


def test_batch_is_capped_so_the_oldest_request_still_meets_its_deadline() -> None:
    policy = BatchPolicy(max_batch_rows=1000, max_wait_s=0.0, max_inflight=1, objective_s=10.0)
    batcher = Batcher("m", RecordingExecutor(), policy)
    for rows in (1, 10, 100) * 10:  # 1 ms + 0.1 ms per row, exactly
        batcher.latency.observe(rows, 1e-3 + 1e-4 * rows)

    async def main() -> int:
        batcher._inflight = policy.max_inflight  # the slot is busy: everything below queues
        tight = asyncio.ensure_future(batcher.submit(_rows(0, 10), 10, deadline=_after(0.0205)))
        rest = [asyncio.ensure_future(batcher.submit(_rows(0, 100), 100)) for _ in range(5)]
        await asyncio.sleep(0)
        batch = batcher._take_batch()  # what the next free slot would carry
        for pending in batch:
            pending.future.cancel()
        for future in (tight, *rest):
            future.cancel()
        return sum(p.rows for p in batch)

    # ~20 ms left for the head: 1 ms fixed + 0.1 ms/row fits 190 rows, so 10 + 100 go and 400 wait
    assert asyncio.run(main()) == 110


def test_warm_up_seeds_the_latency_model_across_batch_sizes_up_to_the_largest() -> None:
    executor = RecordingExecutor()
    batcher = Batcher("m", executor, BatchPolicy(max_batch_rows=1000, max_wait_s=0.0, max_inflight=2))
    asyncio.run(batcher.warm_up(lambda rows: _rows(0, rows), repeats=3, priming=2))
    assert executor.batch_rows[:2] == [1, 1]  # priming calls, not timed
    # at each size, one untimed call per slot (run side by side), then the timed ones
    assert executor.batch_rows[2:] == [size for size in (1, 4, 16, 64, 256, 1000) for _ in range(2 + 3)]
    assert batcher.latency.observations == 6 * 3


def test_warm_up_stops_growing_once_a_batch_takes_long(monkeypatch: pytest.MonkeyPatch) -> None:
    """A heavy model with a large row bound would spend seconds on sizes no plan uses: the sweep stops at the first
    size whose batches take ``WARM_UP_LONGEST_BATCH_S``."""
    monkeypatch.setattr(batcher_module, "WARM_UP_LONGEST_BATCH_S", 0.02)
    timed: list[int] = []

    async def half_a_millisecond_a_row(parts: Parts) -> Arrays:
        rows = sum(len(part["x"]) for part in parts)
        timed.append(rows)
        await asyncio.sleep(rows * 0.0005)
        return {"double": joined(parts)["x"] * 2}

    batcher = Batcher("m", half_a_millisecond_a_row, BatchPolicy(max_batch_rows=65536, max_wait_s=0.0, max_inflight=1))
    asyncio.run(batcher.warm_up(lambda rows: _rows(0, rows), repeats=2, priming=0))
    assert sorted(set(timed)) == [1, 4, 16, 64]  # 64 rows take 32 ms: no 256
    assert batcher.latency.coefficients()[1] == pytest.approx(0.0005, rel=0.3)  # seconds per row


def test_without_objective_or_timeout_nothing_is_refused_or_capped() -> None:
    executor = RecordingExecutor(delay_s=0.01)
    batcher = _trained(Batcher("m", executor, BatchPolicy(max_batch_rows=64, max_wait_s=0.0, max_inflight=1)), 5.0)

    async def main() -> list[Arrays]:
        return await asyncio.gather(*(batcher.submit(_rows(i, 2), 2) for i in range(30)))

    assert len(asyncio.run(main())) == 30  # a model predicting 5 s per batch refuses nothing without deadlines
    assert max(executor.batch_rows) > 2


def test_metrics_count_batches_rows_waits_and_refusals_exactly() -> None:
    from telemetry.metrics import REGISTRY, BatchMetrics

    labels = {"model": "unit-metrics", "version": "1"}
    executor = RecordingExecutor(delay_s=0.005)
    policy = BatchPolicy(max_batch_rows=64, max_wait_s=0.0, max_inflight=1, max_queue_rows=40)
    batcher = Batcher("m", executor, policy, BatchMetrics.for_deployment(**labels))

    async def main() -> list[BaseException | Arrays]:
        return await asyncio.gather(*(batcher.submit(_rows(i, 3), 3) for i in range(16)), return_exceptions=True)

    results = asyncio.run(main())
    refused = sum(isinstance(r, Overloaded) for r in results)
    assert refused == 2  # the first leaves at once, 13 more queue (39 rows), the last two would exceed 40

    def sample(name: str, **extra: str) -> float:
        value = REGISTRY.get_sample_value(name, {**labels, **extra})
        assert value is not None, name
        return value

    assert sample("mlgate_batch_rows_count") == len(executor.batch_rows)
    assert sample("mlgate_batch_rows_sum") == sum(executor.batch_rows) == 3 * (16 - refused)
    assert sample("mlgate_batch_execution_seconds_count") == len(executor.batch_rows)
    assert sample("mlgate_queue_wait_seconds_count") == 16 - refused
    assert sample("mlgate_batcher_rejections_total", reason="queue_full") == refused
    assert sample("mlgate_queued_rows") == 0
    assert sample("mlgate_latency_model_fixed_seconds") > 0


class CountingObserver:
    """What the drift monitor is told: each request exactly once, as answered (with a latency) or failed."""

    def __init__(self) -> None:
        self.answered: list[float] = []
        self.rows = 0
        self.failures = 0

    def batch(self, inputs: Parts, outputs: Arrays, rows: int, latencies_s: np.ndarray) -> None:
        assert len(joined(inputs)["x"]) == rows and len(outputs["double"]) == rows
        self.rows += rows
        self.answered.extend(latencies_s.tolist())

    def failed(self, requests: int) -> None:
        self.failures += requests


def test_observer_hears_of_each_request_once() -> None:
    observer = CountingObserver()
    batcher = Batcher("m", RecordingExecutor(delay_s=0.05), BatchPolicy(64, 0.0, 1), observer=observer)

    async def main() -> list[BaseException | Arrays]:
        timed_out = batcher.submit(_rows(9, 1), 1, deadline=_after(0.01))  # first: gives up while its batch runs
        answered = [batcher.submit(_rows(i, 2), 2) for i in range(3)]
        results = await asyncio.gather(timed_out, *answered, return_exceptions=True)
        await asyncio.sleep(0)  # the observer runs after the callers' callbacks
        return results

    results = asyncio.run(main())
    assert isinstance(results[0], DeadlineExceeded)
    assert len(observer.answered) == 3 and all(0.04 < s < 1.0 for s in observer.answered)
    assert observer.rows == 7  # the model ran every row, the timed-out request's too
    assert observer.failures == 1  # the timed-out request: once, not also as answered

    failing = CountingObserver()
    broken = Batcher("m", RecordingExecutor(fail_with=RuntimeError("down")), BatchPolicy(64, 0.0, 1), observer=failing)

    async def fail_three() -> list[BaseException | Arrays]:
        return await asyncio.gather(*(broken.submit(_rows(i, 1), 1) for i in range(3)), return_exceptions=True)

    assert all(isinstance(r, Unavailable) for r in asyncio.run(fail_three()))
    assert failing.failures == 3 and failing.answered == []


def test_a_round_trip_the_event_loop_delayed_does_not_teach_the_latency_model() -> None:
    """The loop kept busy 80 ms while a 2 ms batch was out (a burst's requests being parsed): that
    round trip timed the gateway's backlog, and a tail margin made of it would refuse good requests."""
    executor = RecordingExecutor(delay_s=0.002)
    batcher = Batcher("m", executor, BatchPolicy(max_batch_rows=64, max_wait_s=0.0, max_inflight=1))

    async def main() -> tuple[int, int]:
        await batcher.submit(_rows(0, 1), 1)
        learned = batcher.latency.observations
        asyncio.get_running_loop().call_later(0.001, time.sleep, 0.08)  # once the batch is out
        await batcher.submit(_rows(0, 1), 1)
        return learned, batcher.latency.observations

    learned, after_stall = asyncio.run(main())
    assert learned == 1  # a clean round trip is learned...
    assert after_stall == 1  # ...the delayed one is not
    assert len(executor.batch_rows) == 2


def test_requests_of_different_shapes_never_share_a_batch() -> None:
    """A model whose input has a variable dimension after the rows (sequences, say) takes requests of different
    widths; their rows cannot be one array, so each batch holds requests of one shape, in arrival order."""
    executor = RecordingExecutor(delay_s=0.005)
    batcher = Batcher("m", executor, BatchPolicy(64, 0.0, 1, variable_shapes=True))
    widths = [3, 3, 5, 5, 5, 3, 2, 2, 3, 5] * 3
    requests = [{"x": np.full((2, width), float(i), np.float32)} for i, width in enumerate(widths)]

    async def main() -> list[Arrays]:
        return await asyncio.gather(*(batcher.submit(inputs, 2) for inputs in requests))

    for inputs, result in zip(requests, asyncio.run(main()), strict=True):
        np.testing.assert_array_equal(result["double"], inputs["x"] * 2)
    assert len(executor.parts) == len(requests)
    runs = 1 + sum(a != b for a, b in itertools.pairwise(widths))  # 18 runs of one width
    # a batch per run, and the first request's own (it went at once, alone): alike neighbours were grouped
    assert len(executor.batch_rows) <= runs + 1, executor.batch_rows


def test_a_request_whose_caller_left_does_not_end_a_batch() -> None:
    """A cancelled request is dropped from the queue whatever its shape and rows: before, one of another width, or
    too many rows for the batch, between two requests that could share a batch split them."""
    executor = RecordingExecutor(delay_s=0.02)
    batcher = Batcher("m", executor, BatchPolicy(8, 0.0, 1, variable_shapes=True))

    async def main() -> None:
        busy = asyncio.ensure_future(batcher.submit(_rows(0, 1), 1))  # occupies the one slot
        await asyncio.sleep(0.001)
        first = asyncio.ensure_future(batcher.submit(_rows(1, 2), 2))
        wider = asyncio.ensure_future(batcher.submit({"x": np.zeros((2, 5), np.float32)}, 2))
        larger = asyncio.ensure_future(batcher.submit(_rows(3, 7), 7))
        second = asyncio.ensure_future(batcher.submit(_rows(10, 2), 2))
        await asyncio.sleep(0.001)
        wider.cancel()
        larger.cancel()
        await asyncio.gather(busy, first, second)

    asyncio.run(main())
    assert executor.batch_rows == [1, 4]
