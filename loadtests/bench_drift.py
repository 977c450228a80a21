"""What drift monitoring costs per request: the same gateway with ``monitoring.drift`` on and off.

Usage::

    python -m loadtests.bench_drift --models models [--duration 15] [--repeats 4] [--rate 300] \\
        [--out loadtests/results/bench_drift.md]

The issue's target: "End-to-end latency with monitoring on vs off, same load, same run: p50 and p99
within 3% (benchmark), and under 20 µs per request of CPU time". With monitoring on, every executed
batch is counted by ``telemetry.evidence.VersionMonitor.batch`` after its callers have their answers
(``gateway.batcher.Batcher._observe``); a task publishes the completed one-second slots to the SQLite
evidence file every second, another recomputes the drift gauges every ``monitoring.refresh_s``, and the
rollout controller ticks every second. With it off, none of that runs. Two views, because neither alone
answers both halves of the target on a 2-core box:

1. **In process** (no Ray, no HTTP): the CPU the monitor adds per request, which the end-to-end numbers
   cannot resolve (a gateway spends several hundred µs of CPU per request, and the box's noise is larger
   than 20 µs). A ``VersionMonitor`` built from the demo champion's manifest counts realistic batches
   (1, 8 and 64 rows of breast-cancer features, one request per row, the model's real ONNX outputs,
   gateway latencies of a few ms), timed as the monitor's own call and as the batcher's whole observer
   call; wall time (``perf_counter_ns``) and this thread's CPU (``thread_time_ns``), per batch and per
   request, median and min over timings of many calls. Beside them the once-a-second work
   (``completed_slots`` + ``EvidenceStore.publish`` into a file already holding ``RETENTION_S`` slots,
   so the prune deletes one) and the drift report of every ``refresh_s``, amortised per request at the
   end-to-end rate and at 1,000 req/s.
2. **End to end** (real ``mlgate serve`` with local Ray and ONNX Runtime): two gateways from the same
   config, one with ``monitoring.drift: false`` and one with ``true``, both serving ``breast-cancer``
   version 1 only and both running for the whole benchmark, so that the comparison is within one run
   and neither pays a cold start the other does not. Open-loop Poisson load at ``--rate`` req/s (single-row
   JSON requests as ``loadgen`` sends them, the same arrival schedule for both in a round) goes to one
   gateway at a time, alternating off/on then on/off (ABBA) over ``--repeats`` rounds. Per phase: p50/p99
   from the intended send time, the gateway process's CPU per request (``/proc/PID/stat`` utime+stime over
   the measured window, so the publisher, drift and rollout tasks are included), all its processes' CPU
   per request, and how busy the idle twin and everything else were. The twin's idle cost (Ray's own
   processes, the "on" twin's background tasks) lands on both sides alike.

The report (markdown, to stdout and ``--out``; raw numbers as JSON beside it) states the machine.
Gateway logs and configs stay in a temporary folder that is removed at the end (``--workdir`` keeps them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from itertools import starmap
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from gateway.batcher import Batcher, BatchPolicy, _Pending
from loadtests.bench_oip import environment_lines
from loadtests.bench_routing import _fmt, _median, copy_version, cpu_ticks, drive, metric_sum, scrape, settle, workdir
from loadtests.loadgen import LoadConfig
from loadtests.payloads import build_requests, load_rows
from loadtests.procs import CLK_TCK, CpuMeter, Server, free_port, running, wait_ready
from loadtests.report import latency_summary
from mlgate.config import MonitoringConfig
from serving.batch_inputs import Arrays, Parts
from serving.manifest import Manifest, read_manifest
from telemetry.drift import DriftView
from telemetry.evidence import LOCAL_SLOTS, REQUESTS, SLOT_S, DriftMonitor
from telemetry.evidence_store import RETENTION_S, EvidenceStore, evidence_path

MODEL = "breast-cancer"
VERSION = "1"
OFF, ON = "off", "on"
SETTINGS = (OFF, ON)
BATCH_ROWS = (1, 8, 64)
TARGET_CPU_US = 20.0
TARGET_RATIO = 1.03
REFERENCE_RATE = 1000.0
"""The background work is amortised per request at the end-to-end rate and at this one."""
DISTINCT = 64
"""Distinct batches per size, cycled through: replaying one batch would let the branch predictor learn it."""


# --------------------------------------------------------------------------- in process


@dataclass(frozen=True)
class CallCost:
    """One per-batch call timed over many calls: ns per call (a whole batch), median and min over timings."""

    operation: str
    rows: int
    wall_median_ns: float
    wall_min_ns: float
    cpu_median_ns: float
    cpu_min_ns: float

    @property
    def cpu_per_request_us(self) -> float:
        """One request per row: the batch's CPU shared by its requests."""
        return self.cpu_median_ns / self.rows / 1e3

    @property
    def cpu_min_per_request_us(self) -> float:
        return self.cpu_min_ns / self.rows / 1e3


@dataclass(frozen=True)
class BackgroundCost:
    """Work the monitoring tasks do on a timer, per run and amortised per request."""

    operation: str
    every_s: float
    wall_median_us: float
    cpu_median_us: float
    cpu_min_us: float
    per_request_us: dict[str, float] = field(default_factory=dict)
    """CPU (median) per request, by request rate (the key, req/s, as text)."""


def champion_manifest(models: Path) -> Manifest:
    path = models / MODEL / VERSION / "manifest.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; build the demo repository first "
                         f"(`make models` or `mlgate models build-demo {models}`)")
    return read_manifest(path)


def realistic_batches(models: Path, rows: int, seed: int) -> list[tuple[Arrays, Arrays, np.ndarray]]:
    """``DISTINCT`` batches of ``rows`` dataset rows: (inputs, the champion's real ONNX outputs, latencies).

    Latencies are lognormal around 2 ms, what a request spends in the gateway at moderate load; their
    values only choose histogram bins, but spread ones exercise the kernel as live traffic does.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(str(models / MODEL / VERSION / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]
    data = load_rows().astype(np.float32)
    rng = np.random.default_rng(seed + rows)
    out = []
    for _ in range(DISTINCT):
        x = np.ascontiguousarray(data[rng.integers(0, len(data), rows)])
        outputs = dict(zip(output_names, session.run(None, {"features": x}), strict=True))
        latencies = rng.lognormal(math.log(0.002), 0.5, rows).astype(np.float64)
        out.append(({"features": x}, outputs, latencies))
    return out


def time_calls(call: Callable[..., object], arguments: Sequence[tuple[Any, ...]], calls: int,
               repeats: int) -> tuple[list[float], list[float]]:
    """(wall ns per call, thread CPU ns per call) for each of ``repeats`` timings of ``calls`` calls.

    One timing runs ``call`` over the argument sets cycled to ``calls`` with ``deque(starmap(...))``, so
    there is no Python loop body per call, and the clocks are read once per timing, not per call (reading
    the thread CPU clock is a system call that would cost as much as a one-row update).
    """
    cycled = [arguments[i % len(arguments)] for i in range(calls)]
    walls, cpus = [], []
    for _ in range(repeats):
        cpu0, wall0 = time.thread_time_ns(), time.perf_counter_ns()
        deque(starmap(call, cycled), maxlen=0)
        wall1, cpu1 = time.perf_counter_ns(), time.thread_time_ns()
        walls.append((wall1 - wall0) / calls)
        cpus.append((cpu1 - cpu0) / calls)
    return walls, cpus


def cost(operation: str, rows: int, timings: tuple[list[float], list[float]]) -> CallCost:
    walls, cpus = timings
    return CallCost(operation, rows, statistics.median(walls), min(walls), statistics.median(cpus), min(cpus))


def time_batches(models: Path, manifest: Manifest, args: argparse.Namespace) -> list[CallCost]:
    """The per-batch cost on the request path: the monitor's call, and the batcher's observer call around it."""
    monitor = DriftMonitor().add(MODEL, VERSION, manifest)
    loop = asyncio.new_event_loop()  # the batcher's pending requests hold futures; nothing is awaited
    try:
        batcher = Batcher(f"{MODEL}:{VERSION}", _never_called, BatchPolicy(max_batch_rows=256, max_wait_s=0.0,
                                                                           max_inflight=2))
        out = [cost("empty call (the timing's own overhead)", 1,
                    time_calls(_nothing, [(None, None, None, None)], args.inproc_calls, args.inproc_repeats))]
        for rows in BATCH_ROWS:
            batches = realistic_batches(models, rows, args.seed)
            direct = [([inputs], outputs, rows, latencies) for inputs, outputs, latencies in batches]
            finished = time.monotonic()
            observed = []
            for inputs, outputs, latencies in batches:
                pending = [_Pending({"features": inputs["features"][i:i + 1]}, 1, loop.create_future(), math.inf,
                                    finished - float(latencies[i])) for i in range(rows)]
                observed.append((monitor, pending, [p.inputs for p in pending], outputs, rows, finished))
            for arguments in direct:  # compile or load the kernels before timing
                monitor.batch(*arguments)
            print(f"--- in process: {rows}-row batches", file=sys.stderr, flush=True)
            out.append(cost("`VersionMonitor.batch`", rows,
                            time_calls(monitor.batch, direct, args.inproc_calls, args.inproc_repeats)))
            out.append(cost("`Batcher._observe` (what the batcher adds per batch)", rows,
                            time_calls(batcher._observe, observed, args.inproc_calls, args.inproc_repeats)))
        return out
    finally:
        loop.close()


async def _never_called(parts: Parts) -> Arrays:
    raise AssertionError("the benchmark's batcher never executes a batch")


def _nothing(inputs: object, outputs: object, rows: object, latencies: object) -> None:
    return None


def one_second_of_counts(manifest: Manifest, rate: float, models: Path, seed: int) -> np.ndarray:
    """The counts one second of one-row requests at ``rate`` leaves in a slot (what is published each second)."""
    feeder = DriftMonitor().add(MODEL, VERSION, manifest)
    batches = realistic_batches(models, 1, seed)
    for i in range(max(1, int(rate))):
        inputs, outputs, latencies = batches[i % len(batches)]
        feeder.batch([inputs], outputs, 1, latencies)
    counts: np.ndarray = feeder.ring.total(time.time(), span_s=LOCAL_SLOTS * SLOT_S)
    return counts


def time_background(manifest: Manifest, work: Path, rates: list[float], args: argparse.Namespace) -> list[
        BackgroundCost]:
    """The timed work of monitoring: publish every second, drift report every ``refresh_s``.

    Each call is timed on its own (they take tens to hundreds of µs, so reading the clocks per call is
    noise). The evidence file is first filled with ``RETENTION_S`` seconds of slots, as in steady state,
    so every publish also prunes the oldest slot with the same statement the gateway runs.
    """
    drift = DriftMonitor()
    monitor = drift.add(MODEL, VERSION, manifest)
    layout = monitor.layout
    counts = one_second_of_counts(manifest, max(rates), args.models, args.seed)
    path = work / "inproc.evidence.db"
    for stale in work.glob("inproc.evidence.db*"):
        stale.unlink()
    store = EvidenceStore(path)
    settings = MonitoringConfig()
    try:
        base = float(int(time.time()))
        retained = int(RETENTION_S / SLOT_S)
        store.publish("bench", [(MODEL, VERSION, layout, int(base) - retained + i, counts) for i in range(retained)],
                      base)
        completed: list[tuple[float, float]] = []
        published: list[tuple[float, float]] = []
        for i in range(args.background_iterations):
            now = time.time()
            monitor.ring.current(now - SLOT_S)[:] = counts  # the slot that just ended saw a second of traffic
            monitor.published_slot = int(now // SLOT_S) - 2
            cpu0, wall0 = time.thread_time_ns(), time.perf_counter_ns()
            slots = monitor.completed_slots(now)
            wall1, cpu1 = time.perf_counter_ns(), time.thread_time_ns()
            if len(slots) != 1:
                raise RuntimeError(f"expected one completed slot, got {len(slots)}")
            completed.append(((wall1 - wall0) / 1e3, (cpu1 - cpu0) / 1e3))
            now_s = base + 1 + i  # one simulated second later each time: a new slot in, the oldest pruned
            rows = [(MODEL, VERSION, layout, int(now_s // SLOT_S) - 1, slot_counts) for _, slot_counts in slots]
            cpu0, wall0 = time.thread_time_ns(), time.perf_counter_ns()
            store.publish("bench", rows, now_s)
            wall1, cpu1 = time.perf_counter_ns(), time.thread_time_ns()
            published.append(((wall1 - wall0) / 1e3, (cpu1 - cpu0) / 1e3))
        view = DriftView(drift, store)
        now_s = base + args.background_iterations + 1
        reports: list[tuple[float, float]] = []
        for _ in range(max(5, args.background_iterations // 5)):
            cpu0, wall0 = time.thread_time_ns(), time.perf_counter_ns()
            [report] = view.reports(MODEL, [VERSION], VERSION, settings.window_s, now_s)
            wall1, cpu1 = time.perf_counter_ns(), time.thread_time_ns()
            reports.append(((wall1 - wall0) / 1e3, (cpu1 - cpu0) / 1e3))
            if report.rows <= 0:
                raise RuntimeError("the drift report saw no rows: the evidence file was not filled as intended")
    finally:
        store.close()

    def row(operation: str, every_s: float, timings: list[tuple[float, float]]) -> BackgroundCost:
        cpu_median = statistics.median(c for _, c in timings)
        return BackgroundCost(operation, every_s, statistics.median(w for w, _ in timings), cpu_median,
                              min(c for _, c in timings),
                              {f"{rate:g}": cpu_median / (every_s * rate) for rate in rates})

    return [row("`VersionMonitor.completed_slots` (one slot)", SLOT_S, completed),
            row(f"`EvidenceStore.publish` (one slot; {retained} retained, one pruned)", SLOT_S, published),
            row(f"drift report over {settings.window_s:g} s (`DriftView.reports`, PSI of {len(layout.features)} "
                "features)", settings.refresh_s, reports)]


# --------------------------------------------------------------------------- end to end


@dataclass
class Phase:
    """One open-loop run against one of the two gateways."""

    round: int
    monitoring: str
    offered: int
    ok: int
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    service_p50_ms: float
    gateway_cpu_us: float
    """Gateway process CPU (utime+stime, all threads) over the measured window, per offered request."""
    server_cpu_us: float
    """CPU of every process of that gateway (its Ray, Serve, replica), same window, per offered request."""
    twin_cpu_pct: float
    """CPU of the other, idle gateway's processes over the phase, in % of one core."""
    other_cpu_pct: float
    """CPU of everything else on the machine (neither gateway nor this benchmark), % of one core."""


@dataclass
class Gateway:
    monitoring: str
    server: Server
    port: int
    state: Path
    requests: list[bytes]


@dataclass(frozen=True)
class EvidenceCheck:
    """Whether each gateway did (or did not) monitor: the evidence file and the drift gauge after the run."""

    monitoring: str
    requests_counted: int
    answered: int
    drift_window_rows: float


def write_config(path: Path, repository: Path, state: Path, http_port: int, grpc_port: int,
                 overrides: dict[str, Any]) -> None:
    """The demo-like config both gateways share; only the ``overrides`` (top-level sections) differ."""
    config = {
        "server": {"host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port},
        "ray": {"num_cpus": 2},
        "repository": str(repository),
        "state": {"path": str(state)},
        "models": {MODEL: {"champion": VERSION, "versions": [VERSION]}},
        **overrides,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def start_gateway(stack: ExitStack, work: Path, repository: Path, monitoring: str,
                  overrides: dict[str, Any]) -> Gateway:
    from loadtests.bench_oip import mlgate_command

    port = free_port()
    config_path, state = work / f"mlgate-{monitoring}.yaml", work / f"state-{monitoring}.db"
    for stale in work.glob(f"state-{monitoring}*.db*"):
        stale.unlink()
    write_config(config_path, repository, state, port, free_port(), overrides)
    command = mlgate_command(config_path)
    if command is None:
        raise SystemExit("error: no mlgate CLI in this environment")
    server = stack.enter_context(running(f"mlgate ({monitoring})", command, work / f"mlgate-{monitoring}.log"))
    host = f"127.0.0.1:{port}"
    requests = build_requests(host, MODEL, None, 1, "json")
    probe = requests[0].split(b"\r\n\r\n", 1)[1]
    startup = wait_ready(server, port, f"/v2/models/{MODEL}/infer", probe, 300.0, "/v2/health/ready")
    print(f"--- mlgate {monitoring} ready after {startup:.0f} s (gateway pid {server.pid})",
          file=sys.stderr, flush=True)
    return Gateway(monitoring, server, port, state, requests)


def load_config(gateway: Gateway, duration_s: float, warmup_s: float, seed: int,
                args: argparse.Namespace) -> LoadConfig:
    return LoadConfig(url=f"http://127.0.0.1:{gateway.port}", model=MODEL, mode="open", rate=args.rate,
                      arrival="poisson", connections=args.connections, duration_s=duration_s, warmup_s=warmup_s,
                      timeout_s=5.0, quiet=True, seed=seed)


def prime(gateway: Gateway, args: argparse.Namespace) -> int:
    """Unmeasured load before the first round: the first batches compile or load the drift kernels, open
    connections and fill caches, which must not land in either side's first phase."""
    import uvloop

    cfg = load_config(gateway, args.prime, 0.0, args.seed + 100_000, args)  # not a round's schedule
    rec, _, _, _ = uvloop.run(drive(cfg, gateway.requests, gateway.server.pid, [gateway.server.pid]))
    settle(gateway.port)
    return rec.live_done


def run_phase(gateway: Gateway, twin: Gateway, round_no: int, args: argparse.Namespace) -> tuple[Phase, int]:
    """One measured phase; also returns every answer of it (warm-up included) for the evidence check."""
    import uvloop

    cfg = load_config(gateway, args.duration, args.warmup, args.seed + round_no, args)  # same schedule on/off
    server_pids = [p.pid for p in gateway.server.alive()]
    twin_pids = [p.pid for p in twin.server.alive()]
    meter, twin0, started = CpuMeter(gateway.server), cpu_ticks(twin_pids), time.monotonic()
    rec, offered, gateway_s, server_s = uvloop.run(drive(cfg, gateway.requests, gateway.server.pid, server_pids))
    _, foreign = meter.result()
    twin_pct = 100.0 * (cpu_ticks(twin_pids) - twin0) / CLK_TCK / max(time.monotonic() - started, 1e-9)
    settle(gateway.port)
    lat, service = latency_summary(rec.latencies), latency_summary(rec.service)
    per_request = 1e6 / max(offered, 1)
    nan = float("nan")
    phase = Phase(round=round_no, monitoring=gateway.monitoring, offered=offered, ok=len(rec.latencies),
                  errors=dict(sorted(rec.errors.items())), p50_ms=lat.get("p50", nan), p90_ms=lat.get("p90", nan),
                  p99_ms=lat.get("p99", nan), service_p50_ms=service.get("p50", nan),
                  gateway_cpu_us=gateway_s * per_request, server_cpu_us=server_s * per_request,
                  twin_cpu_pct=twin_pct, other_cpu_pct=max(0.0, foreign - twin_pct))
    return phase, rec.live_done


def check_evidence(gateway: Gateway, manifest: Manifest, answered: int) -> EvidenceCheck:
    """Requests the gateway's monitor counted into its evidence file (0 expected with monitoring off)."""
    from telemetry.evidence import VersionShape

    path = evidence_path(gateway.state)
    counted = 0
    if path.is_file():
        store = EvidenceStore(path)
        try:
            window = store.window(MODEL, VERSION, VersionShape.of(manifest).layout, time.time(), RETENTION_S)
            counted = int(window[REQUESTS])
        finally:
            store.close()
    return EvidenceCheck(gateway.monitoring, counted, answered,
                         metric_sum(scrape(gateway.port), "mlgate_drift_window_rows", model=MODEL))


def side_by_side(work: Path, variants: dict[str, dict[str, Any]], args: argparse.Namespace,
                 after: Callable[[dict[str, Gateway], dict[str, int]], None] | None = None) -> list[Phase]:
    """Two gateways from one config but for each variant's ``overrides``, both up for the whole run, the
    same load on each in turn, ABBA over ``args.repeats`` rounds; ``after`` sees them (and how many answers
    each gave) before they stop."""
    repository = work / "repository"
    if not (repository / MODEL / VERSION).is_dir():
        copy_version(args.models / MODEL / VERSION, repository / MODEL, MODEL, VERSION)
    settings = tuple(variants)
    phases: list[Phase] = []
    answered = dict.fromkeys(settings, 0)
    with ExitStack() as stack:
        # One after the other: two Ray clusters starting at once on 2 cores would only slow each other down.
        gateways = {s: start_gateway(stack, work, repository, s, overrides) for s, overrides in variants.items()}
        for setting in settings:
            answered[setting] += prime(gateways[setting], args)
        for r in range(args.repeats):
            for setting in (settings if r % 2 == 0 else settings[::-1]):
                twin = gateways[settings[1] if setting == settings[0] else settings[0]]
                phase, done = run_phase(gateways[setting], twin, r, args)
                phases.append(phase)
                answered[setting] += done
                print(f"  round {r + 1} {setting:3s} ok {phase.ok}/{phase.offered} p50 {phase.p50_ms:6.2f} ms "
                      f"p99 {phase.p99_ms:6.2f} ms gateway CPU {phase.gateway_cpu_us:6.0f} µs/req server CPU "
                      f"{phase.server_cpu_us:6.0f} µs/req errors {sum(phase.errors.values())} twin CPU "
                      f"{phase.twin_cpu_pct:.0f}% other CPU {phase.other_cpu_pct:.0f}%", file=sys.stderr, flush=True)
        if after is not None:
            after(gateways, answered)
    return phases


def run_end_to_end(work: Path, manifest: Manifest, args: argparse.Namespace) -> tuple[list[Phase],
                                                                                       list[EvidenceCheck]]:
    checks: list[EvidenceCheck] = []

    def check(gateways: dict[str, Gateway], answered: dict[str, int]) -> None:
        time.sleep(2 * SLOT_S + 0.5)  # the last slots reach the evidence file
        checks.extend(check_evidence(gateways[s], manifest, answered[s]) for s in SETTINGS)

    variants = {setting: {"monitoring": {"drift": setting == ON}} for setting in SETTINGS}
    return side_by_side(work, variants, args, check), checks


# --------------------------------------------------------------------------- report


def request_path(batches: list[CallCost]) -> CallCost | None:
    """The observer call at one-row batches: what moderate load runs (adaptive batching dispatches a lone
    request at once), and the most CPU per request of any batch size."""
    return next((c for c in batches if c.operation.startswith("`Batcher._observe`") and c.rows == 1), None)


def verdict(batches: list[CallCost], background: list[BackgroundCost], phases: list[Phase],
            args: argparse.Namespace) -> list[str]:
    lines = [f"## Against the target (p50 and p99 on/off within {TARGET_RATIO:g}, < {TARGET_CPU_US:g} µs of CPU "
             "per request)", ""]
    path = request_path(batches)
    if path is not None:
        lines.append(f"- request path, in process: {path.cpu_per_request_us:.2f} µs of CPU per request at 1-row "
                     f"batches (`Batcher._observe` around `VersionMonitor.batch`; median, min "
                     f"{path.cpu_min_per_request_us:.2f})")
    for rate in sorted({args.rate, REFERENCE_RATE}):
        key = f"{rate:g}"
        extra = sum(b.per_request_us.get(key, 0.0) for b in background)
        if background and path is not None:
            total = path.cpu_per_request_us + extra
            ok = "within" if total < TARGET_CPU_US else "OVER"
            lines.append(f"- in process, all monitoring work at {rate:g} req/s: {path.cpu_per_request_us:.2f} + "
                         f"{extra:.2f} (publish and drift report, amortised) = **{total:.2f} µs** per request "
                         f"(medians): {ok} target")
    if phases:
        off = [p for p in phases if p.monitoring == OFF]
        on = [p for p in phases if p.monitoring == ON]
        percentiles: list[tuple[str, Callable[[Phase], float]]] = [("p50", lambda p: p.p50_ms),
                                                                   ("p99", lambda p: p.p99_ms)]
        for name, get in percentiles:
            ratio = _median([get(p) for p in on]) / _median([get(p) for p in off])
            ok = "within" if ratio <= TARGET_RATIO else "OVER"
            lines.append(f"- end to end {name}: on/off **{ratio:.3f}** (medians over rounds; paired per-round "
                         f"median {paired(phases, get, ratio=True):.3f}): {ok} target")
        d_cpu = paired(phases, lambda p: p.gateway_cpu_us)
        lines.append(f"- end to end gateway CPU: {d_cpu:+.1f} µs per request on - off (median of per-round "
                     "differences; on a shared 2-core box its noise is far larger than 20 µs, which is why the CPU "
                     "target is judged in process; see the per-round table)")
    lines.append("")
    return lines


def paired(phases: list[Phase], get: Callable[[Phase], float], ratio: bool = False) -> float:
    """Median over rounds of on - off (or on / off) within the round."""
    values = []
    for r in sorted({p.round for p in phases}):
        off = [get(p) for p in phases if p.round == r and p.monitoring == OFF]
        on = [get(p) for p in phases if p.round == r and p.monitoring == ON]
        if off and on:
            values.append(on[0] / off[0] if ratio else on[0] - off[0])
    return _median(values)


def inproc_section(batches: list[CallCost], background: list[BackgroundCost], rates: list[float],
                   args: argparse.Namespace) -> list[str]:
    lines = [
        "## In process: the monitor's own cost", "",
        f"Request path, per executed batch: {args.inproc_calls:,} calls per timing cycling through {DISTINCT} "
        f"distinct batches (breast-cancer rows as float32, the champion's real ONNX outputs), "
        f"{args.inproc_repeats} timings; one request per row. Wall = `perf_counter_ns`, CPU = `thread_time_ns`, "
        "both read once per timing; call overhead included (first row).", "",
        "| operation | rows | wall µs/batch (median) | wall min | CPU µs/batch (median) | CPU min | "
        "CPU µs/request (median) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in batches:
        lines.append(f"| {c.operation} | {c.rows} | {c.wall_median_ns / 1e3:.2f} | {c.wall_min_ns / 1e3:.2f} | "
                     f"{c.cpu_median_ns / 1e3:.2f} | {c.cpu_min_ns / 1e3:.2f} | {c.cpu_per_request_us:.3f} |")
    per_rate = " | ".join(f"CPU µs/request at {r:g} req/s" for r in rates)
    lines += [
        "", f"Timed work, each call timed on its own, {args.background_iterations} calls (drift reports: a fifth "
        f"as many); the evidence file holds {int(RETENTION_S / SLOT_S)} one-second slots of "
        f"{max(rates):g} req/s traffic, as in steady state. It runs off the request path (the publish and the "
        "report in a worker thread), but on the gateway's CPU.", "",
        f"| operation | every | wall µs (median) | CPU µs (median) | CPU min | {per_rate} |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(rates),
    ]
    for b in background:
        amortised = " | ".join(f"{b.per_request_us.get(f'{r:g}', float('nan')):.3f}" for r in rates)
        lines.append(f"| {b.operation} | {b.every_s:g} s | {b.wall_median_us:.1f} | {b.cpu_median_us:.1f} | "
                     f"{b.cpu_min_us:.1f} | {amortised} |")
    lines += ["", "Not timed here: the rollout controller's tick (every second, only while monitoring is on; "
              "with no rollout running it renews its lease and reads the rollouts from the state file). The "
              "end-to-end gateway CPU includes it.", ""]
    return lines


def e2e_section(phases: list[Phase], checks: list[EvidenceCheck], args: argparse.Namespace) -> list[str]:
    lines = [
        "## End to end (two real gateways, Ray, ONNX Runtime)", "",
        f"`{MODEL}` version {VERSION} only; open loop, Poisson {args.rate:g} req/s, {args.warmup:g} s warm-up + "
        f"{args.duration:g} s measured per phase, {args.connections} connections, single-row JSON requests, the "
        f"same arrival schedule for both in a round; {args.prime:g} s of unmeasured load on each gateway first; "
        f"latency from the intended send time; {args.repeats} round(s), order off/on then on/off (ABBA). Both "
        "gateways run throughout; \"twin CPU\" is the idle one's, \"other CPU\" everything else's "
        "(% of one core).", "",
        "| round | drift | offered | ok | errors | p50 ms | p90 ms | p99 ms | gateway CPU µs/req | "
        "server CPU µs/req | twin CPU % | other CPU % |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in phases:
        lines.append(f"| {p.round + 1} | {p.monitoring} | {p.offered} | {p.ok} | {sum(p.errors.values())} | "
                     f"{p.p50_ms:.3f} | {p.p90_ms:.3f} | {p.p99_ms:.3f} | {p.gateway_cpu_us:,.0f} | "
                     f"{p.server_cpu_us:,.0f} | {p.twin_cpu_pct:.0f} | {p.other_cpu_pct:.0f} |")
    metrics: list[tuple[str, Callable[[Phase], float], float, int]] = [
        ("p50 latency (µs)", lambda p: p.p50_ms, 1e3, 0),
        ("p90 latency (µs)", lambda p: p.p90_ms, 1e3, 0),
        ("p99 latency (µs)", lambda p: p.p99_ms, 1e3, 0),
        ("p50 from actual send (µs)", lambda p: p.service_p50_ms, 1e3, 0),
        ("gateway process CPU per request (µs)", lambda p: p.gateway_cpu_us, 1.0, 1),
        ("all its processes' CPU per request (µs)", lambda p: p.server_cpu_us, 1.0, 1),
    ]
    lines += ["", "Medians over rounds; \"paired\" columns are medians of the per-round on - off and on / off.", "",
              "| measure | off | on | on / off | paired on - off | paired on / off |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, get, scale, digits in metrics:
        off = _median([get(p) for p in phases if p.monitoring == OFF]) * scale
        on = _median([get(p) for p in phases if p.monitoring == ON]) * scale
        lines.append(f"| {name} | {_fmt(off, digits)} | {_fmt(on, digits)} | {_fmt(on / off if off else None, 3)} | "
                     f"{_fmt(paired(phases, get) * scale, digits)} | {_fmt(paired(phases, get, ratio=True), 3)} |")
    errors = sum(sum(p.errors.values()) for p in phases)
    lines += ["", f"Errors: {errors}. Monitoring check after the run (evidence file, last "
              f"{RETENTION_S:g} s; `mlgate_drift_window_rows` gauge): "
              + "; ".join(f"drift {c.monitoring}: {c.requests_counted:,} requests counted of {c.answered:,} "
                          f"answered, gauge {c.drift_window_rows:,.0f} rows" for c in checks)
              + " (expected with drift on: every answered request plus the readiness probe; with it off: "
              "none).", ""]
    return lines


def render(argv: list[str], args: argparse.Namespace, batches: list[CallCost], background: list[BackgroundCost],
           rates: list[float], phases: list[Phase], checks: list[EvidenceCheck]) -> str:
    lines = ["# Drift monitoring overhead: `monitoring.drift` on vs off", "",
             environment_lines(argv, "loadtests.bench_drift"), ""]
    lines += verdict(batches, background, phases, args)
    if batches or background:
        lines += inproc_section(batches, background, rates, args)
    if phases:
        lines += e2e_section(phases, checks, args)
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_drift", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--models", type=Path, default=Path("models"), help="demo model repository (mlgate models "
                   "build-demo DIR)")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per end-to-end phase")
    p.add_argument("--warmup", type=float, default=2.0, help="discarded seconds before each phase")
    p.add_argument("--prime", type=float, default=5.0, help="unmeasured seconds of load on each gateway at the start")
    p.add_argument("--rate", type=float, default=300.0, help="open-loop Poisson rate, req/s")
    p.add_argument("--connections", type=int, default=64, help="open-loop connection pool")
    p.add_argument("--repeats", type=int, default=4, help="end-to-end rounds (off and on each)")
    p.add_argument("--inproc-calls", type=int, default=5_000, help="calls per in-process timing")
    p.add_argument("--inproc-repeats", type=int, default=25, help="timings per in-process measurement")
    p.add_argument("--background-iterations", type=int, default=200, help="timed publishes (and completed_slots)")
    p.add_argument("--skip-e2e", action="store_true", help="in-process measurements only (no gateway)")
    p.add_argument("--skip-inproc", action="store_true", help="end-to-end measurements only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="keep configs, state and logs here")
    p.add_argument("--out", type=Path, default=Path("loadtests/results/bench_drift.md"),
                   help="write the markdown report here (and .json beside it)")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.rate <= 0 or args.repeats < 1 or args.prime <= 0 or args.warmup < 0 \
            or args.inproc_calls < 1 or args.inproc_repeats < 1 or args.background_iterations < 1:
        p.error("--duration, --rate, --repeats, --prime and the --inproc-*/--background-* counts must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    manifest = champion_manifest(args.models)
    rates = sorted({args.rate, REFERENCE_RATE})
    batches: list[CallCost] = []
    background: list[BackgroundCost] = []
    phases: list[Phase] = []
    checks: list[EvidenceCheck] = []
    with workdir(args.workdir) as work:
        if not args.skip_inproc:
            batches = time_batches(args.models, manifest, args)
            print("--- in process: publish and drift report", file=sys.stderr, flush=True)
            background = time_background(manifest, work, rates, args)
        if not args.skip_e2e:
            phases, checks = run_end_to_end(work, manifest, args)
    report = render(argv, args, batches, background, rates, phases, checks)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report + "\n", encoding="utf-8")
    raw = {"batches": [asdict(b) for b in batches], "background": [asdict(b) for b in background],
           "phases": [asdict(p) for p in phases], "checks": [asdict(c) for c in checks]}
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
