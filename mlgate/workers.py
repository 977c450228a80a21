"""Several gateway processes behind one pair of ports (``server.workers``).

The gateway's own CPU (decoding, encoding, batching, one event loop) is what
limits a single process; more processes on one machine lift that limit the way
uvicorn's and gunicorn's workers do, without a load balancer in front: each
process binds the same ports with SO_REUSEPORT and the kernel spreads new
connections among them.

The first process (the supervisor) starts Ray, deploys the models and serves
like any gateway; it then starts the others with the same configuration, the
ports it resolved and the address of its Ray cluster. Those join the cluster,
deploy nothing, warm up their own batchers and only then start listening, so a
connection never lands on a process that cannot answer yet. The supervisor
restarts a worker that dies and stops them all on shutdown; a worker dies with
its supervisor (``PR_SET_PDEATHSIG``). Metrics: every process writes its
samples to a shared folder (prometheus_client's multiprocess mode), so any
process's ``/metrics`` reports the whole gateway. Nothing here imports
prometheus_client: the folder must be set in the environment before it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

from mlgate.config import MlgateConfig

log = logging.getLogger("mlgate.workers")

WORKER_ENV = "MLGATE_WORKER"
"""Index (1, 2, ...) of a worker process; unset in the supervisor."""
CONFIG_ENV = "MLGATE_WORKER_CONFIG"
SUPERVISOR_ENV = "MLGATE_SUPERVISOR_PID"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own name for it
LOG_LEVEL_ENV = "MLGATE_LOG_LEVEL"
RESTART_DELAY_S = 1.0
"""Delay before restarting a worker that died; doubled for each death in a row, up to ``MAX_RESTART_DELAY_S``."""
MAX_RESTART_DELAY_S = 60.0
HEALTHY_AFTER_S = 60.0
"""A worker that lived this long before dying starts the backoff again from ``RESTART_DELAY_S``."""
PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def shared_metrics_folder() -> Iterator[str]:
    """A fresh folder for every process's metric samples, set in the environment the workers inherit.

    Fresh, because samples left by an earlier run would be added to this one's counters."""
    path = tempfile.mkdtemp(prefix="mlgate-metrics-")
    os.environ[MULTIPROCESS_ENV] = path
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def hidden_from_children(name: str) -> Iterator[None]:
    """Leave ``name`` out of the environment of processes started meanwhile (a local Ray's raylet, and through
    it every Ray worker: they use prometheus_client too and would write their metrics into our folder)."""
    value = os.environ.pop(name, None)
    try:
        yield
    finally:
        if value is not None:
            os.environ[name] = value


def worker_config(config: MlgateConfig, http_port: int, grpc_port: int, ray_address: str) -> MlgateConfig:
    """What a worker runs with: the supervisor's configuration, its resolved ports and its Ray cluster."""
    server = config.server.model_copy(update={"http_port": http_port, "grpc_port": grpc_port})
    ray_config = config.ray.model_copy(update={"address": ray_address})
    return config.model_copy(update={"server": server, "ray": ray_config})


class WorkerPool:
    """The supervisor's view of its workers: start them, restart those that die, stop them all."""

    def __init__(self, config: MlgateConfig, on_exit: Callable[[int], None]) -> None:
        self._config_json = config.model_dump_json()
        self._count = config.server.workers - 1
        self._on_exit = on_exit
        """Called with the pid of a worker that exited (its live gauges must leave the shared metrics)."""
        self._workers: dict[int, subprocess.Popen[bytes]] = {}
        self._started_at: dict[int, float] = {}
        self._delay: dict[int, float] = {}
        self._stopping = False

    def start(self) -> None:
        for index in range(1, self._count + 1):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        """No ``preexec_fn``: forking this multi-threaded process (Ray, gRPC, exporters) must go straight to exec."""
        env = {**os.environ, WORKER_ENV: str(index), CONFIG_ENV: self._config_json, SUPERVISOR_ENV: str(os.getpid())}
        self._workers[index] = subprocess.Popen([sys.executable, "-m", "mlgate.workers"], env=env)
        self._started_at[index] = time.monotonic()
        log.info("started gateway worker %d (pid %d)", index, self._workers[index].pid,
                 extra={"event": "worker_started", "worker_index": index, "pid": self._workers[index].pid})

    async def supervise(self) -> None:
        """Restart any worker that exits while the gateway runs, after a delay that doubles while it keeps dying
        young (a worker that cannot start must not spin: each start joins Ray and warms every model up)."""
        restart_at: dict[int, float] = {}
        while not self._stopping:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for index, process in list(self._workers.items()):
                if self._stopping:
                    return
                if index in restart_at:
                    if now >= restart_at[index]:
                        del restart_at[index]
                        self._spawn(index)
                    continue
                code = process.poll()
                if code is None:
                    continue
                self._on_exit(process.pid)
                lived = now - self._started_at[index]
                delay = RESTART_DELAY_S if lived >= HEALTHY_AFTER_S else \
                    min(MAX_RESTART_DELAY_S, 2 * self._delay.get(index, RESTART_DELAY_S / 2))
                self._delay[index] = delay
                restart_at[index] = now + delay
                log.error("gateway worker %d (pid %d) exited with %s after %.0f s; restarting it in %.0f s",
                          index, process.pid, code, lived, delay,
                          extra={"event": "worker_exited", "worker_index": index, "pid": process.pid,
                                 "exit_code": code, "restart_in_s": delay})

    async def stop(self, grace_s: float) -> None:
        """SIGTERM every worker (each drains its in-flight requests), then SIGKILL what is left after the grace."""
        self._stopping = True
        for process in self._workers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s + 5.0
        while time.monotonic() < deadline and any(p.poll() is None for p in self._workers.values()):
            await asyncio.sleep(0.1)
        for index, process in self._workers.items():
            if process.poll() is None:
                log.error("gateway worker %d (pid %d) did not stop in time; killing it", index, process.pid)
                process.kill()
                process.wait()
            self._on_exit(process.pid)


def die_with_supervisor() -> None:
    """Get SIGTERM when the supervisor dies, so that no worker outlives it holding the ports; and if it died
    before this ran (the signal would never come), stop now."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(os.environ[SUPERVISOR_ENV]):
        sys.exit(0)


def worker_main() -> None:
    """Entry point of a worker process (``python -m mlgate.workers``), started only by a ``WorkerPool``."""
    from telemetry.logs import setup_logging

    die_with_supervisor()
    index = int(os.environ[WORKER_ENV])
    config = MlgateConfig.model_validate_json(os.environ[CONFIG_ENV])
    setup_logging(config.telemetry.logs.format, os.environ.get(LOG_LEVEL_ENV, "info"), worker=index)
    from mlgate.server import StartupError, run

    try:
        run(config, worker=index)
    except StartupError as exc:
        log.error("gateway worker %d cannot start: %s", index, exc)
        sys.exit(1)


if __name__ == "__main__":
    worker_main()
