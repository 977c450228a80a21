"""Host model versions as Ray Serve applications and hand the gateway one executor per version.

Measured on the 2-core box (docs/architecture.md): a DeploymentHandle call
made through Serve's default router thread costs ~3 ms of driver CPU; with the
router on the caller's own event loop and results passed by value it costs
~1.1 ms, close to a raw actor call (~0.8 ms). So handles are created on the
gateway's event loop, with ``RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0`` set
before Serve is imported and ``_by_reference=False``. Serve's HTTP proxy is
disabled: the gateway is the front door. Even so, that call costs more than
everything else a small batch needs, in the gateway and again in the replica;
so when every replica of a version runs on the gateway's node, batches bypass
Ray over a Unix socket to the replica (``serving.direct_channel``). Large
batches go through shared memory to a replica on the same node (their layout over
that socket where it is usable, else through Ray), else by reference (``execute`` below).
"""

from __future__ import annotations

import os

# Switches from Ray Serve's own RAY_SERVE_THROUGHPUT_OPTIMIZED profile that apply to a proxy-less
# deployment; profiled on the replica, the thread hops and per-request logging they remove cost
# far more CPU than the model itself. They are set here for the driver and passed to every replica.
REPLICA_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    "RAY_SERVE_LOG_TO_STDERR": "0",
    # Batches travel by value over Serve's replica gRPC channel, capped at 4 MiB by default: far below
    # what one batch of large requests carries (server.max_request_bytes is 64 MiB per request).
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2**31 - 1),
}
for _name, _value in REPLICA_ENV.items():
    os.environ.setdefault(_name, _value)
# Ray starts workers at nice 15 to protect its own daemons; here the workers are the model replicas,
# i.e. the critical path of every request, so a Ray started by the gateway runs them at normal priority.
os.environ.setdefault("RAY_worker_niceness", "0")

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve
from ray.serve._private.common import ReplicaState
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ApplicationStatus

from serving import shared_batch
from serving.batch_inputs import Arrays, BatchExecutor, Parts, batch_nbytes, joined
from serving.deployment import OnnxModel
from serving.device import Device, gpus_per_replica
from serving.direct_channel import ChannelDown, DirectReplicas, channel_directory
from serving.repository import RepositoryEntry
from serving.shared_batch import RowSpec
from serving.transports import Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaSettings:
    replicas: int
    num_cpus: float
    device: Device
    max_ongoing_requests: int
    inject_delay_s: float = 0.0
    inject_error_rate: float = 0.0
    direct_channel: bool = True


@dataclass(frozen=True)
class DeployedVersion:
    execute: BatchExecutor
    """Runs one batch, given each request's inputs (``serving.batch_inputs``); its outputs."""
    warm_up: BatchExecutor
    """Like ``execute``, for warm-up calls (exempt from injected errors)."""
    device: str


GCS_CONNECT_TIMEOUT_S = 5.0


def refuse_unreachable(address: str, timeout_s: float = GCS_CONNECT_TIMEOUT_S) -> None:
    """ConnectionError if nothing accepts a TCP connection at a Ray ``address`` (``host:port`` or
    ``ray://host:port``; ``auto`` and what has no port are left to Ray).

    ``ray.init`` retries an address where no cluster answers, a refused port included, without end: it logged
    "Failed to connect to GCS" every 30 s for over two minutes against ``127.0.0.1:1``, and ``mlgate serve`` hung
    with it. A connection that is accepted proves only that something listens; that is the case Ray reports.
    """
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__  # a timeout has no strerror
        raise ConnectionError(f"nothing accepts connections at {target} ({why})") from None


def app_name(model: str, version: str) -> str:
    return f"{model}--v{version}"


class RayServeBackend:
    def __init__(self, address: str | None, num_cpus: int | None, object_store_bytes: int | None) -> None:
        self._address = address
        self._num_cpus = num_cpus
        self._object_store_bytes = object_store_bytes
        self._started_ray = False
        self._pools: list[shared_batch.SegmentPool] = []
        self._channels: list[DirectReplicas] = []
        self._unplaceable: dict[str, str] = {}
        """Applications not deployed because no node of the local Ray could hold one replica: why."""

    def start(self) -> None:
        """Join the configured cluster, or start a local Ray in this process; then start Serve without its proxy."""
        if not ray.is_initialized():
            if self._address:
                refuse_unreachable(self._address)
                ray.init(address=self._address, namespace="mlgate", log_to_driver=False)
            else:
                ray.init(
                    num_cpus=self._num_cpus,
                    object_store_memory=self._object_store_bytes,
                    include_dashboard=False,
                    namespace="mlgate",
                    log_to_driver=False,
                )
                self._started_ray = True
        serve.start(proxy_location="Disabled")
        orphans = shared_batch.remove_orphans()
        if orphans:
            log.warning("removed %d shared-memory segments left by gateway processes that died", orphans)

    @staticmethod
    def gcs_address() -> str:
        """Where other processes join this Ray cluster (``ray.init(address=...)``)."""
        return str(ray.get_runtime_context().gcs_address)

    def cluster_gpus(self) -> float:
        return float(ray.cluster_resources().get("GPU", 0.0))  # type: ignore[no-untyped-call]

    def deploy(self, entries: list[RepositoryEntry], settings: dict[tuple[str, str], ReplicaSettings]) -> None:
        """Submit every version at once; readiness is awaited per version by ``wait_ready``."""
        gpus = self.cluster_gpus()
        largest = _largest_node()
        targets = []
        claimed = 0.0  # CPUs, by the replicas submitted
        for entry in entries:
            assert entry.manifest is not None
            s = settings[(entry.model, entry.version)]
            name = app_name(entry.model, entry.version)
            needs = {"CPU": s.num_cpus, "GPU": gpus_per_replica(s.device, gpus)}
            problem = _unplaceable(needs, largest)
            if problem is not None and self._started_ray:  # a joined cluster may scale up to it; this one cannot
                self._unplaceable[name] = problem
                continue
            claimed += s.replicas * s.num_cpus
            deployment = serve.deployment(
                name="onnx",
                num_replicas=s.replicas,
                max_ongoing_requests=s.max_ongoing_requests,
                ray_actor_options={
                    "num_cpus": s.num_cpus,
                    "num_gpus": needs["GPU"],
                    "runtime_env": {"env_vars": REPLICA_ENV},
                },
                logging_config={"enable_access_log": False},
            )(OnnxModel)
            direct = str(channel_directory(self.gcs_address(), name)) if s.direct_channel else None
            app = deployment.bind(str(entry.model_file), entry.manifest.sha256, s.device, s.num_cpus,
                                  s.inject_delay_s, s.inject_error_rate, direct)
            targets.append(serve.RunTarget(app, name=name, route_prefix=None))
        total = float(ray.cluster_resources().get("CPU", 0.0))  # type: ignore[no-untyped-call]
        if self._started_ray and claimed > total:
            log.warning("the versions' replicas claim %g CPUs in all and the local Ray has %g: those that do not fit "
                        "stay pending, and are marked unavailable after startup_timeout_s (lower deployment "
                        "num_cpus, or raise ray.num_cpus)", claimed, total)
        if targets:
            serve.run_many(targets, wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)

    async def wait_ready(self, model: str, version: str, timeout_s: float, owner: bool = True,
                         took: Callable[[Transport], None] = lambda _: None) -> DeployedVersion:
        """Wait for one version's application; RuntimeError with Serve's own message if it fails or times out.

        Only its ``owner`` (the process that deployed it) deletes a failed application: a gateway worker
        that merely uses it must not take it away from the others. ``took`` is told the way each batch
        ``execute`` carries goes (a metric: a batch through Ray where the channel could carry it costs the
        gateway about ten times the CPU)."""
        name = app_name(model, version)
        if name in self._unplaceable:
            raise RuntimeError(self._unplaceable[name])
        deadline = time.monotonic() + timeout_s
        while True:
            status = await asyncio.to_thread(_app_status, name)
            if status is not None and status[0] is ApplicationStatus.RUNNING:
                replicas = status[2]
                break
            if status is not None and status[0] in (ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.UNHEALTHY):
                if owner:
                    await asyncio.to_thread(serve.delete, name, _blocking=False)
                raise RuntimeError(f"deployment failed: {_first_line(status[1])}")
            if time.monotonic() > deadline:
                if owner:
                    await asyncio.to_thread(serve.delete, name, _blocking=False)
                why = f": {_first_line(status[1])}" if status is not None and status[1] else ""
                raise RuntimeError(f"not ready after {timeout_s:.0f} s{why}")  # Serve says which resources are short
            await asyncio.sleep(0.25)
        handle, description = await _first_call(name)
        infer = handle.infer
        infer_by_reference = handle.options(_by_reference=True).infer
        infer_shared = handle.infer_shared
        node_id = ray.get_runtime_context().get_node_id()
        output_rows: dict[str, RowSpec] | None = description.get("output_rows")
        # Only where a replica shares this node; with replicas elsewhere too, a call that lands on one of
        # them is told so and goes through Ray instead.
        pool = None
        if shared_batch.available() and output_rows is not None and description.get("node_id") == node_id:
            pool = shared_batch.SegmentPool(node_id, output_rows)
            self._pools.append(pool)
        direct = None
        if description.get("direct"):
            direct = DirectReplicas(channel_directory(self.gcs_address(), name), replicas)
            self._channels.append(direct)
            log.info("%s: batches go over the direct channel while all its %d replica(s) run on this node (%s now)%s",
                     name, replicas, "they do" if direct.usable() else "they do not: through Ray",
                     "" if pool is None else f"; from {SHARED_OVER_CHANNEL_BYTES >> 10} KiB of inputs only their "
                                             "shared-memory layout")

        async def send(parts: Parts, warm_up: bool) -> Arrays:
            """One batch by the cheapest way to its replica. Warm-up batches go the same way as traffic, so that the
            latency model learns the transport traffic will take and the shared-memory segments traffic will reuse
            exist before it comes; they are exempt from injected errors and not counted as traffic."""
            counted = (lambda transport: None) if warm_up else took
            nbytes = batch_nbytes(parts)
            channel = direct if direct is not None and direct.usable() else None
            if pool is not None and nbytes >= (SHARED_MEMORY_BYTES if channel is None else SHARED_OVER_CHANNEL_BYTES):
                answer = await through_shared_memory(pool, parts, nbytes, channel, warm_up, counted)
                if answer is not None:
                    return answer
            if channel is not None and nbytes < DIRECT_MAX_BYTES:
                try:
                    outputs = await channel.call(parts, warm_up)
                    counted("direct")
                    return outputs
                except ChannelDown as exc:  # the replica died or was replaced: Serve knows where to go
                    log.warning("direct channel to %s failed (%s); sending the batch through Ray", name, exc)
            by_reference = sends_by_reference(nbytes)
            result: Arrays = await (infer_by_reference if by_reference else infer).remote(joined(parts), warm_up)
            counted("by_reference" if by_reference else "by_value")
            return result

        async def through_shared_memory(pool: shared_batch.SegmentPool, parts: Parts, nbytes: int,
                                        channel: DirectReplicas | None, warm_up: bool,
                                        counted: Callable[[Transport], None]) -> Arrays | None:
            """The outputs of a batch written into one of ``pool``'s segments, its layout sent over ``channel``
            (else through Ray); None if no segment could carry it or the replica could not see it."""
            try:
                with pool.batch(parts) as batch:
                    answer: Arrays | None = await (infer_shared.remote(batch.layout, warm_up) if channel is None
                                                   else channel.call_shared(batch.layout, warm_up))
                    if answer is None:
                        return None
                    counted("shared_ray" if channel is None else "shared_direct")
                    return answer or batch.read_outputs()
            except shared_batch.NoSharedMemory as exc:  # /dev/shm full or gone: this batch goes through Ray
                log.warning("no shared memory for a %d-byte batch (%s); sending it through Ray", nbytes, exc)
            except ChannelDown as exc:  # its segment is dropped with the call (a replica may still write it)
                log.warning("direct channel to %s failed (%s); sending the layout through Ray", name, exc)
                return await through_shared_memory(pool, parts, nbytes, None, warm_up, counted)
            return None

        async def execute(parts: Parts) -> Arrays:
            return await send(parts, False)

        async def warm_up(parts: Parts) -> Arrays:
            return await send(parts, True)

        return DeployedVersion(execute=execute, warm_up=warm_up, device=str(description["device"]))

    async def stop_serve(self) -> None:
        """Shut Serve down from the event loop its handles' routers run on (the sync API would touch a closed loop).

        Only when this process started Ray: on a joined cluster, serve.shutdown would delete every
        application there, other gateways' included, so the deployments are left to the cluster.
        """
        for pool in self._pools:
            pool.close()
        for channel in self._channels:
            channel.close()
        if self._started_ray:
            await serve.shutdown_async()  # type: ignore[no-untyped-call]
            for channel in self._channels:  # the replicas removed their sockets as they stopped
                with contextlib.suppress(OSError):
                    channel.directory.rmdir()

    def stop_ray(self) -> None:
        if self._started_ray:
            ray.shutdown()


HANDLE_ATTEMPTS = 3

SHARED_OVER_CHANNEL_BYTES = 192 << 10
"""Where the direct channel is usable, batches whose inputs reach this size go through shared memory, their layout
over the channel; smaller ones stream through it. On the 2-core box (``python -m loadtests.bench_transport``, two
runs) streaming took 0.19-0.24 ms at 120 KiB (shared memory 0.25-0.26), 0.25-0.27 at 180 KiB (0.24-0.27), 0.34-0.41
at 240 KiB (0.28-0.32), 0.62-0.72 at 480 KiB (0.39-0.47), 4.6-5.0 ms at 1.9 MiB (0.9-1.0) and 19-23 ms at 7.5 MiB
(2.7-2.9): pushing the bytes through the event loop costs more, the more there are."""

DIRECT_MAX_BYTES = 3 << 20
"""Batches whose inputs are smaller stream over a usable direct channel when shared memory cannot carry them (no
/dev/shm, or outputs without one row per input row); larger ones go through Ray's object store. On the 2-core box
(``python -m loadtests.bench_transport --rows 16384,24576,32768,49152,65536``) streaming took 4.6 ms at 1.9 MiB and
6.9 ms at 2.8 MiB against 8.3 and 7.9 by reference; at 3.8 MiB both took 7.5-7.6 ms but streaming cost the gateway
7.2 ms of CPU against 4.8; at 5.6 and 7.5 MiB it took 13.7-14.2 ms against 7.7-8.2. (It was 1 MiB, set when the
alternative was shared memory through Ray, which has its own threshold now.)"""

SHARED_MEMORY_BYTES = 256 << 10
"""Without a usable channel, batches whose inputs reach this size go to a replica on the same node through shared
memory, their layout through Ray: on the 2-core box that took 1.7-2.5 ms from 120 KiB to 1.9 MiB and 4.6 ms at
7.5 MiB, against 2.0-2.9 ms by value up to 480 KiB and 15 ms at 1.9 MiB (``python -m loadtests.bench_transport``)."""

BY_REFERENCE_BYTES = 1 << 20
"""Without shared memory, batches whose inputs reach this size travel through Ray's object store instead of
Serve's gRPC channel: by value, the 2-core box took 3.0-3.9 ms up to 480 KiB, then 20 ms at 1.9 MiB and 83 ms
at 7.5 MiB; by reference 8.4-17 ms up to 1.9 MiB but 10 ms at 7.5 MiB (loadtests/README.md, "GPU")."""


def sends_by_reference(batch_bytes: int) -> bool:
    """Whether a batch of ``batch_bytes`` input bytes goes by reference (object store) rather than by value."""
    return batch_bytes >= BY_REFERENCE_BYTES


async def _first_call(name: str) -> tuple[DeploymentHandle[Any], dict[str, Any]]:
    """A handle to a running application and its replica's description, retried: the first call through a new
    handle, made while several applications come up at once, has failed in Serve's own code (a pickling error
    in its request router, seen once in a fresh-clone CI run), and a version must not stay unavailable for that."""
    for attempt in range(1, HANDLE_ATTEMPTS):
        try:
            return await _describe(name)
        except Exception as exc:
            log.warning("first call to %s failed (%s); retrying", name, exc)
            await asyncio.sleep(0.5 * attempt)
    return await _describe(name)


async def _describe(name: str) -> tuple[DeploymentHandle[Any], dict[str, Any]]:
    handle = serve.get_app_handle(name).options(_by_reference=False)
    description: dict[str, Any] = await handle.describe.remote()
    return handle, description


def _app_status(name: str) -> tuple[ApplicationStatus, str, int] | None:
    """The application's status, Serve's message about it, and how many replicas it runs."""
    app = serve.status().applications.get(name)
    if app is None:
        return None
    message = app.message or "; ".join(d.message for d in app.deployments.values() if d.message)
    running = sum(d.replica_states.get(ReplicaState.RUNNING, 0) for d in app.deployments.values())
    return ApplicationStatus(app.status), message, running


def _largest_node() -> dict[str, float]:
    """The most of each resource one live node of the cluster has: what one replica can be given at most."""
    largest: dict[str, float] = {}
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        if node.get("Alive"):
            for resource, amount in node.get("Resources", {}).items():
                largest[resource] = max(largest.get(resource, 0.0), float(amount))
    return largest


def _unplaceable(needs: dict[str, float], largest: dict[str, float]) -> str | None:
    """Why no node can hold a replica that ``needs`` these resources, or None. Ray would keep it pending forever,
    and the version would be reported only as "not ready after 120 s" (Serve's own hint comes after 30 s)."""
    for resource, wanted in needs.items():
        if wanted > largest.get(resource, 0.0):
            what = {"CPU": "deployment num_cpus", "GPU": "device"}[resource]
            return (f"a replica needs {wanted:g} {resource} ({what}) but no node of the Ray cluster has more than "
                    f"{largest.get(resource, 0.0):g}")
    return None


def _first_line(message: str) -> str:
    lines = [line for line in message.strip().splitlines() if line.strip()]
    # Serve's message ends with the exception line, which names the cause (e.g. the SHA-256 mismatch).
    return lines[-1][:500] if lines else "no details from Ray Serve"
