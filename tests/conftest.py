"""Shared fixtures: the demo model repository and one real running gateway per test session.

The gateway is the real thing — ``mlgate serve`` in a subprocess with a local
Ray, Ray Serve deployments and ONNX Runtime — because the behaviour under test
(batching across the Ray hop, readiness, error mapping) lives in how those
parts meet. It starts once per session (~20-40 s on 2 cores) and is shared.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from loadtests.procs import free_port

ROOT = Path(__file__).resolve().parent.parent
TAMPERED_VERSION = "9"


def _demo_source_digest() -> str:
    digest = hashlib.sha256()
    for name in ("demo_models.py", "manifest.py", "repository.py"):  # what the built files depend on
        digest.update((ROOT / "serving" / name).read_bytes())
    return digest.hexdigest()[:12]


@pytest.fixture(scope="session")
def demo_repository() -> Path:
    """The demo repository, built once and cached under build/ keyed by the builder's source."""
    from serving.demo_models import build_demo_repository

    root = ROOT / "build" / f"test-models-{_demo_source_digest()}"
    entries = build_demo_repository(root)
    assert all(e.error is None for e in entries), [e.error for e in entries]
    return root


def copy_version(model_dir: Path, source: str, target: str) -> Path:
    """A copy of one version under another version number (its manifest says the new number)."""
    copy = model_dir / target
    shutil.copytree(model_dir / source, copy)
    manifest = (copy / "manifest.json").read_text().replace(f'"version": "{source}"', f'"version": "{target}"')
    (copy / "manifest.json").write_text(manifest)
    return copy


@pytest.fixture(scope="session")
def served_repository(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo repository plus ``breast-cancer/9``: a copy of version 1 whose model file was tampered with."""
    root = tmp_path_factory.mktemp("served-repo") / "models"
    shutil.copytree(demo_repository, root)
    tampered = copy_version(root / "breast-cancer", "1", TAMPERED_VERSION)
    model = bytearray((tampered / "model.onnx").read_bytes())
    model[len(model) // 2] ^= 0xFF
    (tampered / "model.onnx").write_bytes(bytes(model))
    return root


@dataclass
class RunningGateway:
    http_url: str
    grpc_url: str
    repository: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _wait_ready(gateway: RunningGateway, timeout_s: float) -> None:
    """Until the gateway is ready, and sure that it is the gateway answering: any HTTP server on
    the port (Ray's metrics exporter answers 200 to every path) would pass a readiness probe."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if gateway.process.poll() is not None:
            raise RuntimeError(f"mlgate exited with {gateway.process.returncode}:\n{gateway.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://{gateway.http_url}/v2/health/ready", timeout=2) as response:
                ready = response.status == 200
            if ready:
                with urllib.request.urlopen(f"http://{gateway.http_url}/v2", timeout=2) as response:
                    metadata = response.read()
                with contextlib.suppress(ValueError, AttributeError):  # not JSON, or not an object
                    if json.loads(metadata).get("name") == "mlgate":
                        return
                raise RuntimeError(f"not mlgate answering on {gateway.http_url}: {metadata[:200]!r}\n"
                                   f"{gateway.log_tail()}")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlgate not ready after {timeout_s} s:\n{gateway.log_tail()}")


def start_gateway(config_text: str, workdir: Path, http_port: int, grpc_port: int, repository: Path) -> RunningGateway:
    config = workdir / "mlgate.yaml"
    config.write_text(config_text)
    log_path = workdir / "mlgate.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlgate.cli", "serve", "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env, start_new_session=True,
        )
    gateway = RunningGateway(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", repository, process, log_path)
    try:
        _wait_ready(gateway, timeout_s=240)
    except BaseException:
        stop_gateway(gateway)
        raise
    return gateway


def stop_gateway(gateway: RunningGateway) -> int | None:
    """SIGTERM the gateway (it drains and shuts Ray down itself), SIGKILL what is left; its exit code.

    Returns only when every process of the gateway's session is gone: Ray's workers live in process
    groups of their own and may outlive the gateway by many seconds, and a test that starts next
    (a latency model warming up, a deadline under a burst) must not share the two cores with them.
    """
    with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(gateway.process.pid, signal.SIGTERM)
        gateway.process.wait(timeout=60)
    code = gateway.process.poll()
    deadline = time.monotonic() + 30
    while session_processes(gateway.process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if code is None:
        gateway.process.kill()
    for pid in session_processes(gateway.process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return code


def session_processes(session: int) -> list[int]:
    """Live processes of a session (the gateway starts one: ``start_new_session``), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[3]) == session and fields[0] != "Z":  # after "pid (comm)": state ppid pgrp session
            found.append(int(stat.parent.name))
    return found


@pytest.fixture(scope="session")
def gateway(served_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    workdir = tmp_path_factory.mktemp("gateway")
    http_port, grpc_port = free_port(), free_port()
    config = f"""
server: {{host: 127.0.0.1, http_port: {http_port}, grpc_port: {grpc_port}, max_request_bytes: 1048576}}
ray: {{num_cpus: 2}}
repository: {served_repository}
models:
  breast-cancer: {{champion: "1"}}
batching: {{max_batch_rows: 128}}
"""
    running = start_gateway(config, workdir, http_port, grpc_port, served_repository)
    yield running
    code = stop_gateway(running)
    assert code == 0, f"mlgate did not shut down cleanly on SIGTERM (exit {code}):\n{running.log_tail()}"


@pytest.fixture(scope="session")
def dataset() -> np.ndarray:
    """The 569 x 30 breast-cancer feature rows, float32, as clients send them."""
    from sklearn.datasets import load_breast_cancer

    return np.asarray(load_breast_cancer().data, dtype=np.float32)


@pytest.fixture(scope="session")
def reference_outputs(served_repository: Path, dataset: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """ONNX Runtime run directly on every dataset row, per version: what the gateway must return."""
    import onnxruntime as ort

    out: dict[str, dict[str, np.ndarray]] = {}
    for version in ("1", "2", "3"):
        path = served_repository / "breast-cancer" / version / "model.onnx"
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        out[version] = dict(zip(names, session.run(names, {"features": dataset}), strict=True))
    return out
