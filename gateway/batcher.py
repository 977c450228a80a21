"""Group concurrent requests for one deployment into one call per batch.

A Ray call costs milliseconds of CPU while the model costs microseconds
(docs/architecture.md), so the gateway batches *before* the Ray hop. The
policy here is work-conserving: whenever an execution slot is free, everything
queued (up to ``max_batch_rows``) goes out at once, so a lone request at low
load never waits; under load the slots are busy, requests pile up, and each
free slot takes a larger batch. ``max_wait_s`` optionally holds a partial
batch back while slots are free, for models where bigger batches pay more than
the wait costs.

Everything runs on the event loop: no locks, no threads. Requests keep their
own row counts; a batch is the concatenation of their rows and the outputs are
split back by row offsets (views, not copies).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from gateway.errors import InferenceError, Unavailable

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
BatchExecutor = Callable[[Arrays], Awaitable[Arrays]]
"""Runs one batch on a model deployment: named input arrays in, named output arrays out."""


@dataclass(slots=True)
class _Pending:
    inputs: Arrays
    rows: int
    future: asyncio.Future[Arrays]
    enqueued_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_rows: int
    max_wait_s: float
    max_inflight: int


class Batcher:
    """Queue and dispatcher for one model deployment."""

    def __init__(self, label: str, execute: BatchExecutor, policy: BatchPolicy) -> None:
        self.label = label
        self._execute = execute
        self._policy = policy
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._inflight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def inflight(self) -> int:
        return self._inflight

    async def submit(self, inputs: Arrays, rows: int) -> Arrays:
        """Queue one request's rows and wait for its own slice of the batch's outputs."""
        future: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(inputs, rows, future))
        self._queued_rows += rows
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        policy = self._policy
        while self._queue and self._inflight < policy.max_inflight:
            if policy.max_wait_s > 0 and self._queued_rows < policy.max_batch_rows:
                deadline = self._queue[0].enqueued_at + policy.max_wait_s
                if time.monotonic() < deadline:
                    self._arm_timer(deadline)
                    return
            batch = self._take_batch()
            if not batch:
                continue
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _arm_timer(self, deadline: float) -> None:
        if self._timer is None:
            delay = max(0.0, deadline - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _take_batch(self) -> list[_Pending]:
        """Pop requests in arrival order until the next one would overflow the row budget.

        The first request always goes, even alone above the budget: it was admitted
        against the model's own maximum, and holding it back would starve it.
        Requests whose callers went away are dropped here rather than executed.
        """
        batch: list[_Pending] = []
        rows = 0
        while self._queue:
            head = self._queue[0]
            if batch and rows + head.rows > self._policy.max_batch_rows:
                break
            self._queue.popleft()
            self._queued_rows -= head.rows
            if head.future.done():
                continue
            batch.append(head)
            rows += head.rows
        return batch

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            total_rows = sum(p.rows for p in batch)
            outputs = await self._execute(_concatenate(batch))
            _scatter(self.label, batch, outputs, total_rows)
        except InferenceError as exc:
            _fail(batch, exc)
        except Exception as exc:  # a replica crash or a Ray error: the caller learns the model failed
            log.exception("batch of %d request(s) on %s failed", len(batch), self.label)
            _fail(batch, Unavailable(f"{self.label} failed to execute the batch ({type(exc).__name__})"))
        finally:
            self._inflight -= 1
            self._dispatch()

    async def drain(self) -> None:
        """Wait until every queued and in-flight batch has finished (graceful shutdown)."""
        while self._queue or self._tasks:
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            else:
                await asyncio.sleep(0.001)


def _concatenate(batch: list[_Pending]) -> Arrays:
    if len(batch) == 1:
        return batch[0].inputs
    names = batch[0].inputs.keys()
    return {name: np.concatenate([p.inputs[name] for p in batch]) for name in names}


def _scatter(label: str, batch: list[_Pending], outputs: Arrays, total_rows: int) -> None:
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total_rows:
            raise Unavailable(
                f"{label} returned output '{name}' with shape {list(array.shape)} for a batch of {total_rows} rows"
            )
    offset = 0
    for pending in batch:
        end = offset + pending.rows
        if not pending.future.done():
            pending.future.set_result({name: array[offset:end] for name, array in outputs.items()})
        offset = end


def _fail(batch: list[_Pending], exc: InferenceError) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(exc)
