"""What routing, sticky keys and shadow bookkeeping cost per request: a single-version route vs a 3-version split.

Usage::

    python -m loadtests.bench_routing --models models [--duration 10] [--rate 400] [--repeats 3] \\
        [--out loadtests/results/bench_routing.md]

The issue's target: "routing, stickiness and shadow bookkeeping together add under 50 µs per request at
p50". Two models are served side by side from one temporary repository built from the demo one:

* ``single``: a copy of ``breast-cancer/1`` only, routing ``champion: "1"`` (every request to it);
* ``split``: copies of ``breast-cancer`` versions 1, 2 and 3 plus version 4 (a copy of 1, the shadow),
  routing ``champion: "1"``, weights 80/10/10, shadow ``"4": 10`` (10% of the champion's answers mirrored).

Every request to either model carries a sticky header ``x-routing-key: user-<random of 10,000>``
(the same keys in the same order for both), so the request bytes differ only in the model name and
the only difference between the two is the routing each model has.

It measures two views, because neither alone answers the question on this machine:

1. **End to end** (a real gateway: ``mlgate serve`` with local Ray, Serve and ONNX Runtime): open-loop
   Poisson load at ``--rate`` req/s for ``--duration`` s against ``single``, then the same against
   ``split``, interleaved for ``--repeats`` rounds (ABBA order, so drift on the shared box does not land
   on one side only). Per phase: p50/p99 latency from the intended send time, the gateway process's
   CPU per request (``/proc/PID/stat`` utime+stime over the measured window), the CPU of all the
   server's processes (Ray replicas included) per request, Ray calls (batches) per request and shadow
   mirrors per request from ``/metrics``. This is what a caller sees, but on 2 cores shared by the
   load generator, the gateway and five Ray replicas its noise is larger than 50 µs. It also contains
   costs that are not bookkeeping, and says so: the split spreads the same traffic over three
   deployments (smaller batches, more Ray calls) and every mirrored request is one more batch on the
   shadow's deployment (a Ray call per mirrored batch).
2. **In process** (no Ray, no HTTP): the gateway's own ``Traffic``, ``Router`` and ``ShadowMirror`` built
   by the gateway's composition root from the same config (``mlgate.server.build_registry`` and
   ``open_routing``, a real state store, real ``Batcher``\\ s). First the per-request decision alone,
   with ``timeit`` (``Traffic.target`` with and without a key, ``with_key``, ``Router.choose`` keyed and
   unkeyed, ``Router.shadows``, ``compare_outputs``); then the whole request path after decoding
   (``target`` + ``Traffic.run``: batcher, fallback bookkeeping, shadow mirror and comparison), one
   request at a time, with an executor that returns fixed outputs (bookkeeping only) and with ONNX
   Runtime running the version's real model in this process (``serving.deployment.OnnxModel``). This
   isolates the bookkeeping from the box's end-to-end noise.

The report (markdown, to stdout and ``--out``; raw numbers as JSON beside it) states the machine.
Gateway logs and configs stay in a temporary folder that is removed at the end (``--workdir`` keeps them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from prometheus_client.parser import text_string_to_metric_families

from loadtests.httpclient import build_request
from loadtests.loadgen import LoadConfig, OpenLoopDriver, parse_target
from loadtests.payloads import json_body, load_rows
from loadtests.procs import (
    CLK_TCK,
    CpuMeter,
    Server,
    cpu_model,
    free_port,
    http_request,
    read_proc,
    running,
    wait_ready,
)
from loadtests.report import Recorder, latency_summary
from serving.batch_inputs import Arrays, BatchExecutor, Parts, batch_rows, joined

BASE_MODEL = "breast-cancer"
SINGLE, SPLIT = "single", "split"
MODELS = (SINGLE, SPLIT)
SHADOW = "4"
SINGLE_ROUTING: dict[str, Any] = {"champion": "1"}
SPLIT_ROUTING: dict[str, Any] = {"champion": "1", "weights": {"1": 80, "2": 10, "3": 10}, "shadows": {SHADOW: 10}}
KEY_HEADER = "x-routing-key"
KEY_SPACE = 10_000
"""Sticky keys are ``user-<n>`` with n drawn uniformly from this many users."""
N_REQUESTS = 10_000
"""Distinct pre-built requests (each with its own random key), cycled through during a phase."""
_NS = 1_000_000_000


# --------------------------------------------------------------------------- repository and config


def copy_version(source: Path, model_dir: Path, model: str, version: str) -> Path:
    """Copy one version folder to ``model_dir/version``; its manifest names the new model and version
    (the repository scanner refuses a manifest that names another folder)."""
    target = model_dir / version
    shutil.copytree(source, target)
    manifest_path = target / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["name"], manifest["version"] = model, version
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return target


def build_repository(models: Path, target: Path) -> None:
    """``single/1`` = breast-cancer/1; ``split/1..3`` = breast-cancer/1..3; ``split/4`` = breast-cancer/1."""
    base = models / BASE_MODEL
    for version in ("1", "2", "3"):
        if not (base / version / "manifest.json").is_file():
            raise SystemExit(f"error: {base / version}/manifest.json not found; build the demo repository first "
                             f"(`make models` or `mlgate models build-demo {models}`)")
    copy_version(base / "1", target / SINGLE, SINGLE, "1")
    for version in ("1", "2", "3"):
        copy_version(base / version, target / SPLIT, SPLIT, version)
    copy_version(base / "1", target / SPLIT, SPLIT, SHADOW)


def write_config(path: Path, repository: Path, state: Path, http_port: int, grpc_port: int) -> None:
    config = {
        "server": {"host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port},
        "ray": {"num_cpus": 2},
        "deployment": {"num_cpus": 0.25},  # five replicas fit into Ray's two CPUs
        "repository": str(repository),
        "state": {"path": str(state)},
        "models": {SINGLE: {"routing": SINGLE_ROUTING}, SPLIT: {"routing": SPLIT_ROUTING}},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def routing_keys(seed: int, count: int = N_REQUESTS) -> list[str]:
    rng = random.Random(seed)
    return [f"user-{rng.randrange(KEY_SPACE)}" for _ in range(count)]


# --------------------------------------------------------------------------- in process


@dataclass(frozen=True)
class DecisionRow:
    """One operation timed with timeit for both routings, in µs per call (median of repeats)."""

    operation: str
    single_us: float | None
    split_us: float | None
    note: str = ""


@dataclass(frozen=True)
class PathRow:
    """The whole in-process request path for one executor, in µs per request (median of repeats)."""

    executor: str
    single_us: float
    split_us: float
    single_runs_us: list[float]
    split_runs_us: list[float]
    mirrored: int
    split_requests: int


def asgi_headers(key: str | None) -> list[tuple[bytes, bytes]]:
    """The header list uvicorn hands the gateway for one of this bench's requests."""
    headers = [(b"host", b"127.0.0.1:8000"), (b"content-length", b"700"), (b"content-type", b"application/json")]
    if key is not None:
        headers.append((KEY_HEADER.encode(), key.encode()))
    return headers


def header_lookups(keys: Sequence[str | None]) -> list[Callable[[str], str | None]]:
    """One lookup per request, as ``gateway.http_app`` builds it (its own header function)."""
    from gateway.http_app import raw_header

    def lookup(headers: list[tuple[bytes, bytes]]) -> Callable[[str], str | None]:
        return lambda name: raw_header(headers, name)

    return [lookup(asgi_headers(key)) for key in keys]


def per_call_us(loop: Callable[[], object], calls: int, repeats: int) -> float:
    """µs per call of ``loop`` (which makes ``calls`` calls), median over ``repeats`` timeit runs."""
    times = timeit.Timer(loop).repeat(repeat=repeats, number=1)
    return statistics.median(times) / calls * 1e6


class InProcess:
    """The gateway's routing and batching layer, built from the bench's config without Ray or HTTP."""

    def __init__(self, config_path: Path, state_path: Path) -> None:
        from gateway.shadows import ShadowMirror
        from gateway.traffic import Traffic
        from mlgate.config import load_config
        from mlgate.server import build_registry, open_routing, select_entries
        from routing.store import StateStore
        from serving.repository import scan_repository

        self.config = load_config(config_path)
        self.entries = select_entries(self.config, scan_repository(self.config.repository))
        self.registry = build_registry(self.config, self.entries)
        self.store = StateStore(state_path)
        self.live = open_routing(self.config, self.registry, self.store)
        self.traffic = Traffic(self.registry, self.live, ShadowMirror())

    def attach(self, executors: dict[tuple[str, str], BatchExecutor]) -> None:
        """Give every version a fresh ``Batcher`` over ``executors[(model, version)]`` (the gateway's policy)."""
        from gateway.batcher import Batcher
        from gateway.shadows import ShadowMirror
        from mlgate.server import batch_policy
        from telemetry.metrics import BatchMetrics

        for entry in self.entries:
            served = self.registry.get(entry.model, entry.version)
            metrics = BatchMetrics.for_deployment(entry.model, entry.version)
            batcher = Batcher(served.label, executors[(entry.model, entry.version)],
                              batch_policy(self.config, served), metrics)
            served.mark_ready(batcher, "cpu")
        self.traffic.shadows = ShadowMirror()

    def close(self) -> None:
        self.store.close()


def onnx_executors(inproc: InProcess) -> dict[tuple[str, str], BatchExecutor]:
    """The replica's own class, in this process: ONNX Runtime on one thread per version."""
    from serving.deployment import OnnxModel

    out: dict[tuple[str, str], BatchExecutor] = {}
    for entry in inproc.entries:
        assert entry.manifest is not None
        model = OnnxModel(str(entry.model_file), entry.manifest.sha256, "cpu", 1.0)

        async def run(parts: Parts, infer: Callable[[Arrays], Awaitable[Arrays]] = model.infer) -> Arrays:
            return await infer(joined(parts))

        out[(entry.model, entry.version)] = run
    return out


def constant_executors(onnx: dict[tuple[str, str], BatchExecutor], one_row: Arrays) -> dict[tuple[str, str],
                                                                                                BatchExecutor]:
    """Executors that answer every batch with each version's real one-row answer repeated (no model run):
    what is left of the request path is bookkeeping."""

    async def answers(execute: BatchExecutor) -> Arrays:
        return await execute([one_row])

    out: dict[tuple[str, str], BatchExecutor] = {}
    for key, execute in onnx.items():
        fixed = asyncio.run(answers(execute))

        async def run(parts: Parts, fixed: Arrays = fixed) -> Arrays:
            rows = batch_rows(parts)
            return {name: np.repeat(value, rows, axis=0) for name, value in fixed.items()}

        out[key] = run
    return out


def time_decisions(inproc: InProcess, calls: int, repeats: int, seed: int) -> list[DecisionRow]:
    """The per-request routing decision, timed with timeit (no event loop, no model)."""
    from gateway.shadows import compare_outputs

    traffic = inproc.traffic
    keys = routing_keys(seed, calls)
    keyed = header_lookups(list(keys))
    unkeyed = header_lookups([None] * calls)
    rows: list[DecisionRow] = []

    def both(operation: str, make: Callable[[str], Callable[[], object]], note: str = "") -> None:
        rows.append(DecisionRow(operation, per_call_us(make(SINGLE), calls, repeats),
                                per_call_us(make(SPLIT), calls, repeats), note))

    def noop(model: str) -> Callable[[], object]:
        def loop() -> None:
            for header in keyed:
                _ = (model, header)
        return loop

    def target_keyed(model: str) -> Callable[[], object]:
        target = traffic.target

        def loop() -> None:
            for header in keyed:
                target(model, None, header)
        return loop

    def target_unkeyed(model: str) -> Callable[[], object]:
        target = traffic.target

        def loop() -> None:
            for header in unkeyed:
                target(model, None, header)
        return loop

    def target_then_body_key(model: str) -> Callable[[], object]:
        target, with_key = traffic.target, traffic.with_key
        pairs = list(zip(unkeyed, keys, strict=True))

        def loop() -> None:
            for header, key in pairs:
                with_key(target(model, None, header), key)
        return loop

    def choose(model: str, use_keys: bool) -> Callable[[], object]:
        active = inproc.live.get(model)
        assert active is not None
        router_choose = active.router.choose
        route_keys: list[str | None] = list(keys) if use_keys else [None] * calls

        def loop() -> None:
            for key in route_keys:
                router_choose(key, None)
        return loop

    def shadows(model: str) -> Callable[[], object]:
        active = inproc.live.get(model)
        assert active is not None
        draw = active.router.shadows

        def loop() -> None:
            for _ in range(calls):
                draw()
        return loop

    both("loop overhead (no call; subtract for absolute costs)", noop)
    both(f"`Traffic.target`, key in `{KEY_HEADER}` header", target_keyed, "what every request of the e2e run does")
    both("`Traffic.target`, no key", target_unkeyed, "split: random pick by weight")
    both("`Traffic.target` (no header key) + `with_key` (body `routing_key`)", target_then_body_key,
         "routes twice, as for an OIP `routing_key` parameter")
    both("`Router.choose(key)`", lambda m: choose(m, True), "split: rendezvous hash over 3 versions")
    both("`Router.choose(None)`", lambda m: choose(m, False))
    both("`Router.shadows()`", shadows, "per champion answer; split: one 10% draw")

    fixed: Arrays = {"probabilities": np.array([[0.1, 0.9]], dtype=np.float32), "label": np.array([1], dtype=np.int64)}
    other: Arrays = {"probabilities": np.array([[0.2, 0.8]], dtype=np.float32), "label": np.array([1], dtype=np.int64)}

    def compare() -> None:
        for _ in range(calls):
            compare_outputs(fixed, other, 1)

    rows.append(DecisionRow("`compare_outputs`, 1 row", None, per_call_us(compare, calls, repeats),
                            "per mirrored request only (off the caller's path)"))
    return rows


async def time_paths(inproc: InProcess, executor: str, requests: int, repeats: int, seed: int) -> PathRow:
    """``target`` + ``Traffic.run`` per request, one at a time, shadows drained inside the timed window."""
    traffic = inproc.traffic
    lookups = header_lookups(list(routing_keys(seed, requests)))
    data = load_rows().astype(np.float32)
    inputs = [{"features": data[i % len(data)][None, :]} for i in range(requests)]

    async def one_pass(model: str, count: int) -> float:
        target, run = traffic.target, traffic.run
        started = time.perf_counter_ns()
        for i in range(count):
            await run(target(model, None, lookups[i]), inputs[i], 1, None)
        await traffic.shadows.drain()
        return (time.perf_counter_ns() - started) / count / 1e3

    for model in MODELS:  # warm: first batches, task creation, metrics children
        await one_pass(model, min(requests, 500))
    mirrored_before = sum(t.compared + t.failed + t.dropped for t in traffic.shadows.tally(SPLIT).values())
    runs: dict[str, list[float]] = {SINGLE: [], SPLIT: []}
    for r in range(repeats):
        for model in (MODELS if r % 2 == 0 else MODELS[::-1]):
            runs[model].append(await one_pass(model, requests))
    tally = traffic.shadows.tally(SPLIT).values()
    mirrored = sum(t.compared + t.failed + t.dropped for t in tally) - mirrored_before
    return PathRow(executor, statistics.median(runs[SINGLE]), statistics.median(runs[SPLIT]),
                   runs[SINGLE], runs[SPLIT], mirrored, requests * repeats)


def run_in_process(config_path: Path, work: Path, args: argparse.Namespace) -> tuple[list[DecisionRow], list[PathRow]]:
    import uvloop

    inproc = InProcess(config_path, work / "inproc-state.db")
    try:
        onnx = onnx_executors(inproc)
        one_row = {"features": load_rows()[:1].astype(np.float32)}
        constant = constant_executors(onnx, one_row)
        inproc.attach(constant)
        print("--- in process: routing decision (timeit)", file=sys.stderr, flush=True)
        decisions = time_decisions(inproc, args.inproc_calls, args.inproc_repeats, args.seed)
        paths = []
        for name, executors in (("fixed outputs (bookkeeping only)", constant),
                                ("ONNX Runtime in process", onnx)):
            print(f"--- in process: request path, {name}", file=sys.stderr, flush=True)
            inproc.attach(executors)
            paths.append(uvloop.run(time_paths(inproc, name, args.inproc_requests, args.inproc_repeats, args.seed)))
        return decisions, paths
    finally:
        inproc.close()


# --------------------------------------------------------------------------- end to end


@dataclass
class Phase:
    """One open-loop run against one model."""

    round: int
    model: str
    offered: int
    ok: int
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float
    service_p50_ms: float
    gateway_cpu_us: float
    """Gateway process CPU (utime+stime, all threads) over the measured window, per offered request."""
    server_cpu_us: float
    """CPU of every process of the server (gateway, Ray, Serve, replicas), same window, per offered request."""
    ray_calls_per_request: float
    mirrored_per_request: float
    fallbacks: int
    foreign_cpu_pct: float
    rows_by_version: dict[str, float] = field(default_factory=dict)
    round_trip_ms_by_version: dict[str, float] = field(default_factory=dict)
    """Mean Ray round trip of a batch (``mlgate_batch_execution_seconds``), by version."""


def requests_for(model: str, port: int, keys: list[str]) -> list[bytes]:
    data = load_rows()
    host = f"127.0.0.1:{port}"
    out = []
    for i, key in enumerate(keys):
        body = json_body(data[i % len(data)][None, :])
        out.append(build_request("POST", host, f"/v2/models/{model}/infer", body.body,
                                 {**body.headers, KEY_HEADER: key}))
    return out


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` by (name, sorted labels)."""
    status, body = http_request(port, "GET", "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def metric_sum(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
               **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def settle(port: int, timeout_s: float = 30.0) -> None:
    """Wait until no rows are queued anywhere (and shadows have caught up), so one phase does not load the next."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and metric_sum(scrape(port), "mlgate_queued_rows") > 0:
        time.sleep(0.1)
    time.sleep(0.5)


def cpu_ticks(pids: list[int]) -> int:
    """utime+stime of ``pids`` (all their threads), in clock ticks; processes gone count 0."""
    total = 0
    for pid in pids:
        info = read_proc(pid)
        if info is not None:
            total += info.cpu_ticks
    return total


async def drive(cfg: LoadConfig, requests: list[bytes], gateway_pid: int,
                server_pids: list[int]) -> tuple[Recorder, int, float, float]:
    """One open-loop run; (recorder, offered in window, gateway CPU s, server CPU s) over the measured window."""
    rec = Recorder()
    driver = OpenLoopDriver(cfg, parse_target(cfg.url), requests, rec)
    t0 = time.perf_counter_ns() + 10_000_000
    rec.measure_from_ns = t0 + int(cfg.warmup_s * _NS)
    rec.measure_until_ns = rec.measure_from_ns + int(cfg.duration_s * _NS)
    marks: list[tuple[int, int]] = []

    async def mark(at_ns: int) -> None:
        delay = at_ns - time.perf_counter_ns()
        if delay > 0:
            await asyncio.sleep(delay / _NS)
        marks.append((cpu_ticks([gateway_pid]), cpu_ticks(server_pids)))

    marker = asyncio.gather(mark(rec.measure_from_ns), mark(rec.measure_until_ns))
    try:
        await asyncio.wait_for(driver.run(t0, rec.measure_until_ns),
                               cfg.warmup_s + cfg.duration_s + cfg.timeout_s + 30.0)
    except TimeoutError:
        driver.abandon()
    await marker
    (g0, s0), (g1, s1) = marks
    return rec, driver.offered, (g1 - g0) / CLK_TCK, (s1 - s0) / CLK_TCK


def run_phase(server: Server, port: int, model: str, requests: list[bytes], round_no: int,
              args: argparse.Namespace) -> Phase:
    import uvloop

    cfg = LoadConfig(url=f"http://127.0.0.1:{port}", model=model, mode="open", rate=args.rate, arrival="poisson",
                     connections=args.connections, duration_s=args.duration, warmup_s=args.warmup, timeout_s=5.0,
                     quiet=True, seed=args.seed + round_no)
    server_pids = [p.pid for p in server.alive()]
    before = scrape(port)
    meter = CpuMeter(server)
    rec, offered, gateway_s, server_s = uvloop.run(drive(cfg, requests, server.pid, server_pids))
    _, foreign = meter.result()
    settle(port)
    after = scrape(port)

    def delta(name: str, **labels: str) -> float:
        return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)

    answered = max(rec.live_done, 1)  # every response of the phase (warm-up included), as the metric deltas
    versions = sorted({dict(ls).get("version", "") for (n, ls) in after
                       if n == "mlgate_batch_rows_sum" and dict(ls).get("model") == model})
    rows = {v: delta("mlgate_batch_rows_sum", model=model, version=v) for v in versions}
    round_trips = {v: 1e3 * delta("mlgate_batch_execution_seconds_sum", model=model, version=v)
                   / max(delta("mlgate_batch_execution_seconds_count", model=model, version=v), 1.0)
                   for v in versions}
    total_rows = sum(rows.values()) or 1.0
    lat, service = latency_summary(rec.latencies), latency_summary(rec.service)
    per_request = 1e6 / max(offered, 1)
    return Phase(
        round=round_no, model=model, offered=offered, ok=len(rec.latencies), errors=dict(sorted(rec.errors.items())),
        p50_ms=lat.get("p50", float("nan")), p99_ms=lat.get("p99", float("nan")),
        service_p50_ms=service.get("p50", float("nan")),
        gateway_cpu_us=gateway_s * per_request, server_cpu_us=server_s * per_request,
        ray_calls_per_request=delta("mlgate_batch_rows_count", model=model) / answered,
        mirrored_per_request=delta("mlgate_shadow_requests_total", model=model) / answered,
        fallbacks=int(delta("mlgate_fallbacks_total", model=model)), foreign_cpu_pct=foreign,
        rows_by_version={v: r / total_rows for v, r in rows.items()}, round_trip_ms_by_version=round_trips,
    )


def run_end_to_end(config_path: Path, work: Path, port: int, args: argparse.Namespace) -> list[Phase]:
    from loadtests.bench_oip import mlgate_command

    command = mlgate_command(config_path)
    if command is None:
        raise SystemExit("error: no mlgate CLI in this environment")
    keys = routing_keys(args.seed)
    probe = json_body(load_rows()[:1]).body
    phases: list[Phase] = []
    with running("mlgate", command, work / "mlgate.log") as server:
        startup = wait_ready(server, port, f"/v2/models/{SPLIT}/infer", probe, 300.0, "/v2/health/ready")
        wait_ready(server, port, f"/v2/models/{SINGLE}/infer", probe, 60.0)
        print(f"--- mlgate ready after {startup:.0f} s (gateway pid {server.pid})", file=sys.stderr, flush=True)
        requests = {model: requests_for(model, port, keys) for model in MODELS}
        for r in range(args.repeats):
            for model in (MODELS if r % 2 == 0 else MODELS[::-1]):
                phase = run_phase(server, port, model, requests[model], r, args)
                phases.append(phase)
                print(f"  round {r + 1} {model:6s} ok {phase.ok}/{phase.offered} p50 {phase.p50_ms:6.2f} ms "
                      f"p99 {phase.p99_ms:6.2f} ms gateway CPU {phase.gateway_cpu_us:6.0f} µs/req "
                      f"server CPU {phase.server_cpu_us:6.0f} µs/req Ray calls/req "
                      f"{phase.ray_calls_per_request:.3f} mirrored/req {phase.mirrored_per_request:.3f} "
                      f"errors {sum(phase.errors.values())} other CPU {phase.foreign_cpu_pct:.0f}%",
                      file=sys.stderr, flush=True)
    return phases


# --------------------------------------------------------------------------- report


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or value != value else f"{value:,.{digits}f}"


def environment(argv: list[str]) -> str:
    import onnxruntime
    import ray

    return "\n".join([
        f"- command: `{' '.join([Path(sys.executable).name, '-m', 'loadtests.bench_routing', *argv])}`",
        f"- date: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
        f"- machine: {cpu_model()}; nproc {len(os.sched_getaffinity(0))} (os.cpu_count {os.cpu_count()}); "
        "load generator, gateway, Ray and replicas share them",
        f"- Python {platform.python_version()}, ray {ray.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"numpy {np.__version__}",
    ])


def e2e_section(phases: list[Phase], args: argparse.Namespace) -> list[str]:
    by_model = {m: [p for p in phases if p.model == m] for m in MODELS}
    rounds = sorted({p.round for p in phases})
    lines = [
        "## End to end (real gateway, Ray, ONNX Runtime)", "",
        f"Open loop, Poisson {args.rate:g} req/s, {args.warmup:g} s warm-up + {args.duration:g} s measured per "
        f"phase, {args.connections} connections, single-row JSON requests, every request with "
        f"`{KEY_HEADER}: user-<random of {KEY_SPACE:,}>`; latency from the intended send time; "
        f"{args.repeats} round(s), order single/split then split/single (ABBA).", "",
        "| round | model | offered | ok | errors | p50 ms | p99 ms | gateway CPU µs/req | server CPU µs/req "
        "| Ray calls/req | mirrored/req | other CPU % |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in phases:
        errors = sum(p.errors.values())
        lines.append(f"| {p.round + 1} | {p.model} | {p.offered} | {p.ok} | {errors} | {p.p50_ms:.2f} | "
                     f"{p.p99_ms:.2f} | {p.gateway_cpu_us:,.0f} | {p.server_cpu_us:,.0f} | "
                     f"{p.ray_calls_per_request:.3f} | {p.mirrored_per_request:.3f} | {p.foreign_cpu_pct:.0f} |")

    def paired(get: Callable[[Phase], float]) -> float:
        """Median over rounds of (split - single) within the round."""
        diffs = []
        for r in rounds:
            single = [get(p) for p in by_model[SINGLE] if p.round == r]
            split = [get(p) for p in by_model[SPLIT] if p.round == r]
            if single and split:
                diffs.append(split[0] - single[0])
        return _median(diffs)

    metrics: list[tuple[str, Callable[[Phase], float], float, int]] = [
        ("p50 latency (µs)", lambda p: p.p50_ms, 1e3, 0),
        ("p99 latency (µs)", lambda p: p.p99_ms, 1e3, 0),
        ("p50 from actual send (µs)", lambda p: p.service_p50_ms, 1e3, 0),
        ("gateway process CPU per request (µs)", lambda p: p.gateway_cpu_us, 1.0, 0),
        ("all server processes' CPU per request (µs)", lambda p: p.server_cpu_us, 1.0, 0),
        ("Ray calls (batches) per request", lambda p: p.ray_calls_per_request, 1.0, 3),
        ("shadow mirrors per request", lambda p: p.mirrored_per_request, 1.0, 3),
    ]
    lines += ["", "Medians over rounds; the difference is the median of the per-round differences (paired).", "",
              "| measure | single | split | split - single | split / single |", "|---|---:|---:|---:|---:|"]
    for name, get, scale, digits in metrics:
        single = _median([get(p) for p in by_model[SINGLE]]) * scale
        split = _median([get(p) for p in by_model[SPLIT]]) * scale
        ratio = split / single if single else float("nan")
        lines.append(f"| {name} | {_fmt(single, digits)} | {_fmt(split, digits)} | "
                     f"{_fmt(paired(get) * scale, digits)} | {_fmt(ratio)} |")
    shares: dict[str, list[float]] = {}
    for p in by_model[SPLIT]:
        for version, share in p.rows_by_version.items():
            shares.setdefault(version, []).append(share)
    trips: dict[str, list[float]] = {}
    for p in phases:
        for version, ms in p.round_trip_ms_by_version.items():
            trips.setdefault(f"{p.model} v{version}", []).append(ms)
    fallbacks = sum(p.fallbacks for p in phases)
    errors = sum(sum(p.errors.values()) for p in phases)
    split_shares = ", ".join(f"v{v} {100 * _median(s):.1f}%" for v, s in sorted(shares.items()))
    lines += ["", f"Rows executed per version of `split` (shadow included; expect ~80/10/10 plus ~8% on "
              f"v{SHADOW}): {split_shares or '-'}. Fallbacks: {fallbacks}. Errors: {errors}.", "",
              "Mean Ray round trip per batch (gateway to replica and back), by version, median over rounds: "
              + ", ".join(f"{name} {_median(ms):.2f} ms" for name, ms in sorted(trips.items()))
              + " (a version that gets a tenth of the traffic idles between batches, and a call to an idle "
              "replica can cost more than one to a busy one: not routing bookkeeping, but part of what a split "
              "costs end to end).", ""]
    return lines


def inproc_section(decisions: list[DecisionRow], paths: list[PathRow], args: argparse.Namespace) -> list[str]:
    lines = [
        "## In process (no Ray, no HTTP): the gateway's own routing objects", "",
        f"Routing decision, `timeit`: {args.inproc_calls:,} calls per timing (each with its own random key), "
        f"median of {args.inproc_repeats}; µs per call including the loop (first row).", "",
        "| operation | single-version route | 3-version sticky split + 10% shadow | difference | note |",
        "|---|---:|---:|---:|---|",
    ]
    for row in decisions:
        diff = row.split_us - row.single_us if row.split_us is not None and row.single_us is not None else None
        lines.append(f"| {row.operation} | {_fmt(row.single_us, 3)} | {_fmt(row.split_us, 3)} | "
                     f"{_fmt(diff, 3)} | {row.note} |")
    lines += [
        "", f"Request path after decoding, one request at a time: `Traffic.target` (sticky header) + "
        f"`Traffic.run` (batcher, fallback bookkeeping, shadow mirror task, comparison, tallies), "
        f"{args.inproc_requests:,} requests per timing, shadows drained inside the window, median of "
        f"{args.inproc_repeats} (ABBA order).", "",
        "| executor | single µs/req | split µs/req | split - single | split / single | mirrored |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for p in paths:
        lines.append(f"| {p.executor} | {p.single_us:.2f} | {p.split_us:.2f} | {p.split_us - p.single_us:.2f} | "
                     f"{p.split_us / p.single_us:.2f} | {p.mirrored} of {p.split_requests} "
                     f"({100 * p.mirrored / max(p.split_requests, 1):.1f}%) |")
    lines.append("")
    return lines


def verdict(decisions: list[DecisionRow], paths: list[PathRow], phases: list[Phase]) -> list[str]:
    lines = ["## Against the target (< 50 µs per request at p50)", ""]
    target_row = next((d for d in decisions if d.operation.startswith("`Traffic.target`, key")), None)
    if target_row is not None and target_row.single_us is not None and target_row.split_us is not None:
        lines.append(f"- routing decision (in process): {target_row.split_us - target_row.single_us:+.2f} µs "
                     f"per request ({target_row.single_us:.2f} → {target_row.split_us:.2f} µs)")
    for p in paths:
        lines.append(f"- request path in process, {p.executor}: {p.split_us - p.single_us:+.2f} µs per request")
    if phases:
        single = [p for p in phases if p.model == SINGLE]
        split = [p for p in phases if p.model == SPLIT]
        d_p50 = (_median([p.p50_ms for p in split]) - _median([p.p50_ms for p in single])) * 1e3
        d_cpu = _median([p.gateway_cpu_us for p in split]) - _median([p.gateway_cpu_us for p in single])
        lines.append(f"- end to end: p50 {d_p50:+.0f} µs, gateway CPU {d_cpu:+.0f} µs per request (medians; "
                     "includes the extra Ray calls of spreading traffic over 3 deployments and of mirrored "
                     "batches, and the noise of a 2-core box)")
    lines.append("")
    return lines


def render(argv: list[str], args: argparse.Namespace, decisions: list[DecisionRow], paths: list[PathRow],
           phases: list[Phase]) -> str:
    lines = ["# Routing overhead: single-version route vs 3-version sticky split with a 10% shadow", "",
             environment(argv), ""]
    lines += verdict(decisions, paths, phases)
    if decisions or paths:
        lines += inproc_section(decisions, paths, args)
    if phases:
        lines += e2e_section(phases, args)
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_routing", description=__doc__.split("\n")[0])
    p.add_argument("--models", type=Path, default=Path("models"), help="demo model repository (mlgate models "
                   "build-demo DIR)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per end-to-end phase")
    p.add_argument("--warmup", type=float, default=2.0, help="discarded seconds before each phase")
    p.add_argument("--rate", type=float, default=400.0, help="open-loop Poisson rate, req/s")
    p.add_argument("--connections", type=int, default=64, help="open-loop connection pool")
    p.add_argument("--repeats", type=int, default=3, help="end-to-end rounds (single and split each)")
    p.add_argument("--inproc-calls", type=int, default=20_000, help="calls per timeit timing")
    p.add_argument("--inproc-requests", type=int, default=5_000, help="requests per in-process path timing")
    p.add_argument("--inproc-repeats", type=int, default=7, help="timings per in-process measurement")
    p.add_argument("--skip-e2e", action="store_true", help="in-process measurements only (no gateway)")
    p.add_argument("--skip-inproc", action="store_true", help="end-to-end measurements only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="keep configs, state and logs here")
    p.add_argument("--out", type=Path, default=None, help="write the markdown report here (and .json beside it)")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.rate <= 0 or args.repeats < 1 or args.inproc_calls < 1 \
            or args.inproc_requests < 1 or args.inproc_repeats < 1:
        p.error("--duration, --rate, --repeats and the --inproc-* counts must be positive")
    return args


@contextmanager
def workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="mlgate-bench-routing-") as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    decisions: list[DecisionRow] = []
    paths: list[PathRow] = []
    phases: list[Phase] = []
    with workdir(args.workdir) as work:
        repository = work / "repository"
        if repository.exists():
            shutil.rmtree(repository)
        build_repository(args.models, repository)
        port = free_port()
        config_path = work / "mlgate.yaml"
        state = work / "state.db"
        for stale in work.glob("*state.db*"):
            stale.unlink()
        write_config(config_path, repository, state, port, free_port())
        if not args.skip_inproc:
            decisions, paths = run_in_process(config_path, work, args)
        if not args.skip_e2e:
            phases = run_end_to_end(config_path, work, port, args)
    report = render(argv, args, decisions, paths, phases)
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n", encoding="utf-8")
        raw = {"decisions": [asdict(d) for d in decisions], "paths": [asdict(p) for p in paths],
               "phases": [asdict(p) for p in phases]}
        args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
