"""The batcher's grouping and splitting, with an in-process executor standing in for the Ray hop.

The executor here is a real function over numpy arrays (it doubles its input and
records the batches it saw), so these tests check the batcher's own logic:
who gets which rows, when a batch leaves, what happens on failure. The Ray path
itself is covered end to end in test_concurrency.py.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from gateway.batcher import Arrays, Batcher, BatchPolicy
from gateway.errors import BadRequest, Unavailable


class RecordingExecutor:
    def __init__(self, delay_s: float = 0.0, fail_with: Exception | None = None) -> None:
        self.delay_s = delay_s
        self.fail_with = fail_with
        self.batch_rows: list[int] = []

    async def __call__(self, inputs: Arrays) -> Arrays:
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

    async def main() -> list[Arrays]:
        starts = np.cumsum([0, *sizes[:-1]])
        return await asyncio.gather(*(batcher.submit(_rows(int(s), n), n) for s, n in zip(starts, sizes, strict=True)))

    results = asyncio.run(main())
    start = 0
    for size, result in zip(sizes, results, strict=True):
        np.testing.assert_array_equal(result["double"], _rows(start, size)["x"] * 2)
        np.testing.assert_array_equal(result["first"], _rows(start, size)["x"][:, 0])
        start += size
    assert sum(executor.batch_rows) == sum(sizes)
    assert len(executor.batch_rows) < len(sizes) / 4, executor.batch_rows  # they really were grouped
    assert max(executor.batch_rows) <= 64


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


def test_max_wait_holds_a_partial_batch_to_collect_more() -> None:
    executor = RecordingExecutor()
    batcher = Batcher("m", executor, BatchPolicy(max_batch_rows=64, max_wait_s=0.05, max_inflight=2))

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(_rows(0, 1), 1))
        await asyncio.sleep(0.01)
        await asyncio.gather(first, batcher.submit(_rows(1, 2), 2))

    asyncio.run(main())
    assert executor.batch_rows == [3]


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
    async def broken(inputs: Arrays) -> Arrays:
        return {"y": inputs["x"][:1]}

    batcher = Batcher("m", broken, BatchPolicy(64, 0.0, 1))

    async def main() -> None:
        await asyncio.gather(batcher.submit(_rows(0, 2), 2), batcher.submit(_rows(2, 2), 2))

    with pytest.raises(Unavailable, match="returned output 'y' with shape"):
        asyncio.run(main())


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
