"""Composition root: wire the repository, Ray Serve, the batchers and both front ends.

Order of start-up, chosen so that probes tell the truth at every moment:
the ports are bound (not listening) first, so that nothing takes them
meanwhile; Ray and Serve start next (synchronously, in the main thread, as
ray.init expects); then the HTTP and gRPC servers listen, answering live=true
and ready=false; then every model version deploys in parallel and becomes ready
(or unavailable, with the reason) on its own; the server turns ready when
every model's default version is. SIGTERM/SIGINT stop intake, let in-flight
requests finish within the grace period, then shut Serve (and a Ray this
process started) down.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import uvicorn

from gateway.admin_api import TokenBeforeBody, build_admin_app
from gateway.auth import AuthState, Role, TokenRecord
from gateway.batcher import Batcher, BatchPolicy
from gateway.body_budget import BodyBudget
from gateway.grpc_server import build_grpc_server
from gateway.http_app import OipHttpApp
from gateway.http_protocol import listener_config
from gateway.loop_load import LoopLoad
from gateway.registry import ModelRegistry, ServedVersion, VersionState
from gateway.service import InferenceService
from gateway.shadows import Comparison, ShadowMirror
from gateway.tensors import placeholder_inputs
from gateway.traffic import policy_problems
from mlgate import __version__
from mlgate.config import MlgateConfig
from mlgate.workers import MULTIPROCESS_ENV, WorkerPool, hidden_from_children, worker_config
from routing.champion import pick_default_version
from routing.controller import LEASE, RUNNING, RolloutController
from routing.live import ActiveRouting, LiveRouting
from routing.policy import RoutingPolicy
from routing.rollout import RolloutRecord, RolloutState
from routing.store import StateStore
from serving.ray_backend import DeployedVersion, RayServeBackend, ReplicaSettings
from serving.repository import RepositoryEntry, scan_repository
from telemetry.drift import DriftReport, DriftView
from telemetry.evidence import SLOT_S, DriftMonitor
from telemetry.evidence_store import EvidenceStore, evidence_path
from telemetry.metrics import (
    ROLLOUT_TRANSITIONS,
    BatchMetrics,
    forget_process,
    multiprocess_dir,
    record_build,
    record_drift,
    record_rollout,
    record_routing,
    refresh_sampled,
    track_body_budget,
    track_loop_load,
    transport_counter,
)
from telemetry.tracing import build_tracing

log = logging.getLogger("mlgate")


class StartupError(Exception):
    """The gateway cannot start as configured; the message says why in one line."""


def reserve_port(what: str, host: str, port: int, share: bool) -> socket.socket:
    """A socket bound to ``host:port`` but not listening yet (port 0: a free one), for ``what`` to serve on.

    Bound before Ray starts, not after: Ray's own servers pick free ports during its 15-30 s start-up
    (a random port that a plain bind succeeds on), and once one of them took the configured port, a
    client (or a readiness probe) found Ray's metrics exporter there, answering 200 to every path.
    A bound port fails such a bind and is never handed out by a bind to port 0. Not listening, so
    that a client connecting meanwhile is refused instead of left waiting, and so that gRPC, which
    cannot take a socket, can still bind the port while this one holds it (both SO_REUSEADDR). A
    process binding this very port with SO_REUSEADDR could still listen first; the gateway's own
    listen then stops start-up with one line (``serve_http``), never serves beside it.
    ``share``: SO_REUSEPORT, for the gateway's own workers, which share the ports on purpose.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and grpc bind
    if share:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen for {what} on {host}:{port}: {exc.strerror}") from None
    return sock


def select_entries(config: MlgateConfig, entries: list[RepositoryEntry]) -> list[RepositoryEntry]:
    """The repository's versions minus those the config leaves out."""
    chosen = []
    for entry in entries:
        wanted = config.models.get(entry.model)
        if wanted is not None and wanted.versions is not None and entry.version not in wanted.versions:
            continue
        chosen.append(entry)
    return chosen


def repository_problems(config: MlgateConfig, found: list[RepositoryEntry]) -> list[str]:
    """What the config names that the repository does not hold, each with the versions it does hold.

    An empty repository started, answered ready and served nothing; a ``versions`` entry, or a
    ``version_batching`` or ``version_faults`` key, naming a version the repository lacks was dropped
    without a word (the version missing, the override never applied). A model the config names but the
    repository lacks stays a warning (``build_registry``): its overrides wait for it.
    """
    if not found:
        return [f"model repository {config.repository} holds no model versions "
                "(expected MODEL/VERSION/ folders, each with manifest.json and model.onnx)"]
    held: dict[str, list[str]] = {}
    for entry in found:
        held.setdefault(entry.model, []).append(entry.version)
    problems = []
    for name, model in config.models.items():
        if name not in held:
            continue
        versions = held[name]
        served = [v for v in versions if model.versions is None or v in model.versions]
        for field_name, named, among in (("versions", model.versions or [], versions),
                                         ("version_batching", list(model.version_batching), served),
                                         ("version_faults", list(model.version_faults), served)):
            problems += [f"models.{name}.{field_name}: version '{v}' is not "
                         f"{'in the repository' if among is versions else 'served'}; versions: {', '.join(among)}"
                         for v in named if v not in among]
    return problems


def build_registry(config: MlgateConfig, entries: list[RepositoryEntry]) -> ModelRegistry:
    registry = ModelRegistry(champions={name: m.champion for name, m in config.models.items()})
    for entry in entries:
        served = ServedVersion(entry.model, entry.version, entry.manifest)
        if entry.error:
            served.mark_unavailable(entry.error)
            log.error("refusing %s: %s", served.label, entry.error, extra=_model_event(served, "model_unavailable"))
        registry.add(served)
    for name, model in config.models.items():
        if name not in registry.versions:
            log.warning("config names model '%s' but the repository has no servable version of it", name)
        elif model.champion and model.champion not in registry.versions[name]:
            log.error("model '%s': champion version '%s' is not in the repository", name, model.champion)
    return registry


def batch_policy(config: MlgateConfig, entry: ServedVersion) -> BatchPolicy:
    """One gateway process's batching for a version. Its slots are its share of the replicas' batches in flight,
    rounded down, at least one: every one of ``server.workers`` processes batches on its own, and with the whole
    count each, the replicas could get workers times as many batches at once as configured (16 on one replica
    from 8 processes in the H100 runs), while each process's batches were smaller."""
    batching = config.batching_for(entry.model, entry.version)
    replicas = config.deployment_for(entry.model).replicas
    model_max = entry.manifest.max_batch_rows if entry.manifest else batching.max_batch_rows
    return BatchPolicy(
        max_batch_rows=min(batching.max_batch_rows, model_max),
        max_wait_s=batching.max_wait_ms / 1000.0,
        max_inflight=max(1, batching.max_inflight_batches * replicas // config.server.workers),
        objective_s=None if batching.latency_objective_ms is None else batching.latency_objective_ms / 1000.0,
        max_queue_rows=batching.max_queue_rows,
        variable_shapes=entry.manifest is not None and any(-1 in spec.shape[1:] for spec in entry.manifest.inputs),
    )


def replica_settings(config: MlgateConfig, model: str, version: str) -> ReplicaSettings:
    deployment = config.deployment_for(model)
    faults = config.faults_for(model, version)
    return ReplicaSettings(
        replicas=deployment.replicas,
        num_cpus=deployment.num_cpus,
        device=deployment.device,
        max_ongoing_requests=config.batching_for(model, version).max_inflight_batches + 1,
        inject_delay_s=faults.delay_ms / 1000.0 if faults else 0.0,
        inject_error_rate=faults.error_rate if faults else 0.0,
        direct_channel=deployment.direct_channel,
    )


def initial_policy(config: MlgateConfig, registry: ModelRegistry, model: str) -> RoutingPolicy:
    """A model's routing on its first start: the config's ``routing``, else all traffic to its champion
    (configured, else the newest version that can be served)."""
    override = config.models.get(model)
    if override is not None and override.routing is not None:
        return override.routing
    champion = override.champion if override is not None else None
    if champion is None:
        servable = ((e.version, e.manifest is not None and e.state is not VersionState.UNAVAILABLE)
                    for e in registry.versions_of(model))
        champion = pick_default_version(None, servable)
    assert champion is not None  # a model in the registry has at least one version
    return RoutingPolicy.initial(champion)


def open_routing(config: MlgateConfig, registry: ModelRegistry, store: StateStore) -> LiveRouting:
    """Seed every model's routing the first time it is served, then load what the store holds.

    The store wins over the config from then on (changes go through the admin API and are
    audited); the log says so when the two differ, so nobody edits the config and wonders.
    """
    def applied(active: ActiveRouting) -> None:
        registry.champions[active.stored.model] = active.policy.champion
        policy = active.policy
        shares, shadows = policy.shares(), {v: p / 100 for v, p in policy.shadows.items()}
        record_routing(active.stored.model, active.revision, policy.champion, shares, shadows,
                       list(registry.versions.get(active.stored.model, {})))
        log.info("model '%s': routing revision %d applied (champion %s)", active.stored.model, active.revision,
                 policy.champion, extra={"event": "routing_changed", "model": active.stored.model,
                                         "revision": active.revision, "champion": policy.champion,
                                         "shares": shares, "shadows": shadows})

    live = LiveRouting(store, on_change=applied)
    for model in registry.models():
        wanted = initial_policy(config, registry, model)
        if problems := policy_problems(wanted, model, registry, require_ready=False):
            raise StartupError(f"models.{model}.routing: " + "; ".join(problems))
        stored = store.seed_routing(model, wanted.model_dump(mode="json"), actor="config")
        if stored.revision > 1 and stored.policy != wanted.model_dump(mode="json"):
            log.info("model '%s': routing revision %d from %s applies (changed through the admin API); the "
                     "config's routing/champion only seeds a model's first start", model, stored.revision, store.path)
    live.reload()
    for model in registry.models():
        active = live.get(model)
        if active is not None and (problems := policy_problems(active.policy, model, registry, require_ready=False)):
            log.error("model '%s': stored routing revision %d names versions this gateway does not serve (%s); "
                      "requests routed to them get 503 until an operator changes the routing",
                      model, active.revision, "; ".join(problems))
    return live


def configured_tokens(config: MlgateConfig) -> list[TokenRecord]:
    return [TokenRecord(t.name, Role.parse(t.role), t.sha256, created_by="config") for t in config.auth.tokens]


@dataclass
class Gateway:
    config: MlgateConfig
    backend: RayServeBackend
    registry: ModelRegistry
    service: InferenceService
    entries: list[RepositoryEntry]
    store: StateStore
    live: LiveRouting
    auth: AuthState
    monitor: DriftMonitor
    evidence: EvidenceStore
    rollouts: RolloutController = field(init=False)
    drift: DriftView = field(init=False)
    process_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{time.time():.0f}")

    def __post_init__(self) -> None:
        self.drift = DriftView(self.monitor, self.evidence)
        self.rollouts = RolloutController(
            self.store, lambda model, policy: policy_problems(policy, model, self.registry), self._evidence)

    def _evidence(self, model: str, champion: str, challenger: str, window_s: float,
                  now: float) -> tuple[DriftReport, DriftReport] | None:
        """Both versions over the window, merged across processes; None if either is not monitored here."""
        reports = self.drift.reports(model, [champion, challenger], champion, window_s, now)
        return (reports[0], reports[1]) if len(reports) == 2 else None

    async def run_rollouts(self) -> None:
        """Drive every running rollout each tick while this process holds the controller lease."""
        while True:
            await asyncio.sleep(self.config.rollouts.tick_s)
            try:
                for record in await asyncio.to_thread(self._rollout_tick, time.time()):
                    ROLLOUT_TRANSITIONS.labels(model=record.spec.model, to=record.state.value).inc()
                    log.log(logging.WARNING if record.state is RolloutState.ROLLED_BACK else logging.INFO,
                            "rollout of model '%s' version '%s': %s (%s)", record.spec.model,
                            record.spec.challenger, record.state.value, record.reason,
                            extra={"event": "rollout_transition", "model": record.spec.model,
                                   "challenger": record.spec.challenger, "state": record.state.value,
                                   "percent": record.challenger_percent, "reason": record.reason})
            except Exception:
                log.exception("rollout controller tick failed; retrying")

    def _rollout_tick(self, now: float) -> list[RolloutRecord]:
        """The lease is only taken (written) while some rollout runs: an idle controller writes nothing.

        Nor by a process still loading its models: it has no monitors yet, so it cannot read the
        evidence, and judging without it would flip a running rollout to inconclusive (and back once
        loaded), audited, every time a supervisor restarts.
        """
        if not self.service.started:
            return []
        rollouts = self.store.all_rollouts()
        if not any(r.record["state"] in RUNNING for r in rollouts.values()):
            return []
        if not self.store.hold_lease(LEASE, self.process_id, self.config.rollouts.lease_ttl_s, now):
            return []
        return self.rollouts.tick_all(rollouts, now)

    def _export_rollouts(self) -> None:
        """Rollout gauges from the state file: on start and whenever it changed (any process's commit)."""
        states = [s.value for s in RolloutState]
        for model, stored in self.store.all_rollouts().items():
            record = stored.record
            record_rollout(model, record["spec"]["challenger"], record["state"], record["step"],
                           record["challenger_percent"], states)

    async def publish_evidence(self) -> None:
        """Every second, hand the slots the monitors completed to the evidence file (merged across processes)."""
        while True:
            await asyncio.sleep(SLOT_S)
            now = time.time()
            slots = [(m.model, m.version, m.layout, slot, counts)
                     for m in self.monitor.all() for slot, counts in m.completed_slots(now)]
            try:
                await asyncio.to_thread(self.evidence.publish, self.process_id, slots, now)
            except Exception:
                log.exception("cannot write evidence to %s; drift and rollout checks miss these seconds",
                              self.evidence.path)

    async def export_drift(self) -> None:
        """Recompute the drift gauges from the merged evidence every ``monitoring.refresh_s``."""
        monitoring = self.config.monitoring
        while True:
            await asyncio.sleep(monitoring.refresh_s)
            try:
                reports = await asyncio.to_thread(self._drift_reports, monitoring.window_s)
            except Exception:
                log.exception("cannot compute drift metrics")
                continue
            for report in reports:
                record_drift(report)

    def _drift_reports(self, window_s: float) -> list[DriftReport]:
        now = time.time()
        return [report for model in self.registry.models()
                for report in self.drift.reports(model, [e.version for e in self.registry.versions_of(model)],
                                                 self.registry.champions.get(model), window_s, now)]

    async def follow_state(self) -> None:
        """Apply routing and token changes other processes commit to the state file, within a poll interval."""
        seen: int | None = None  # reload once at first: commits made while this process started count too
        while True:
            await asyncio.sleep(self.config.state.poll_interval_s)
            try:
                version = self.store.data_version()
                if version != seen:
                    self.live.reload()
                    self.auth.reload()
                    self._export_rollouts()
                    seen = version  # only once both reloads succeeded: a failed one is retried next poll
            except Exception:  # a locked or briefly unreadable file: keep serving the last good state
                log.exception("cannot read the state file %s; keeping the current routing", self.store.path)

    async def load_models(self, deploy: bool = True) -> None:
        """Deploy every servable version, then warm each up in turn and let it take traffic.

        Warm-ups wait until every replica is up and run one at a time: a latency model timed
        while other replicas start (process spawn, imports) or warm up would learn their load.
        A worker process (``deploy=False``) uses the deployments its supervisor made.
        """
        servable = [e for e in self.entries if e.error is None]
        if deploy:
            settings = {(e.model, e.version): replica_settings(self.config, e.model, e.version) for e in servable}
            await asyncio.to_thread(self.backend.deploy, servable, settings)
        deployed = await asyncio.gather(*(self._wait_deployed(e, owner=deploy) for e in servable))
        for entry, version in zip(servable, deployed, strict=True):
            if version is not None:
                await self._warm_up_and_open(entry, version)
        self.service.started = True
        # Everything built so far (Ray, Serve, FastAPI, pydantic schemas, models) lives as long as the
        # process: keep it out of the collector's full passes, which would otherwise pause the loop.
        gc.collect()
        gc.freeze()
        versions = self.registry.all_versions()
        ready = self.service.ready()
        log.info("models loaded: %s; server %s", ", ".join(f"{e.label} {e.state.value}" for e in versions),
                 "ready" if ready else "not ready (a model's default version is not)",
                 extra={"event": "models_loaded", "ready": ready,
                        "versions": [{"model": e.model, "version": e.version, "state": e.state.value}
                                     for e in versions]})

    async def _wait_deployed(self, entry: RepositoryEntry, owner: bool) -> DeployedVersion | None:
        served = self.registry.get(entry.model, entry.version)
        timeout = self.config.deployment_for(entry.model).startup_timeout_s
        try:
            return await self.backend.wait_ready(entry.model, entry.version, timeout, owner,
                                                 took=transport_counter(entry.model, entry.version))
        except Exception as exc:
            served.mark_unavailable(str(exc))
            log.error("%s is unavailable: %s", served.label, exc, extra=_model_event(served, "model_unavailable"))
            return None

    async def _warm_up_and_open(self, entry: RepositoryEntry, deployed: DeployedVersion) -> None:
        served = self.registry.get(entry.model, entry.version)
        manifest = entry.manifest
        assert manifest is not None  # only servable entries are deployed
        batcher = Batcher(served.label, deployed.execute, batch_policy(self.config, served),
                          BatchMetrics.for_deployment(entry.model, entry.version),
                          self.monitor.add(entry.model, entry.version, manifest) if self.config.monitoring.drift
                          else None,
                          self.service.tracing.batches(entry.model, entry.version)
                          if self.service.tracing is not None else None)
        try:
            await batcher.warm_up(lambda rows: placeholder_inputs(manifest.inputs, rows), execute=deployed.warm_up)
        except Exception as exc:
            served.mark_unavailable(f"warm-up batch failed: {exc}")
            log.error("%s is unavailable: warm-up batch failed: %s", served.label, exc,
                      extra=_model_event(served, "model_unavailable"))
            return
        served.mark_ready(batcher, deployed.device)
        fixed_s, per_row_s = batcher.latency.coefficients()
        log.info("%s ready on %s (latency model: %.2f ms + %.1f µs/row)",
                 served.label, deployed.device, fixed_s * 1e3, per_row_s * 1e6,
                 extra={**_model_event(served, "model_ready"), "device": deployed.device,
                        "latency_fixed_s": fixed_s, "latency_per_row_s": per_row_s})

    async def drain(self) -> None:
        batchers = [e.batcher for e in self.registry.all_versions() if e.batcher is not None]
        await asyncio.gather(*(b.drain() for b in batchers), self.service.shadows.drain())

    def close(self) -> None:
        self.store.close()
        self.evidence.close()


def _model_event(served: ServedVersion, event: str) -> dict[str, str]:
    return {"event": event, "model": served.model, "version": served.version, "reason": served.reason}


async def serve_http(http: uvicorn.Server, where: str, sock: socket.socket) -> None:
    """Run uvicorn on the socket ``reserve_port`` bound. Its listen fails only if another process bound
    the port too (SO_REUSEADDR) and listened first: one line, as for a port taken at start-up."""
    try:
        await http.serve([sock])
    except OSError as exc:
        raise StartupError(f"cannot listen for HTTP on {where}: {exc.strerror}") from None


class _QuietUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway shuts everything down in order itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def create_gateway(config: MlgateConfig) -> Gateway:
    found = scan_repository(config.repository)
    if problems := repository_problems(config, found):
        raise StartupError("; ".join(problems))
    entries = select_entries(config, found)
    registry = build_registry(config, entries)
    try:
        store = StateStore(config.state.path)
        evidence = EvidenceStore(evidence_path(config.state.path))
    except (OSError, sqlite3.Error) as exc:
        raise StartupError(f"cannot open the state file {config.state.path} or its evidence file: {exc}") from None
    live = open_routing(config, registry, store)
    auth_state = AuthState(store, configured_tokens(config))
    monitor = DriftMonitor(config.monitoring.feature_rows_per_batch)

    def compared(shadow: ServedVersion, result: Comparison) -> None:
        version_monitor = monitor.get(shadow.model, shadow.version)
        if version_monitor is not None:
            version_monitor.compared(result.rows, result.agreeing_rows)

    tracing = config.telemetry.tracing
    service = InferenceService(registry, __version__, live,
                               auth_state if config.auth.require_token_for_inference else None,
                               ShadowMirror(observer=compared), config.telemetry.request_metrics,
                               config.telemetry.logs.access_log_sample,
                               tracing=build_tracing(tracing.enabled, tracing.endpoint, tracing.headers,
                                                     tracing.sampling_ratio, tracing.service_name))
    record_build(__version__)
    backend = RayServeBackend(config.ray.address, config.ray.num_cpus, config.ray.object_store_bytes)
    return Gateway(config, backend, registry, service, entries, store, live, auth_state, monitor, evidence)


@dataclass
class Listeners:
    """What a process serves on, bound before Ray starts. Several workers share the ports (SO_REUSEPORT),
    each binding its own sockets."""

    http_socket: socket.socket
    worker: int = 0
    """0: the supervisor (or the only process); 1, 2, ...: a worker started by it."""
    pool: WorkerPool | None = None
    grpc_hold: socket.socket | None = None
    """Keeps the supervisor's gRPC port (a port 0 resolved) taken until its gRPC server binds it."""


async def serve_forever(gateway: Gateway, listeners: Listeners) -> None:
    config = gateway.config.server
    shared = config.workers > 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    load = LoopLoad.of(loop)
    track_loop_load(lambda: load.lag_s, lambda: load.pressure, lambda: load.busy_share)

    admin = build_admin_app(gateway.store, gateway.live, gateway.registry, gateway.auth, gateway.service.shadows,
                            gateway.drift if gateway.config.monitoring.drift else None,
                            gateway.rollouts if gateway.config.monitoring.drift else None)
    bodies = BodyBudget(config.body_budget_bytes)  # HTTP bodies and gRPC messages, one process's
    track_body_budget(lambda: bodies.held, bodies.limit)
    http = _QuietUvicorn(listener_config(
        OipHttpApp(gateway.service, config.max_request_bytes, TokenBeforeBody(admin, config.max_request_bytes),
                   bodies),
        config.host, config.http_port,
        gather_up_to=config.max_request_bytes, timeout_graceful_shutdown=math.ceil(config.shutdown_grace_s),
    ))
    if listeners.worker > 0:  # a worker listens only once it can answer: no connection lands on it before
        await gateway.load_models(deploy=False)
    try:
        grpc_server, grpc_port = build_grpc_server(gateway.service, config.host, config.grpc_port,
                                                   config.grpc_max_message_bytes, share_port=shared, budget=bodies)
    except RuntimeError as exc:
        raise StartupError(f"cannot listen for gRPC on {config.host}:{config.grpc_port}: {exc}") from None
    finally:
        if listeners.grpc_hold is not None:
            listeners.grpc_hold.close()
    await grpc_server.start()
    http_task = asyncio.create_task(serve_http(http, f"{config.host}:{config.http_port}", listeners.http_socket))
    while not http.started:
        if http_task.done():
            await grpc_server.stop(0)
            http_task.result()  # raises the StartupError
            raise StartupError(f"HTTP server on {config.host}:{config.http_port} stopped while starting")
        await asyncio.sleep(0.01)
    log.info("listening: HTTP http://%s:%d  gRPC %s:%d", config.host, config.http_port, config.host, grpc_port,
             extra={"event": "listening", "http_port": config.http_port, "grpc_port": grpc_port})

    background = [asyncio.create_task(gateway.follow_state())]
    if listeners.worker == 0:
        background.append(asyncio.create_task(gateway.load_models(deploy=True)))
    if listeners.pool is not None:
        background.append(asyncio.create_task(listeners.pool.supervise()))
    if shared:
        background.append(asyncio.create_task(refresh_sampled_gauges()))
    if gateway.config.monitoring.drift:
        background += [asyncio.create_task(gateway.publish_evidence()), asyncio.create_task(gateway.export_drift())]
        if gateway.config.rollouts.enabled:
            background.append(asyncio.create_task(gateway.run_rollouts()))
    await stop.wait()
    log.info("shutting down: draining in-flight requests (grace %.1f s)", config.shutdown_grace_s,
             extra={"event": "shutdown"})
    for task in background:
        task.cancel()
    http.should_exit = True
    await asyncio.gather(
        grpc_server.stop(config.shutdown_grace_s),
        asyncio.wait_for(gateway.drain(), timeout=config.shutdown_grace_s + 1),
        http_task,
        *([listeners.pool.stop(config.shutdown_grace_s)] if listeners.pool is not None else []),
        return_exceptions=True,
    )
    await gateway.backend.stop_serve()
    if gateway.service.tracing is not None:  # flush buffered spans (an HTTP export: off the loop)
        await asyncio.to_thread(gateway.service.tracing.shutdown)


async def refresh_sampled_gauges() -> None:
    """With several processes, copy code-held gauges (queue lengths) to the shared metrics once a second."""
    while True:
        await asyncio.sleep(1.0)
        refresh_sampled()


def run(config: MlgateConfig, worker: int = 0) -> None:
    """Start (or, in a worker, join) Ray and Serve, serve until a signal, then shut everything down."""
    import uvloop

    server = config.server
    if server.workers > 1 and multiprocess_dir() is None:
        raise StartupError("server.workers > 1 needs a shared metrics folder set before prometheus_client is "
                           "imported: start the gateway with 'mlgate serve', which sets it up")
    shared = server.workers > 1
    listeners = Listeners(reserve_port("HTTP", server.host, server.http_port, shared), worker)
    if worker == 0:
        listeners.grpc_hold = reserve_port("gRPC", server.host, server.grpc_port, shared)
    resolved = {"http_port": listeners.http_socket.getsockname()[1]}
    if listeners.grpc_hold is not None:
        resolved["grpc_port"] = listeners.grpc_hold.getsockname()[1]
    config = config.model_copy(update={"server": server.model_copy(update=resolved)})
    gateway = create_gateway(config)
    log.info("starting Ray %s", f"(joining {config.ray.address})" if config.ray.address else "(local)")
    try:
        with hidden_from_children(MULTIPROCESS_ENV):  # Ray's own processes (prometheus_client users) stay out
            gateway.backend.start()
    except Exception as exc:  # ray.init refuses settings (object_store_bytes beyond memory) or an address
        gateway.backend.stop_ray()
        gateway.close()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f"join Ray at {config.ray.address}" if config.ray.address else "start a local Ray"
        raise StartupError(f"cannot {where} (ray settings in the config): {first}") from None
    if worker == 0:
        log_startup(config)
        if server.workers > 1:
            child_config = worker_config(config, config.server.http_port, config.server.grpc_port,
                                         gateway.backend.gcs_address())
            listeners.pool = WorkerPool(child_config, on_exit=forget_process)
            listeners.pool.start()
    try:
        uvloop.run(serve_forever(gateway, listeners))
    finally:
        gateway.backend.stop_ray()
        gateway.close()
        log.info("stopped", extra={"event": "stopped"})


def log_startup(config: MlgateConfig) -> None:
    """One line an operator (or a log search) can read the whole set-up from."""
    telemetry = config.telemetry
    log.info("mlgate %s starting", __version__, extra={
        "event": "startup", "version": __version__, "host": config.server.host,
        "http_port": config.server.http_port, "grpc_port": config.server.grpc_port,
        "workers": config.server.workers, "repository": str(config.repository), "state": str(config.state.path),
        "ray": config.ray.address or "local", "models": sorted(config.models) or "all in the repository",
        "drift": config.monitoring.drift, "rollouts": config.rollouts.enabled,
        "request_metrics": telemetry.request_metrics, "tracing": telemetry.tracing.enabled,
        "tracing_sampling_ratio": telemetry.tracing.sampling_ratio,
        "access_log_sample": telemetry.logs.access_log_sample,
        "auth_tokens_in_config": len(config.auth.tokens),
        "inference_needs_token": config.auth.require_token_for_inference,
    })


__all__ = ["Gateway", "VersionState", "create_gateway", "run"]
