"""Group concurrent requests for one deployment into one call per batch.

A Ray call costs milliseconds of CPU while the model costs microseconds
(docs/architecture.md), so the gateway batches *before* the Ray hop.

Dispatch is work-conserving: whenever an execution slot is free, what is
queued (up to ``max_batch_rows``) goes out, so a lone request at low load never
waits; under load the slots are busy, requests pile up, and each free slot
takes a larger batch. It waits for more requests only when waiting pays: when
the queue holds fewer rows than the batch size the deployment needs to keep up
with the current arrival rate (``keep_up_rows``: with ``S`` slots and batches
costing ``a + b·n``, it keeps up with ``λ`` rows/s only if
``S·n / (a + b·n) ≥ λ``), or when the process's event loop runs late
(``LoopLoad``: every Ray call saved is CPU for everyone), and the oldest
request's deadline leaves room. At low load that size is below one row and the
loop is on time, so nothing waits. ``max_wait_s`` instead
fixes the wait, as Triton and Ray Serve do; it exists for comparison
(loadtests/bench_batching.py).

A request may have a deadline of its own (OIP ``timeout`` parameter or gRPC
deadline); a deployment may have a latency objective. The online latency model
(``LatencyModel``, seeded by a warm-up sweep) predicts when a request joining
the queue would be answered (the rows ahead drain in batches through ``S``
slots, then its own batch runs, tail-bounded); a request that cannot make its
own deadline is refused at once (429 with Retry-After) instead of queueing and
making everyone late, and a batch is capped at the rows that still let its
oldest request make its own deadline. The objective is enforced by an
admission limit on rows in the system (``AdmissionLimit``), which follows what
requests actually experienced. A request that runs out of its own time gets
504; it is dropped before execution if it expires while queued.

Everything runs on the event loop: no locks, no threads. Requests keep their
own row counts; a batch is their rows in queue order, handed to the executor
request by request (it joins them where it copies them anyway), and the outputs
are split back by row offsets (views, not copies).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from gateway.admission import AdmissionLimit
from gateway.arrivals import ArrivalRate
from gateway.errors import DeadlineExceeded, DeadlineUnreachable, InferenceError, Overloaded, Unavailable
from gateway.latency_model import LatencyModel
from gateway.loop_load import LoopLoad
from serving.batch_inputs import Arrays, BatchExecutor, Parts
from telemetry.metrics import BatchMetrics
from telemetry.tracing import BatchTracer, RequestTrace

log = logging.getLogger(__name__)

class BatchObserver(Protocol):
    """Told about every executed batch, after its callers have their answers (the drift monitor)."""

    def batch(self, inputs: Parts, outputs: Arrays, rows: int, latencies_s: np.ndarray) -> None:
        """``inputs``: each request's, as the executor had them; ``latencies_s``: each answered request's time
        from queueing to its answer (one entry per request)."""

    def failed(self, requests: int) -> None:
        """Requests that got no answer: their batch failed, or their deadline passed in the queue."""


FAILURE_LOG_INTERVAL_S = 10.0
"""Most often a deployment's failing batches are logged with their traceback."""

MIN_OBSERVATIONS = 8
"""Batches the latency model must have seen before it may refuse requests (the warm-up provides them)."""

MAX_LOOP_SHARE = 0.5
"""A batch whose round trip was more than this share the event loop running late is kept out of the
latency model: it timed the gateway's own backlog, not the deployment. Once, 300 requests of 64 rows
arrived together and kept the loop busy while two batches were out; their round trips (~130 ms, by the
margin they left) became the tail margin, and 0.3 s later requests with 40-130 ms timeouts were refused
as unreachable with nothing queued (predicted 133 ms) although the rest of that burst was answered
within 31 ms (tests/test_batching_e2e.py: 4 failures in 8 runs before, none in 8 after). The backlog
is the admission limit's concern."""

WARM_UP_LONGEST_BATCH_S = 0.1
"""The warm-up sweep stops growing its batches once one takes this long, so that a heavy model with a large row
bound warms up in seconds: the wide demo model, allowed 16,384 rows, stops at 4,096, whose batches took 0.13-0.14 s
on the 2-core box. Beyond it the model extrapolates, linear in rows: it predicted 0.85x of the wide model's measured
time at 16,384 rows."""

HOLD_BUDGET_S = 0.005
"""Longest a partial batch is held for a starved event loop when the deployment has no objective; with
one, a quarter of it (the rest is left for the queue ahead and the execution)."""


@dataclass(slots=True)
class _Pending:
    inputs: Arrays
    rows: int
    future: asyncio.Future[Arrays]
    deadline: float
    """The caller's own deadline (inf if it set none): batches are capped for it. The objective is
    not: under overload, batches capped to fit it shrink, the gateway's CPU goes to Ray calls
    instead of rows, and throughput collapses (measured); the admission limit enforces it instead."""
    enqueued_at: float
    trace: RequestTrace | None = None
    """Set when the request is traced and recorded: its batch writes the request's queue and execute spans."""


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_rows: int
    max_wait_s: float
    max_inflight: int
    objective_s: float | None = None
    """Latency objective (p99 target): the admission limit's, and the longest a partial batch's head waits for
    company; None = no admission against it. It never cuts a request off: only a request's own deadline does."""
    max_queue_rows: int = 65536
    variable_shapes: bool = False
    """Some input has a variable dimension after the rows: then only requests whose inputs agree on their shapes
    share a batch (their rows could not be one array), consecutive ones in arrival order, as Triton batches
    without ragged batching. Off, nobody pays for the check."""


class Batcher:
    """Queue and dispatcher for one model deployment."""

    def __init__(self, label: str, execute: BatchExecutor, policy: BatchPolicy,
                 metrics: BatchMetrics | None = None, observer: BatchObserver | None = None,
                 tracing: BatchTracer | None = None) -> None:
        self.label = label
        self._metrics = metrics
        self.observer = observer
        self.tracing = tracing
        """None when tracing is off: then batches look at no request's trace."""
        if metrics is not None:
            metrics.track_queued_rows(lambda: self._queued_rows)  # read when exported, free here
        self._execute = execute
        self._policy = policy
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._inflight = 0
        self._inflight_rows = 0
        self._inflight_requests = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight_finish: dict[asyncio.Task[None], float] = {}
        self._failure_logged_at = -math.inf
        self._failures_unlogged = 0
        self.latency = LatencyModel()
        self.arrivals = ArrivalRate(now=time.monotonic())
        self._hold_budget_s = HOLD_BUDGET_S if policy.objective_s is None else policy.objective_s / 4
        self.admission: AdmissionLimit | None = None
        if policy.objective_s is not None:
            slots = policy.max_inflight
            admission = self.admission = AdmissionLimit(policy.objective_s, slots * policy.max_batch_rows, slots)
            if metrics is not None:
                metrics.track_admission_limit(lambda: admission.rows)

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def inflight(self) -> int:
        return self._inflight

    async def submit(self, inputs: Arrays, rows: int, deadline: float | None = None,
                     trace: RequestTrace | None = None) -> Arrays:
        """Queue one request's rows and wait for its own slice of the batch's outputs.

        ``deadline`` (``time.monotonic()``) is when the caller's own time budget runs out (already
        past: refused at once); without one the request is never cut off. The latency objective
        applies either way, through the admission limit and the hold, never as a deadline. The
        caller's layers pass the one deadline down as it is, so time spent before the batcher
        (reading, decoding, routing) counts against it.
        ``trace``: the recorded request (or shadow call) whose spans its batch writes; kept on the
        queued entry, because the batch runs in a task of its own.
        """
        now = time.monotonic()
        own_deadline = math.inf if deadline is None else deadline
        self._admit(rows, now, own_deadline)
        future: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(inputs, rows, future, own_deadline, now, trace))
        self._queued_rows += rows
        self.arrivals.add(rows, now)
        self._dispatch()
        if deadline is None:
            return await future
        try:
            return await asyncio.wait_for(future, timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            self._count_rejection("expired")
            if self.observer is not None:
                self.observer.failed(1)
            raise DeadlineExceeded(
                f"{self.label}: the request's deadline passed {(deadline - now) * 1e3:.1f} ms after it was queued, "
                "before it was answered"
            ) from None

    def _admit(self, rows: int, now: float, own_deadline: float) -> None:
        """Refuse at once what would not be answered in time, rather than queue it and delay everyone.

        Against the latency objective, the admission limit decides (``AdmissionLimit``: what
        requests actually experienced, robust when the gateway itself is the bottleneck). Against a
        request's own timeout, the latency model predicts: from the queue when the deployment is
        busy, from the request's own execution alone (no tail margin) when it is idle.
        """
        policy = self._policy
        if self._queued_rows + rows > policy.max_queue_rows:
            self._count_rejection("queue_full")
            raise Overloaded(f"{self.label}: queue full ({self._queued_rows} rows waiting)",
                             retry_after_s=self.latency.bound(policy.max_batch_rows))
        self._check_objective(rows)
        if own_deadline <= now:  # spent before the request got here (the deadline counts from its arrival)
            self._count_rejection("deadline")
            raise DeadlineUnreachable(f"{self.label}: cannot answer within the request's timeout: none of it was "
                                      "left when the request reached the batcher", retry_after_s=0.0)
        if own_deadline == math.inf or self.latency.observations < MIN_OBSERVATIONS:
            return
        if self._queue or self._inflight >= policy.max_inflight:
            finish = self._predicted_finish(rows, now)
        else:
            finish = now + self.latency.mean(rows)
        if finish > own_deadline:
            self._count_rejection("deadline")
            raise DeadlineUnreachable(
                f"{self.label}: cannot answer within the request's timeout, {(own_deadline - now) * 1e3:.1f} ms "
                f"from now (predicted {(finish - now) * 1e3:.1f} ms with {self._queued_rows} rows queued)",
                retry_after_s=max(0.0, finish - own_deadline),
            )

    def _check_objective(self, rows: int) -> None:
        admission = self.admission
        if admission is None:
            return
        in_system = self._queued_rows + self._inflight_rows
        if not admission.admits(in_system, rows, len(self._queue) + self._inflight_requests):
            self._count_rejection("objective")
            raise Overloaded(
                f"{self.label}: at its limit for a {admission.objective_s * 1e3:g} ms latency objective "
                f"({in_system} rows queued or running, limit {admission.rows:.0f})",
                retry_after_s=admission.objective_s,
            )

    def count_late_answer(self) -> None:
        """A request whose batch came back in time, but whose caller resumed after its deadline and answers 504:
        counted as ``expired`` too, so that the refusals by reason add up to the 504s callers were sent."""
        self._count_rejection("expired")

    def _count_rejection(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.rejections[reason].inc()

    def shed_early(self) -> None:
        """Refuse before the request is even read when the deployment is at its objective's limit:
        under heavy overload, reading and parsing requests only to refuse them is what takes a
        gateway down."""
        self._check_objective(1)

    def _predicted_finish(self, rows: int, now: float) -> float:
        """When a request of ``rows`` joining the queue now would be answered, by the latency model.

        The rows ahead drain in batches of up to ``max_batch_rows`` through ``max_inflight`` slots
        side by side; the request's own batch starts when its round comes (or when the first busy
        slot frees) and takes the tail bound once. Charging the tail margin to every batch ahead
        instead would count the same bad luck many times and refuse work the deployment can do.
        """
        policy = self._policy
        ahead = self._queued_rows + rows
        size = min(ahead, policy.max_batch_rows)
        rounds_ahead = (-(-ahead // size) - 1) // policy.max_inflight
        start = now
        if self._inflight >= policy.max_inflight and self._inflight_finish:
            start = max(now, min(self._inflight_finish.values()))
        return start + rounds_ahead * self.latency.mean(size) + self.latency.bound(size)

    def keep_up_rows(self, now: float) -> float:
        """The batch size at which the slots keep up with the current arrival rate (0 when idle).

        ``max_inflight`` slots running batches of ``n`` rows that take ``a + b·n`` serve
        ``S·n / (a + b·n)`` rows/s; solving for the arrival rate ``λ`` gives ``n = λa / (S - λb)``.
        If even the largest batch cannot keep up, it is ``max_batch_rows``.
        """
        rate = self.arrivals.rows_per_second(now)
        fixed_s, per_row_s = self.latency.coefficients()
        spare = self._policy.max_inflight - rate * per_row_s
        if spare <= 0.0:
            return float(self._policy.max_batch_rows)
        return min(float(self._policy.max_batch_rows), rate * fixed_s / spare)

    def _hold_until(self, now: float) -> float:
        """Until when the partial batch at the head of the queue waits for company (``now`` = go).

        With a fixed ``max_wait_s`` it waits that long unless the batch is full. Otherwise it waits
        only when waiting pays: the queue holds fewer rows than ``keep_up_rows`` (the slots would fall
        behind), or the event loop runs late (``LoopLoad``: the gateway's CPU is the bottleneck, and
        every call saved is CPU for everyone) and more rows are expected within the hold that the
        loop's pressure allows. It waits only as long as the rows should take to arrive, no longer
        than such a batch takes to run or the hold, and never past the point where the head request
        could no longer make its deadline.
        """
        policy = self._policy
        head = self._queue[0]
        if policy.max_wait_s > 0:
            return now if self._queued_rows >= policy.max_batch_rows else head.enqueued_at + policy.max_wait_s
        if self.latency.observations < MIN_OBSERVATIONS:
            return now
        rate = self.arrivals.rows_per_second(now)
        wanted = self.keep_up_rows(now)
        hold_s = LoopLoad.of(asyncio.get_running_loop()).pressure * self._hold_budget_s
        if hold_s > 0.0:
            wanted = min(float(policy.max_batch_rows), max(wanted, rate * hold_s))
        if self.admission is not None:  # never wait for rows the admission limit would refuse
            wanted = min(wanted, self.admission.rows - self._inflight_rows)
        missing = wanted - self._queued_rows
        if missing <= 0:
            return now
        size = min(policy.max_batch_rows, math.ceil(wanted))
        deadline = head.deadline
        if policy.objective_s is not None:
            deadline = min(deadline, head.enqueued_at + policy.objective_s)
        latest = min(head.enqueued_at + max(self.latency.mean(size), hold_s), deadline - self.latency.bound(size))
        return min(latest, now + missing / rate)

    async def warm_up(self, make_inputs: Callable[[int], Arrays], repeats: int = 3, priming: int = 3,
                      execute: BatchExecutor | None = None) -> None:
        """Seed the latency model with a sweep of batch sizes before the deployment takes traffic.

        The first calls to a new replica are slow for reasons that never recur (session first run,
        channel set-up); ``priming`` untimed calls keep them out of the model, and so does one untimed
        round at each new size, run ``max_inflight`` at once as traffic will run them (in ONNX Runtime alone,
        a first batch of 16,384 rows on the champion took 2.0 ms, the fourth and fifth 1.5). Sizes grow
        fourfold up to the largest batch the deployment may run, or until one takes ``WARM_UP_LONGEST_BATCH_S``: a sweep
        that stopped at 256 rows left the champion's per-row cost at 0 (its fixed cost hid it), and the
        model predicted 0.22 ms for a 16,384-row batch that took 2.35. ``execute`` replaces the batch
        executor for these calls (the deployment's warm-up entry point).
        """
        run = execute or self._execute
        for _ in range(priming):
            await run([make_inputs(1)])
        size = 1
        while True:
            rows = min(size, self._policy.max_batch_rows)
            inputs = [make_inputs(rows)]
            await asyncio.gather(*(run(inputs) for _ in range(self._policy.max_inflight)))
            longest = 0.0
            for _ in range(repeats):
                started = time.monotonic()
                await run(inputs)
                took = time.monotonic() - started
                self.latency.observe(rows, took)
                longest = max(longest, took)
            if rows >= self._policy.max_batch_rows or longest >= WARM_UP_LONGEST_BATCH_S:
                break
            size *= 4
        if self.admission is not None:  # start from what the warmed-up model says fits the objective
            slots = self._policy.max_inflight
            self.admission.rows = max(self.admission.floor_rows,
                                      slots * self.latency.rows_within(self.admission.objective_s / 2,
                                                                       self._policy.max_batch_rows))

    def _dispatch(self) -> None:
        policy = self._policy
        while self._inflight < policy.max_inflight and self._drop_dead_heads():
            now = time.monotonic()
            hold_until = self._hold_until(now)
            if hold_until > now:
                self._arm_timer(hold_until)
                return
            batch = self._take_batch()
            if not batch:
                continue
            rows = sum(p.rows for p in batch)
            self._inflight += 1
            self._inflight_rows += rows
            self._inflight_requests += len(batch)
            task = asyncio.get_running_loop().create_task(self._run(batch, rows))
            self._tasks.add(task)
            self._inflight_finish[task] = now + self.latency.mean(rows)
            task.add_done_callback(self._forget)

    def _drop_dead_heads(self) -> bool:
        """Drop the requests at the head of the queue whose callers went away (or ran out of time); whether a live
        one is left. The hold is reckoned from the head's arrival and deadline: a dead head's would cut the wait of
        the live request behind it short."""
        queue = self._queue
        while queue and queue[0].future.done():
            self._queued_rows -= queue.popleft().rows
        return bool(queue)

    def _arm_timer(self, at: float) -> None:
        if self._timer is not None:
            if self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_later(max(0.0, at - time.monotonic()), self._on_timer)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._inflight_finish.pop(task, None)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
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
        shapes: list[tuple[int, ...]] | None = None
        while self._queue:
            head = self._queue[0]
            if not head.future.done():  # else dropped, whatever its rows and shapes: they must not end the batch
                if batch and rows + head.rows > budget:
                    break
                if shapes is not None and _trailing_shapes(head.inputs) != shapes:
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
            if shapes is None and self._policy.variable_shapes:
                shapes = _trailing_shapes(head.inputs)
        if self._metrics is not None:
            for pending in batch:
                self._metrics.queue_wait.observe(now - pending.enqueued_at)
        return batch

    async def _run(self, batch: list[_Pending], total_rows: int) -> None:
        outcome: InferenceError | None = None
        loop_load = LoopLoad.of(asyncio.get_running_loop())
        started, late_before = time.monotonic(), loop_load.late_clock()
        try:
            inputs = [p.inputs for p in batch]
            outputs = await self._execute(inputs)
            finished = time.monotonic()
            elapsed = finished - started
            if loop_load.late_clock() - late_before <= elapsed * MAX_LOOP_SHARE:
                self.latency.observe(total_rows, elapsed)
            self._record_batch(total_rows, elapsed)
            waiting = [p for p in batch if not p.future.done()]  # the others timed out: counted in submit
            _scatter(self.label, batch, outputs, total_rows)
            if self.admission is not None:
                self._steer_admission(self.admission, waiting, total_rows, finished)
        except InferenceError as exc:
            outcome = exc
        except asyncio.CancelledError:  # a drain that ran out of grace at shutdown: its callers get 503, not silence
            _fail(batch, Unavailable(f"{self.label}: the gateway is shutting down; the batch was abandoned"))
            raise
        except Exception as exc:  # a replica crash or a Ray error: the caller learns the model failed
            self._log_failure(len(batch), exc)
            outcome = Unavailable(f"{self.label} failed to execute the batch ({type(exc).__name__})")
        finally:
            self._inflight -= 1
            self._inflight_rows -= total_rows
            self._inflight_requests -= len(batch)
            self._dispatch()
        observer = self.observer
        if outcome is not None:
            failing = [p for p in batch if not p.future.done()]
            _fail(failing, outcome)
            if observer is not None and failing:
                observer.failed(len(failing))
        elif observer is not None:
            # After the callers' own callbacks (queued by _scatter): monitoring never delays an answer. The
            # rows of requests that timed out meanwhile were executed and count as inputs, not as answers.
            asyncio.get_running_loop().call_soon(self._observe, observer, waiting, inputs, outputs, total_rows,
                                                 finished)
        if self.tracing is not None:
            self._trace(self.tracing, batch, total_rows, started, outcome)

    def _steer_admission(self, admission: AdmissionLimit, answered: list[_Pending], rows: int,
                         finished: float) -> None:
        """Tell the admission limit how many of the batch's answers came after the objective.

        Counting only answers late *because they queued* (waiting longer than their batch ran) was
        tried: with two slots and a slow round trip, waiting for a slot is queueing too, and the limit
        fell as far (champion, 4,000 req/s offered: 1,466 answers/s in time against 3,525).
        """
        late_before = finished - admission.objective_s
        late = 0
        for pending in answered:  # in arrival order: the late ones lead
            if pending.enqueued_at >= late_before:
                break
            late += 1
        admission.observe(len(answered), late, rows, self._queued_rows + self._inflight_rows, self._queued_rows,
                          finished)

    @staticmethod
    def _trace(tracing: BatchTracer, batch: list[_Pending], rows: int, started: float,
               outcome: InferenceError | None) -> None:
        """The batch's spans, once its callers have their answers or errors (their code runs later on the loop)."""
        members = [(p.trace, p.enqueued_at) for p in batch if p.trace is not None]
        if members:
            tracing.record(members, rows, len(batch), started, time.monotonic(),
                           outcome.message if outcome is not None else None)

    def _observe(self, observer: BatchObserver, answered: list[_Pending], inputs: Parts, outputs: Arrays,
                 rows: int, finished: float) -> None:
        try:
            enqueued = np.array([p.enqueued_at for p in answered], dtype=np.float64)
            observer.batch(inputs, outputs, rows, finished - enqueued)
        except Exception:
            log.exception("the batch observer of %s failed", self.label)

    def _log_failure(self, requests: int, exc: Exception) -> None:
        """The traceback at most once per ``FAILURE_LOG_INTERVAL_S``: a version failing every batch at
        thousands of requests per second must not turn the gateway into a log writer."""
        self._failures_unlogged += 1
        now = time.monotonic()
        if now - self._failure_logged_at < FAILURE_LOG_INTERVAL_S:
            return
        log.error("batch of %d request(s) on %s failed (%d failed batches since the last report)",
                  requests, self.label, self._failures_unlogged, exc_info=exc)
        self._failure_logged_at, self._failures_unlogged = now, 0

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


def _trailing_shapes(inputs: Arrays) -> list[tuple[int, ...]]:
    return [array.shape[1:] for array in inputs.values()]


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
