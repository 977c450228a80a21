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
import socket
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
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own name for it
LOG_LEVEL_ENV = "MLGATE_LOG_LEVEL"
RESTART_DELAY_S = 1.0
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


def shared_socket(host: str, port: int) -> socket.socket:
    """A socket bound with SO_REUSEPORT (port 0: a free port, which the workers then share)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


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
        self._stopping = False

    def start(self) -> None:
        for index in range(1, self._count + 1):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        env = {**os.environ, WORKER_ENV: str(index), CONFIG_ENV: self._config_json}
        self._workers[index] = subprocess.Popen(
            [sys.executable, "-m", "mlgate.workers"], env=env, preexec_fn=_die_with_parent)
        log.info("started gateway worker %d (pid %d)", index, self._workers[index].pid)

    async def supervise(self) -> None:
        """Restart any worker that exits while the gateway runs, a second later (a crash loop stays slow)."""
        while not self._stopping:
            await asyncio.sleep(RESTART_DELAY_S)
            for index, process in list(self._workers.items()):
                code = process.poll()
                if code is None or self._stopping:
                    continue
                self._on_exit(process.pid)
                log.error("gateway worker %d (pid %d) exited with %s; restarting it", index, process.pid, code)
                self._spawn(index)

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


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the supervisor dies, so no worker outlives it holding the ports."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def worker_main() -> None:
    """Entry point of a worker process (``python -m mlgate.workers``), started only by a ``WorkerPool``."""
    from telemetry.logs import setup_logging

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
