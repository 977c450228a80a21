"""`mlgate serve` fails fast and clearly when it cannot start, before spending Ray's start-up time."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import uvicorn

from gateway.http_protocol import listener_config
from mlgate.server import StartupError, reserve_port, serve_http
from tests.conftest import free_port, session_processes


def _serve(config: Path) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mlgate.cli", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    return done.returncode, done.stderr, time.monotonic() - started


def test_port_in_use_is_one_clear_line_and_no_ray(tmp_path: Path, demo_repository: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        config = tmp_path / "c.yaml"
        config.write_text(f"server: {{http_port: {free_port()}, grpc_port: {taken}}}\nrepository: {demo_repository}\n")
        code, stderr, elapsed = _serve(config)
    assert code == 1
    assert f"error: cannot listen for gRPC on 127.0.0.1:{taken}: Address already in use" in stderr
    assert "Traceback" not in stderr
    assert "starting Ray" not in stderr
    assert elapsed < 15


def test_routing_that_names_a_missing_version_stops_start_up(tmp_path: Path, demo_repository: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"server: {{http_port: {free_port()}, grpc_port: {free_port()}}}\nrepository: {demo_repository}\n"
                      "models: {breast-cancer: {routing: {champion: '1', weights: {'1': 90, '7': 10}}}}\n")
    code, stderr, elapsed = _serve(config)
    assert code == 1
    assert "error: models.breast-cancer.routing: weights.7: version '7' does not exist; versions: 1, 2, 3" in stderr
    assert "starting Ray" not in stderr and elapsed < 15


def test_missing_repository_says_how_to_build_it(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("repository: nowhere\n")
    code, stderr, _ = _serve(config)
    assert code == 2
    assert f"model repository {tmp_path / 'nowhere'} does not exist" in stderr
    assert "mlgate models build-demo" in stderr


def test_a_port_taken_after_it_was_reserved_is_a_startup_error_not_a_traceback() -> None:
    """The reserved port is bound, not listening; a process that binds it too (SO_REUSEADDR) and listens first
    makes the gateway's own listen fail, which must read as one start-up error."""
    async def app(scope: object, receive: object, send: object) -> None:
        return None

    reserved = reserve_port("HTTP", "127.0.0.1", 0, share=False)
    port = reserved.getsockname()[1]
    with reserved, socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        server = uvicorn.Server(listener_config(app, "127.0.0.1", port))
        with pytest.raises(StartupError, match=f"cannot listen for HTTP on 127.0.0.1:{port}: Address already in use"):
            asyncio.run(serve_http(server, f"127.0.0.1:{port}", reserved))


def test_the_ports_are_taken_before_ray_starts_and_refuse_until_the_gateway_listens(
        tmp_path: Path, demo_repository: Path) -> None:
    """Ray's servers pick free ports while it starts; one once took the gateway's HTTP port, and the
    readiness probe got 200 from Ray's metrics exporter. From the first line on, the ports are bound:
    a port finder sees them in use, and a client is refused at once rather than left waiting."""
    http_port, grpc_port = free_port(), free_port()
    config = tmp_path / "c.yaml"
    config.write_text(f"server: {{http_port: {http_port}, grpc_port: {grpc_port}}}\nrepository: {demo_repository}\n")
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        gateway = subprocess.Popen([sys.executable, "-m", "mlgate.cli", "serve", "--config", str(config)],
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "starting Ray" not in log.read_text(errors="replace"):
            assert gateway.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.05)
        for port in (http_port, grpc_port):
            with socket.socket() as probe, pytest.raises(OSError) as refused:
                probe.bind(("", port))  # how Ray tests a port it drew at random before handing it out
            assert refused.value.errno == errno.EADDRINUSE
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", http_port), timeout=5).close()
    finally:
        for pid in session_processes(gateway.pid):  # Ray may be half-started: no graceful path to wait for
            os.kill(pid, signal.SIGKILL)
        gateway.wait(timeout=30)


def _config(tmp_path: Path, repository: Path, extra: str = "") -> Path:
    config = tmp_path / "c.yaml"
    config.write_text(f"server: {{http_port: {free_port()}, grpc_port: {free_port()}}}\n"
                      f"repository: {repository}\nstate: {{path: {tmp_path / 'state.db'}}}\n{extra}")
    return config


def test_an_empty_repository_stops_start_up(tmp_path: Path) -> None:
    """It used to start Ray, answer ready (every model's default version: of no model) and serve nothing."""
    (tmp_path / "models").mkdir()
    code, stderr, elapsed = _serve(_config(tmp_path, tmp_path / "models"))
    assert code == 1, stderr
    assert (f"error: model repository {tmp_path / 'models'} holds no model versions "
            "(expected MODEL/VERSION/ folders, each with manifest.json and model.onnx)") in stderr
    assert "starting Ray" not in stderr and elapsed < 15


@pytest.mark.parametrize(("extra", "expected"), [
    ("models: {breast-cancer: {versions: ['1', '7']}}\n",
     "error: models.breast-cancer.versions: version '7' is not in the repository; versions: 1, 2, 3"),
    ("models: {breast-cancer: {version_batching: {'9': {max_batch_rows: 8}}}}\n",
     "error: models.breast-cancer.version_batching: version '9' is not served; versions: 1, 2, 3"),
    ("models: {breast-cancer: {versions: ['1', '2'], version_faults: {'3': {delay_ms: 5}}}}\n",
     "error: models.breast-cancer.version_faults: version '3' is not served; versions: 1, 2"),
])
def test_config_naming_a_version_the_repository_lacks_stops_start_up(
        tmp_path: Path, demo_repository: Path, extra: str, expected: str) -> None:
    """The version was silently left out, or its override silently never applied."""
    code, stderr, elapsed = _serve(_config(tmp_path, demo_repository, extra))
    assert code == 1, stderr
    assert expected in stderr
    assert "starting Ray" not in stderr and elapsed < 15


def test_a_repository_that_is_a_file_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "models").write_text("")
    code, stderr, _ = _serve(_config(tmp_path, tmp_path / "models"))
    assert code == 2
    assert f"repository: {tmp_path / 'models'} is a file, not a folder of models" in stderr
    assert "does not exist" not in stderr


def test_ray_refusing_its_settings_is_a_startup_error_not_a_traceback(tmp_path: Path, demo_repository: Path) -> None:
    """ray.init raises ValueError for an object store beyond the machine's memory; that was a traceback."""
    code, stderr, _ = _serve(_config(tmp_path, demo_repository, "ray: {object_store_bytes: 1000000000000000}\n"))
    assert code == 1, stderr
    assert "error: cannot start a local Ray (ray settings in the config): After taking into account" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_a_ray_address_nothing_answers_at_is_a_startup_error_not_a_hang(tmp_path: Path, demo_repository: Path,
                                                                        scheme: str) -> None:
    """ray.init retried a refused address for minutes, logging every 30 s, and the gateway hung with it."""
    address = f"{scheme}127.0.0.1:{free_port()}"
    code, stderr, elapsed = _serve(_config(tmp_path, demo_repository, f"ray: {{address: '{address}'}}\n"))
    assert code == 1, stderr
    assert (f"error: cannot join Ray at {address} (ray settings in the config): nothing accepts connections at "
            f"{address.removeprefix(scheme)} (Connection refused)") in stderr
    assert "Traceback" not in stderr
    assert elapsed < 30


@pytest.mark.parametrize("state", ["folder", "garbage.db", "a-file/state.db"])
def test_token_create_with_a_state_path_it_cannot_open_is_one_line(tmp_path: Path, state: str) -> None:
    """'mlgate token create --config' opened the config's state file unguarded: a traceback for each of these
    (serve already said 'cannot open the state file')."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "garbage.db").write_text("not a database, not at all, not even close\n")
    (tmp_path / "a-file").write_text("")
    config = tmp_path / "c.yaml"
    config.write_text(f"state: {{path: {tmp_path / state}}}\n")
    done = subprocess.run([sys.executable, "-m", "mlgate.cli", "token", "create", "--name", "ada", "--role", "admin",
                           "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"error: cannot open the state file {tmp_path / state}: " in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


@pytest.mark.parametrize(("options", "expected"), [
    (["--http-port", "70000"], "--http-port: Input should be less than or equal to 65535"),  # OverflowError
    (["--grpc-port", "-1"], "--grpc-port: Input should be greater than or equal to 0"),
    (["--http-port", "9100", "--grpc-port", "9100"],
     "--http-port/--grpc-port: http_port and grpc_port are both 9100"),
    (["--host", ""], "--host: String should have at least 1 character"),
    (["--log-level", "loud"], "--log-level: 'loud' is not one of critical, error, warning, info, debug"),
])
def test_command_line_overrides_are_checked_like_the_file(tmp_path: Path, demo_repository: Path,
                                                          options: list[str], expected: str) -> None:
    """The overrides went in unvalidated (model_copy): a port beyond 65535 and an unknown log level were
    tracebacks, a port equal to the other failed only after Ray's start-up."""
    done = subprocess.run([sys.executable, "-m", "mlgate.cli", "serve", "--config",
                           str(_config(tmp_path, demo_repository)), *options],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr and "starting Ray" not in done.stderr
