"""Group concurrent requests for one deployment into one call per batch.

A Ray call costs milliseconds of CPU while the model costs microseconds
(docs/architecture.md), so the gateway batches *before* the Ray hop. The
policy here is work-conserving: whenever an execution slot is free, everything
queued (up to ``max_batch_rows``) goes out at once, so a lone request at low
load never waits; under load the slots are busy, requests pile up, and each
free slot takes a larger batch. ``max_wait_s`` optionally holds a partial
batch back while slots are free, for models where bigger batches pay more than
the wait costs.

A request may have a deadline: its own (OIP ``timeout`` parameter or gRPC
deadline), or the deployment's latency objective if one is configured. An
online latency model (``LatencyModel``, seeded by a warm-up sweep) predicts
when the request would finish given the work ahead of it; a request that
cannot make its deadline is refused at once (429 with Retry-After) instead of
queueing and making everyone late, and a batch is capped at the rows that
still let its oldest request finish in time. A request that set its own
timeout and runs out of it gets 504; it is dropped before execution if it
expires while queued.

Everything runs on the event loop: no locks, no threads. Requests keep their
own row counts; a batch is the concatenation of their rows and the outputs are
split back by row offsets (views, not copies).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from gateway.errors import DeadlineExceeded, InferenceError, Overloaded, Unavailable
from gateway.latency_model import LatencyModel
from telemetry.metrics import BatchMetrics

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
BatchExecutor = Callable[[Arrays], Awaitable[Arrays]]
"""Runs one batch on a model deployment: named input arrays in, named output arrays out."""


MIN_OBSERVATIONS = 8
"""Batches the latency model must have seen before it may refuse requests (the warm-up provides them)."""


@dataclass(slots=True)
class _Pending:
    inputs: Arrays
    rows: int
    future: asyncio.Future[Arrays]
    deadline: float
    enqueued_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_rows: int
    max_wait_s: float
    max_inflight: int
    objective_s: float | None = None
    """Latency objective: the deadline of requests that set none; None = such requests have no deadline."""
    max_queue_rows: int = 65536


class Batcher:
    """Queue and dispatcher for one model deployment."""

    def __init__(self, label: str, execute: BatchExecutor, policy: BatchPolicy,
                 metrics: BatchMetrics | None = None) -> None:
        self.label = label
        self._metrics = metrics
        if metrics is not None:
            metrics.queued_rows.set_function(lambda: self._queued_rows)  # read at scrape time, free here
        self._execute = execute
        self._policy = policy
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._inflight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight_finish: dict[asyncio.Task[None], float] = {}
        self.latency = LatencyModel()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def inflight(self) -> int:
        return self._inflight

    async def submit(self, inputs: Arrays, rows: int, timeout_s: float | None = None) -> Arrays:
        """Queue one request's rows and wait for its own slice of the batch's outputs.

        ``timeout_s`` is the caller's own time budget; without one the latency objective applies
        to admission and batch sizing, but the request is never cut off.
        """
        now = time.monotonic()
        objective = self._policy.objective_s
        budgets = [b for b in (timeout_s, objective) if b is not None]
        deadline = now + min(budgets) if budgets else math.inf
        self._admit(rows, now, deadline)
        future: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(inputs, rows, future, deadline, now))
        self._queued_rows += rows
        self._dispatch()
        if timeout_s is None:
            return await future
        try:
            return await asyncio.wait_for(future, timeout=max(0.0, now + timeout_s - time.monotonic()))
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            self._count_rejection("expired")
            raise DeadlineExceeded(
                f"{self.label}: the request's deadline of {timeout_s * 1e3:.1f} ms passed before it was answered"
            ) from None

    def _admit(self, rows: int, now: float, deadline: float) -> None:
        """Refuse at once what cannot finish in time, rather than queue it and delay everyone behind it.

        An idle deployment (nothing queued, a slot free) admits whatever could finish alone by the
        model's mean: the tail margin may be stale, and only executed batches refresh it — a
        deployment that refused everything would never learn that it has recovered.
        """
        policy = self._policy
        if self._queued_rows + rows > policy.max_queue_rows:
            self._count_rejection("queue_full")
            raise Overloaded(f"{self.label}: queue full ({self._queued_rows} rows waiting)",
                             retry_after_s=self.latency.bound(policy.max_batch_rows))
        if deadline == math.inf or self.latency.observations < MIN_OBSERVATIONS:
            return
        idle = not self._queue and self._inflight < policy.max_inflight
        finish = now + self.latency.mean(rows) if idle else self._predicted_finish(rows, now)
        if finish > deadline:
            self._count_rejection("deadline")
            raise Overloaded(
                f"{self.label}: cannot answer within {(deadline - now) * 1e3:.1f} ms "
                f"(predicted {(finish - now) * 1e3:.1f} ms with {self._queued_rows} rows queued)",
                retry_after_s=max(0.0, finish - deadline),
            )

    def _count_rejection(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.rejections[reason].inc()

    def shed_early(self) -> None:
        """Refuse before the request is even read when a one-row request without a timeout would miss
        the objective: under heavy overload, reading and parsing requests only to refuse them is
        what takes a gateway down."""
        objective = self._policy.objective_s
        if objective is not None and self._queue and self.latency.observations >= MIN_OBSERVATIONS:
            now = time.monotonic()
            self._admit(1, now, now + objective)

    def _predicted_finish(self, rows: int, now: float) -> float:
        """When a request of ``rows`` joining the queue now would be answered, by the latency model."""
        policy = self._policy
        start = now
        if self._inflight >= policy.max_inflight and self._inflight_finish:
            start = max(now, min(self._inflight_finish.values()))
        total = self._queued_rows + rows
        batches = -(-total // policy.max_batch_rows)
        return start + batches * self.latency.bound(min(total, policy.max_batch_rows))

    async def warm_up(self, make_inputs: Callable[[int], Arrays], repeats: int = 3, priming: int = 3) -> None:
        """Seed the latency model with a sweep of batch sizes before the deployment takes traffic.

        The first calls to a new replica are slow for reasons that never recur (session first run,
        channel set-up); ``priming`` untimed calls keep them out of the model.
        """
        for _ in range(priming):
            await self._execute(make_inputs(1))
        size = 1
        while True:
            rows = min(size, self._policy.max_batch_rows)
            inputs = make_inputs(rows)
            for _ in range(repeats):
                started = time.monotonic()
                await self._execute(inputs)
                self.latency.observe(rows, time.monotonic() - started)
            if rows >= min(self._policy.max_batch_rows, 256):
                return
            size *= 4

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
            self._inflight_finish[task] = time.monotonic() + self.latency.bound(sum(p.rows for p in batch))
            task.add_done_callback(self._forget)

    def _arm_timer(self, deadline: float) -> None:
        if self._timer is None:
            delay = max(0.0, deadline - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._inflight_finish.pop(task, None)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _take_batch(self) -> list[_Pending]:
        """Pop requests in arrival order while the batch still lets its oldest member finish in time.

        The row budget is the smaller of ``max_batch_rows`` and what the latency model says fits
        before the head request's deadline — unless the head would be late even alone: then
        shrinking the batch would only cut throughput and make everyone behind it late too (the
        death spiral of deadline scheduling under overload), so the batch is full-sized and
        admission control sheds the excess. The head always goes, even alone above the budget.
        Requests whose callers went away, or whose deadlines already passed, are dropped here.
        """
        now = time.monotonic()
        budget = self._policy.max_batch_rows
        batch: list[_Pending] = []
        rows = 0
        while self._queue:
            head = self._queue[0]
            if batch and rows + head.rows > budget:
                break
            self._queue.popleft()
            self._queued_rows -= head.rows
            if head.future.done():
                continue
            if not batch and head.deadline < math.inf and self.latency.observations >= MIN_OBSERVATIONS:
                fits = self.latency.rows_within(head.deadline - now, budget)
                if fits >= head.rows:
                    budget = fits
            batch.append(head)
            rows += head.rows
        if self._metrics is not None:
            for pending in batch:
                self._metrics.queue_wait.observe(now - pending.enqueued_at)
        return batch

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            total_rows = sum(p.rows for p in batch)
            started = time.monotonic()
            outputs = await self._execute(_concatenate(batch))
            elapsed = time.monotonic() - started
            self.latency.observe(total_rows, elapsed)
            self._record_batch(total_rows, elapsed)
            _scatter(self.label, batch, outputs, total_rows)
        except InferenceError as exc:
            _fail(batch, exc)
        except Exception as exc:  # a replica crash or a Ray error: the caller learns the model failed
            log.exception("batch of %d request(s) on %s failed", len(batch), self.label)
            _fail(batch, Unavailable(f"{self.label} failed to execute the batch ({type(exc).__name__})"))
        finally:
            self._inflight -= 1
            self._dispatch()

    def _record_batch(self, rows: int, seconds: float) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        metrics.batch_rows.observe(rows)
        metrics.batch_execution.observe(seconds)
        fixed_s, per_row_s = self.latency.coefficients()
        metrics.model_fixed.set(fixed_s)
        metrics.model_per_row.set(per_row_s)

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
