"""Open Inference Protocol load generator: closed loop and coordinated-omission-free open loop.

Usage::

    python -m loadtests.loadgen --url http://127.0.0.1:8000 --model breast-cancer \\
        --mode closed --concurrency 16 --duration 60
    python -m loadtests.loadgen --mode open --rate 2000 --arrival poisson --duration 30

Why it is built this way:

* It shares a 2-core machine with the server it measures, so it must be
  frugal: uvloop, a callback-driven HTTP/1.1 client on ``asyncio.Protocol``
  (see :mod:`loadtests.httpclient`), request bytes encoded before the run,
  and a substring check instead of a JSON parse per response.
* In open-loop mode requests have *intended* send times drawn independently
  of the server (Poisson or constant arrivals), and latency is measured from
  that intended time. A server that stalls is therefore charged for the
  queueing it caused, including the wait for a free connection on the
  client side -- the "coordinated omission" that closed-loop tools hide.
* It is bounded: it stops by itself (warm-up + duration + request timeout
  for the drain) and refuses any target that is not the loopback interface.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import itertools
import math
import socket
import sys
import time
from collections import deque
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, TextIO
from urllib.parse import urlsplit

import numpy as np

from loadtests.httpclient import HttpConnection, exception_kind
from loadtests.payloads import Payload, build_requests
from loadtests.report import Recorder, Report, latency_summary

Mode = Literal["closed", "open"]
Arrival = Literal["poisson", "constant", "bursty"]

_TICK_S = 0.1  # timeout scan period
_CONNECT_BACKOFF_S = 0.005  # after a failed connect, so a dead server does not spin the CPU
_NS = 1_000_000_000
_NEVER = 2**63 - 1
_SLACK_NS = 500_000  # open loop: send up to 0.5 ms early rather than up to 1 ms late (timer granularity)
# Open loop: an idle connection unused for this long is closed rather than reused, so that a request
# does not race the server closing it (uvicorn's default keep-alive timeout is 5 s).
_IDLE_REUSE_NS = 3 * _NS


@dataclass(frozen=True)
class LoadConfig:
    """Everything one load run needs; the CLI flags map one to one onto these fields."""

    url: str = "http://127.0.0.1:8000"
    model: str = "breast-cancer"
    version: str | None = None
    mode: Mode = "closed"
    concurrency: int = 16
    rate: float = 1000.0
    arrival: Arrival = "poisson"
    connections: int = 64
    duration_s: float = 30.0
    warmup_s: float = 5.0
    rows: int = 1
    payload: Payload = "json"
    binary_outputs: bool = False
    timeout_s: float = 10.0
    check_every: int = 0
    bodies: int = 256
    seed: int = 0
    quiet: bool = False
    slo_ms: float | None = None

    def validate(self) -> None:
        """Reject settings that would make the run unbounded or meaningless."""
        if self.duration_s <= 0 or self.warmup_s < 0 or self.timeout_s <= 0:
            raise ValueError("duration and timeout must be > 0, warmup >= 0")
        if self.mode == "closed" and self.concurrency < 1:
            raise ValueError("--concurrency must be >= 1")
        if self.mode == "open" and (self.rate <= 0 or self.connections < 1):
            raise ValueError("--rate must be > 0 and --connections >= 1")
        if self.rows < 1 or self.bodies < 1 or self.check_every < 0:
            raise ValueError("--rows and --bodies must be >= 1, --check-every >= 0")
        if self.binary_outputs and self.check_every:
            raise ValueError("--check-every parses outputs as JSON numbers; it cannot check --binary-outputs")


@dataclass(frozen=True)
class Target:
    """Where to connect and what to put in the Host header and in front of the OIP path."""

    host: str
    port: int
    host_header: str
    prefix: str


def parse_target(url: str) -> Target:
    """Parse ``http://HOST[:PORT][/prefix]`` and refuse anything that is not loopback.

    The load generator can saturate a server; pointing it at another machine
    by mistake would be a denial-of-service, so only loopback is accepted.
    """
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"only plain http:// URLs are supported, got {url!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in URL {url!r}")
    if not _is_loopback(host):
        raise ValueError(
            f"refusing to send load to {host!r}: only loopback targets "
            "(127.0.0.0/8, ::1, localhost) are allowed"
        )
    port = parts.port or 80
    host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return Target(host=host, port=port, host_header=host_header, prefix=parts.path.rstrip("/"))


def _is_loopback(host: str) -> bool:
    """True for a loopback IP literal, or a name whose every address is loopback."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0])).is_loopback for info in infos)


class _Driver:
    """Shared machinery: connecting, timing out requests, draining at the end."""

    def __init__(self, cfg: LoadConfig, target: Target, requests: list[bytes], rec: Recorder) -> None:
        self._cfg = cfg
        self._target = target
        self._next_request = itertools.cycle(requests).__next__
        self._rec = rec
        self._conns: set[HttpConnection] = set()
        self._timeout_ns = int(cfg.timeout_s * _NS)
        self._end_ns = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopping = False  # no new requests
        self.finished = False  # run over: connections that open late are closed at once

    def _spawn(self, coro: Coroutine[None, None, None]) -> None:
        """Start a background task and keep a reference so it cannot be garbage-collected mid-flight."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> HttpConnection | None:
        """Open one connection; None when the run finished while it was opening."""
        loop = asyncio.get_running_loop()
        # Bounded: a full accept backlog can leave a connect hanging; TimeoutError is an OSError.
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: HttpConnection(self), self._target.host, self._target.port),
            self._cfg.timeout_s,
        )
        if self.finished:
            proto.close()
            return None
        self._conns.add(proto)
        return proto

    def _forget(self, conn: HttpConnection) -> None:
        self._conns.discard(conn)

    def expire(self, now_ns: int) -> None:
        """Abort requests in flight for longer than the timeout (the connection is then unusable)."""
        for conn in [c for c in self._conns if c.busy and now_ns - c.sent_ns > self._timeout_ns]:
            conn.abort("timeout")

    def inflight(self) -> int:
        """Requests sent and not yet answered (open loop adds its client-side queue)."""
        return sum(1 for c in self._conns if c.busy)

    def abandon(self) -> None:
        """At the drain deadline: whatever is still in flight counts as a timeout."""
        self.stopping = self.finished = True
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self._conns):
            if conn.busy:
                conn.abort("timeout")
            else:
                conn.close()
        self._conns.clear()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(_TICK_S)
            self.expire(time.perf_counter_ns())

    async def drive(self, start_ns: int, end_ns: int) -> None:
        """Send load from ``start_ns`` until ``end_ns`` (perf_counter_ns clock)."""
        raise NotImplementedError

    def on_response(self, conn: HttpConnection, status: int, body: bytes) -> None:
        """ResponseSink: a response arrived on ``conn``."""
        raise NotImplementedError

    def on_failure(self, conn: HttpConnection, kind: str) -> None:
        """ResponseSink: the request on ``conn`` failed."""
        raise NotImplementedError

    async def run(self, start_ns: int, end_ns: int) -> None:
        """Drive the load, then wait (bounded by the request timeout) for the stragglers."""
        self._end_ns = end_ns
        ticker = asyncio.create_task(self._ticker())
        try:
            await self.drive(start_ns, end_ns)
            self.stopping = True
            deadline = time.perf_counter_ns() + self._timeout_ns
            while self.inflight() and time.perf_counter_ns() < deadline:
                await asyncio.sleep(0.01)
        finally:
            self.stopping = True
            ticker.cancel()
            self.abandon()


class ClosedLoopDriver(_Driver):
    """C workers, each with its own connection, each sending the next request as soon as one answers."""

    async def drive(self, start_ns: int, end_ns: int) -> None:
        """Start the workers at ``start_ns`` and let the response callbacks keep them going."""
        await _sleep_until(start_ns)
        for _ in range(self._cfg.concurrency):
            self._spawn(self._worker())
        await _sleep_until(end_ns)

    async def _worker(self) -> None:
        """Connect (retrying after failures) and send the first request; callbacks do the rest."""
        while not self.stopping and time.perf_counter_ns() < self._end_ns:
            now = time.perf_counter_ns()
            try:
                conn = await self._connect()
            except OSError as exc:
                self._rec.failure(now, exception_kind(exc))
                await asyncio.sleep(_CONNECT_BACKOFF_S)
                continue
            if conn is not None:
                self._send(conn)
            return

    def _send(self, conn: HttpConnection) -> None:
        now = time.perf_counter_ns()
        if self.stopping or now >= self._end_ns:
            self._forget(conn)
            conn.close()
            return
        conn.sent_ns = conn.intended_ns = now
        conn.send(self._next_request())

    def on_response(self, conn: HttpConnection, status: int, body: bytes) -> None:
        """Record, then immediately reuse the connection (or replace it if the server closed it)."""
        self._rec.response(conn.intended_ns, conn.sent_ns, time.perf_counter_ns(), status, body)
        if conn.closed:
            self._replace(conn)
        else:
            self._send(conn)

    def on_failure(self, conn: HttpConnection, kind: str) -> None:
        """Record the failure and start a fresh connection for this worker."""
        self._rec.failure(conn.intended_ns, kind)
        self._replace(conn)

    def _replace(self, conn: HttpConnection) -> None:
        self._forget(conn)
        if not self.stopping:
            self._spawn(self._worker())


class OpenLoopDriver(_Driver):
    """Requests at scheduled times, independent of responses, over a bounded keep-alive pool.

    A request whose time has come waits in a client-side FIFO when every
    connection is busy and the pool is at ``--connections``; its latency still
    counts from the intended time.
    """

    def __init__(self, cfg: LoadConfig, target: Target, requests: list[bytes], rec: Recorder) -> None:
        super().__init__(cfg, target, requests, rec)
        self._idle: list[HttpConnection] = []
        self._pending: deque[int] = deque()
        self._pool_size = 0  # open + opening connections
        self._gaps = _gap_stream(cfg.arrival, cfg.rate, cfg.seed)
        self._next_ns = _NEVER
        self.offered = 0

    async def drive(self, start_ns: int, end_ns: int) -> None:
        """Issue every request whose intended time has passed, then sleep until the next one is due.

        The event loop's timers have millisecond resolution and uvloop rounds
        to the nearest millisecond (a 0.3 ms sleep returns at once, so a naive
        sleep loop spins the CPU). So each wake-up sends every request due
        within ``_SLACK_NS`` from now (early sends are measured from their
        actual send time, late ones from their intended time, see
        :meth:`Recorder.response`) and then sleeps whole milliseconds. Every
        response callback also dispatches what has come due (:meth:`_pump`),
        which under load keeps sends within microseconds of their schedule.
        """
        self._next_ns = start_ns
        while self._next_ns < end_ns:
            self._pump(time.perf_counter_ns())
            delay_ns = self._next_ns - _SLACK_NS - time.perf_counter_ns()
            await asyncio.sleep(max(1, math.ceil(delay_ns / 1_000_000)) / 1000)

    def _pump(self, now_ns: int) -> None:
        """Submit every request whose intended send time is no later than ``now_ns`` + slack."""
        end_ns = self._end_ns
        horizon = now_ns + _SLACK_NS
        while self._next_ns <= horizon and self._next_ns < end_ns:
            self._submit(self._next_ns)
            self._next_ns += next(self._gaps)

    def _submit(self, intended_ns: int) -> None:
        if self._rec.measuring(intended_ns):
            self.offered += 1
        while self._idle:
            conn = self._idle.pop()  # LIFO: the most recently used connection is the least likely stale
            if not conn.closed and intended_ns - conn.sent_ns < _IDLE_REUSE_NS:
                self._send(conn, intended_ns)
                return
            # Closed by the server while idle, or idle long enough to race its keep-alive timeout.
            conn.close()
            self._drop(conn)
        self._pending.append(intended_ns)
        self._grow()

    def _grow(self) -> None:
        """Open another connection if requests are waiting and the pool has room (also while draining)."""
        if self._pending and self._pool_size < self._cfg.connections and not self.finished:
            self._pool_size += 1
            self._spawn(self._open())

    async def _open(self) -> None:
        try:
            conn = await self._connect()
        except OSError as exc:
            self._pool_size -= 1
            if self._pending:  # the request that asked for this connection fails with the connect error
                self._rec.failure(self._pending.popleft(), exception_kind(exc))
            await asyncio.sleep(_CONNECT_BACKOFF_S)
            self._grow()
            return
        if conn is not None:
            self._release(conn)

    def _send(self, conn: HttpConnection, intended_ns: int) -> None:
        conn.intended_ns = intended_ns
        conn.sent_ns = time.perf_counter_ns()
        conn.send(self._next_request())

    def _release(self, conn: HttpConnection) -> None:
        """A connection became free: serve the oldest waiting request, or park it."""
        if self._pending:
            self._send(conn, self._pending.popleft())
        else:
            self._idle.append(conn)

    def on_response(self, conn: HttpConnection, status: int, body: bytes) -> None:
        """Record against the intended time, hand the connection to the oldest waiting request, then
        dispatch whatever else has come due (cheaper and more punctual than a sub-ms timer)."""
        now = time.perf_counter_ns()
        self._rec.response(conn.intended_ns, conn.sent_ns, now, status, body)
        if conn.closed:
            self._drop(conn)
        else:
            self._release(conn)
        self._pump(now)

    def on_failure(self, conn: HttpConnection, kind: str) -> None:
        """Record the failure; the pool shrinks and regrows on demand."""
        self._rec.failure(conn.intended_ns, kind)
        self._drop(conn)

    def _drop(self, conn: HttpConnection) -> None:
        self._forget(conn)
        self._pool_size -= 1
        self._grow()

    def expire(self, now_ns: int) -> None:
        """Also time out requests that waited client-side longer than the timeout."""
        super().expire(now_ns)
        while self._pending and now_ns - self._pending[0] > self._timeout_ns:
            self._rec.failure(self._pending.popleft(), "timeout_queued")

    def inflight(self) -> int:
        """In flight on the wire plus waiting for a connection."""
        return super().inflight() + len(self._pending)

    def abandon(self) -> None:
        """Queued requests that never got a connection count as client-side timeouts."""
        while self._pending:
            self._rec.failure(self._pending.popleft(), "timeout_queued")
        super().abandon()
        self._idle.clear()


BURST_FACTOR = 4.0
"""Bursty arrivals: the rate during a burst, as a multiple of the mean rate."""
BURST_MEAN_S = 0.2
CALM_MEAN_S = 0.8
CALM_FACTOR = (1.0 - BURST_FACTOR * BURST_MEAN_S / (BURST_MEAN_S + CALM_MEAN_S)) * (
    (BURST_MEAN_S + CALM_MEAN_S) / CALM_MEAN_S)
"""The rate between bursts, chosen so that the long-run mean is the requested rate (0.25x here)."""


def _gap_stream(arrival: Arrival, rate: float, seed: int) -> Iterator[int]:
    """Inter-arrival gaps in ns: exponential (Poisson process), constant, or bursty.

    Bursty is a two-state Markov-modulated Poisson process: bursts at ``BURST_FACTOR`` times the
    mean rate lasting ``BURST_MEAN_S`` on average, calm stretches at ``CALM_FACTOR`` times it lasting
    ``CALM_MEAN_S``; phase lengths are exponential, so bursts come at unpredictable times, as they do
    when a batch job or a retry storm hits a service. The long-run mean rate is ``rate``.

    The phases come from a random stream of their own, so one seed gives the same bursts at the
    same times at every rate: a benchmark's load levels then differ in rate only. When phases and
    gaps shared one stream, the phases depended on the rate: with seed 0, the 3 s that
    ``bench_batching`` measures (after 1 s) at 10-150% of 4,970 req/s held 797, 2,306, 2,542, 7,105,
    5,318 and 7,275 requests/s, so its "90%" was busier than its "120%"; now they hold 432, 1,296,
    2,663, 3,974, 5,255 and 6,592.
    """
    mean_ns = _NS / rate
    if arrival == "constant":
        # Accumulate fractional ns so the long-run rate is exact even when 1/rate is not whole ns.
        acc = 0.0
        while True:
            acc += mean_ns
            whole = int(acc)
            acc -= whole
            yield whole
    if arrival == "poisson":
        rng = np.random.default_rng(seed)
        while True:
            yield from rng.exponential(mean_ns, 4096).astype(np.int64).tolist()
    gaps, phases = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    yield from _bursty_gaps(gaps, phases, rate)


def _bursty_gaps(gaps: np.random.Generator, phases: np.random.Generator, rate: float) -> Iterator[int]:
    t = last = 0.0
    bursting = False
    phase_end = phases.exponential(CALM_MEAN_S)
    while True:
        phase_rate = rate * (BURST_FACTOR if bursting else CALM_FACTOR)
        t_next = t + gaps.exponential(1.0 / phase_rate)
        if t_next >= phase_end:  # memoryless: restart the draw at the phase change at the new rate
            t = phase_end
            bursting = not bursting
            phase_end = t + phases.exponential(BURST_MEAN_S if bursting else CALM_MEAN_S)
            continue
        t = t_next
        yield int((t - last) * _NS)
        last = t


async def _sleep_until(t_ns: int) -> None:
    delay = t_ns - time.perf_counter_ns()
    if delay > 0:
        await asyncio.sleep(delay / _NS)


async def _progress(rec: Recorder, t0_ns: int, measure_from_ns: int, stream: TextIO) -> None:
    """Once a second: elapsed, req/s over the last second, p99 so far (measured phase), errors."""
    last_done, last_ns = 0, t0_ns
    while True:
        await asyncio.sleep(1.0)
        now = time.perf_counter_ns()
        rate = (rec.live_done - last_done) * _NS / max(now - last_ns, 1)
        last_done, last_ns = rec.live_done, now
        phase = "warmup " if now < measure_from_ns else "measure"
        p99 = rec.p99_so_far_ms()
        p99_txt = f"{p99:8.2f} ms" if p99 is not None else "       -   "
        elapsed = (now - t0_ns) / _NS
        print(
            f"[{elapsed:6.1f}s] {phase} {rate:9.0f} req/s  p99 {p99_txt}  errors {rec.live_errors}",
            file=stream,
            flush=True,
        )


async def run_load(cfg: LoadConfig) -> Report:
    """Run one bounded load test against a loopback OIP server and return its report."""
    report, _ = await run_load_keeping_latencies(cfg)
    return report


async def run_load_keeping_latencies(cfg: LoadConfig) -> tuple[Report, np.ndarray]:
    """:func:`run_load`, plus every measured ok answer's latency in ns (from the intended send time), so that
    several generator processes driving one server can be merged into one honest p99."""
    cfg.validate()
    target = parse_target(cfg.url)
    requests = build_requests(
        target.host_header, cfg.model, cfg.version, cfg.rows, cfg.payload, cfg.bodies, prefix=target.prefix,
        binary_outputs=cfg.binary_outputs,
    )
    rec = Recorder(check_every=cfg.check_every, expected_rows=cfg.rows)
    driver: _Driver
    if cfg.mode == "closed":
        driver = ClosedLoopDriver(cfg, target, requests, rec)
    else:
        driver = OpenLoopDriver(cfg, target, requests, rec)

    t0 = time.perf_counter_ns() + 10_000_000  # a short lead so the first deadline is in the future
    rec.measure_from_ns = t0 + int(cfg.warmup_s * _NS)
    rec.measure_until_ns = rec.measure_from_ns + int(cfg.duration_s * _NS)
    progress = None if cfg.quiet else asyncio.create_task(_progress(rec, t0, rec.measure_from_ns, sys.stderr))
    cpu = _CpuMeter()
    hard_limit_s = cfg.warmup_s + cfg.duration_s + cfg.timeout_s + 30.0  # belt and braces: always stops
    try:
        await asyncio.wait_for(driver.run(t0, rec.measure_until_ns), hard_limit_s)
    except TimeoutError:
        driver.abandon()
    finally:
        if progress is not None:
            progress.cancel()
    return _build_report(cfg, driver, rec, cpu.percent()), np.asarray(rec.latencies, dtype=np.int64)


class _CpuMeter:
    """Client CPU over the whole run (warm-up included), to show the generator is not the bottleneck."""

    def __init__(self) -> None:
        self._cpu0 = time.process_time()
        self._wall0 = time.perf_counter_ns()

    def percent(self) -> float:
        wall_ns = time.perf_counter_ns() - self._wall0
        return 100.0 * (time.process_time() - self._cpu0) * _NS / max(wall_ns, 1)


def _build_report(cfg: LoadConfig, driver: _Driver, rec: Recorder, cpu_percent: float) -> Report:
    ok = len(rec.latencies)
    # Achieved throughput over the window, stretched if the last ok answer came after it
    # (an overloaded server draining its backlog must not look as fast as the offered rate).
    elapsed_ns = max(rec.measure_until_ns - rec.measure_from_ns, rec.last_ok_ns - rec.measure_from_ns)
    elapsed_s = elapsed_ns / _NS
    report = Report(
        mode=cfg.mode, url=cfg.url, model=cfg.model, payload=cfg.payload, rows=cfg.rows,
        duration_s=cfg.duration_s, warmup_s=cfg.warmup_s,
        sent=ok + sum(rec.errors.values()), ok=ok, errors=dict(sorted(rec.errors.items())),
        elapsed_s=elapsed_s, throughput=ok / elapsed_s if elapsed_s > 0 else 0.0,
        latency_ms=latency_summary(rec.latencies), client_cpu_percent=cpu_percent,
    )
    if cfg.slo_ms is not None:
        within = int(np.count_nonzero(np.asarray(rec.latencies, dtype=np.int64) <= cfg.slo_ms * 1e6))
        report = replace(report, slo_ms=cfg.slo_ms, within_slo=within, goodput=within / cfg.duration_s)
    if isinstance(driver, OpenLoopDriver):
        return replace(
            report, connections=cfg.connections, arrival=cfg.arrival, target_rate=cfg.rate,
            offered=driver.offered, offered_rate=driver.offered / cfg.duration_s,
            latency_basis="from intended send time", service_latency_ms=latency_summary(rec.service),
        )
    return replace(report, concurrency=cfg.concurrency, latency_basis="from send time")


def run_load_sync(cfg: LoadConfig) -> Report:
    """Run :func:`run_load` on a fresh uvloop event loop (for scripts and the benchmark)."""
    import uvloop

    return uvloop.run(run_load(cfg))


def run_load_sync_keeping_latencies(cfg: LoadConfig) -> tuple[Report, np.ndarray]:
    """:func:`run_load_keeping_latencies` on a fresh uvloop event loop (one generator process of several)."""
    import uvloop

    return uvloop.run(run_load_keeping_latencies(cfg))


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags; defaults come from :class:`LoadConfig`."""
    d = LoadConfig()
    p = argparse.ArgumentParser(
        prog="python -m loadtests.loadgen", description="OIP (KServe v2) HTTP load generator (loopback only)."
    )
    p.add_argument("--url", default=d.url, help="server base URL (loopback only)")
    p.add_argument("--model", default=d.model)
    p.add_argument("--version", default=None, help="pin a model version (/versions/V/infer)")
    p.add_argument("--mode", choices=["closed", "open"], default=d.mode)
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="closed loop: workers")
    p.add_argument("--rate", type=float, default=d.rate, help="open loop: requests per second")
    p.add_argument("--arrival", choices=["poisson", "constant", "bursty"], default=d.arrival,
                   help=f"open loop: bursty = bursts at {BURST_FACTOR:g}x the rate, {BURST_MEAN_S:g} s on average, "
                        f"between {CALM_MEAN_S:g} s stretches at {CALM_FACTOR:g}x")
    p.add_argument("--connections", type=int, default=d.connections, help="open loop: max keep-alive pool")
    p.add_argument("--duration", type=float, default=d.duration_s, help="measured seconds")
    p.add_argument("--warmup", type=float, default=d.warmup_s, help="seconds of load discarded first")
    p.add_argument("--rows", type=int, default=d.rows, help="rows per request")
    p.add_argument("--payload", choices=["json", "binary"], default=d.payload)
    p.add_argument("--binary-outputs", action="store_true", help="ask for outputs as raw bytes (binary_data_output)")
    p.add_argument("--timeout", type=float, default=d.timeout_s, help="per-request timeout, seconds")
    p.add_argument("--check-every", type=int, default=d.check_every, help="fully parse every Nth ok response")
    p.add_argument("--bodies", type=int, default=d.bodies, help="distinct pre-built request bodies")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the random arrivals")
    p.add_argument("--quiet", action="store_true", help="no live progress on stderr")
    p.add_argument("--slo-ms", type=float, default=None, help="count ok answers within this latency (goodput)")
    p.add_argument("--json", type=Path, default=None, help="write the report as JSON to this file")
    return p


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    """Map parsed flags onto a :class:`LoadConfig`."""
    return LoadConfig(
        url=args.url, model=args.model, version=args.version, mode=args.mode, concurrency=args.concurrency,
        rate=args.rate, arrival=args.arrival, connections=args.connections, duration_s=args.duration,
        warmup_s=args.warmup, rows=args.rows, payload=args.payload, timeout_s=args.timeout,
        check_every=args.check_every, bodies=args.bodies, seed=args.seed, quiet=args.quiet, slo_ms=args.slo_ms,
        binary_outputs=args.binary_outputs,
    )


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: run, print the report, optionally write it as JSON."""
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        cfg.validate()
        parse_target(cfg.url)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = run_load_sync(cfg)
    print(report.to_text())
    if args.json is not None:
        args.json.write_text(report.to_json() + "\n", encoding="utf-8")
    return 0 if report.ok > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
