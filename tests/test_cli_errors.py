"""The operator CLI on common mistakes: a clear message and exit 1, never a traceback (no gateway needed)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest


def _mlgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlgate.cli", *args], capture_output=True, text=True, timeout=60)


def _fails_cleanly(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in output, output
    return output


@pytest.mark.parametrize("content", ["models: {}\n", ""])
def test_a_state_option_naming_no_state_file(tmp_path: Path, content: str) -> None:
    """A YAML file was a DatabaseError traceback, an empty one 'no such table'."""
    wrong = tmp_path / "mlgate.yaml"
    wrong.write_text(content)
    for command in (("audit", "show"), ("audit", "verify")):
        _fails_cleanly(_mlgate(*command, "--state", str(wrong)), "is not an mlgate state file")


@pytest.mark.parametrize("args", [
    ("split", "show", "my model", "--url", "http://127.0.0.1:9", "--token", "t"),  # a space: was InvalidURL
    ("audit", "show", "--target", "model/a b", "--url", "http://127.0.0.1:9", "--token", "t"),
    ("split", "show", "m", "--url", "http://127.0.0.1:abc", "--token", "t"),  # a bad port: was InvalidURL
])
def test_names_and_urls_that_were_tracebacks(args: tuple[str, ...]) -> None:
    _fails_cleanly(_mlgate(*args), "cannot reach the gateway at")


def test_a_token_with_a_line_break_is_named_as_such_and_not_echoed() -> None:
    """It was reported as 'the gateway's answer is not JSON'."""
    output = _fails_cleanly(_mlgate("split", "show", "m", "--url", "http://127.0.0.1:9", "--token", "mlg_secret\n"),
                            "the token holds a space, a line break")
    assert "mlg_secret" not in output


@pytest.mark.parametrize("interval", ["inf", "1e12", "-1", "nan"])
def test_a_status_interval_out_of_range_is_named(interval: str) -> None:
    """inf and 1e12 were an OverflowError traceback; -1 and nan were taken as 0 (no rates) without a word."""
    _fails_cleanly(_mlgate("status", "--interval", interval, "--url", "http://127.0.0.1:9"),
                   "--interval", "from 0 to 300")


@pytest.mark.parametrize("window", ["500ms", "0", "20m"])
def test_a_drift_window_the_gateway_cannot_read_is_named(window: str) -> None:
    """500ms was read as one 1 s slot and shown as the window asked for; 20m was refused as 'window_s: ...'."""
    _fails_cleanly(_mlgate("drift", "m", "--window", window, "--url", "http://127.0.0.1:9", "--token", "t"),
                   "--window", "from 1s to 15m")


@pytest.mark.parametrize("anchor", ["abc", "18651cae95b6"])
def test_an_expected_head_that_is_no_hash_is_not_reported_as_tampering(tmp_path: Path, anchor: str) -> None:
    """It was 'TAMPERED: ... the expected head abc… is not in the log (newest entries removed ...)'."""
    from routing.store import StateStore

    state = tmp_path / "state.db"
    StateStore(state).close()
    for where in (("--state", str(state)), ("--url", "http://127.0.0.1:9", "--token", "t")):
        output = _fails_cleanly(_mlgate("audit", "verify", "--expected-head", anchor, *where),
                                "--expected-head", "64 hex digits")
        assert "TAMPERED" not in output


class _Answers(BaseHTTPRequestHandler):
    """Answers every request with 200 and ``body``, as a server that is not mlgate might."""

    body = b"{}"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_POST = do_PUT = do_GET

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def not_mlgate() -> Iterator[tuple[str, type[_Answers]]]:
    handler = type("Handler", (_Answers,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("body", [b"{}", b"[1]"])
@pytest.mark.parametrize("command", [("status",), ("drift", "m"), ("audit", "show"), ("audit", "verify"),
                                     ("split", "show", "m"), ("split", "set", "m", "1=100")])
def test_a_url_that_is_not_mlgate_answering_json(not_mlgate: tuple[str, type[_Answers]], body: bytes,
                                                 command: tuple[str, ...]) -> None:
    """KeyError and TypeError tracebacks; 'audit show' printed '{}' as an empty log and exited 0."""
    url, handler = not_mlgate
    handler.body = body
    token = () if command == ("status",) else ("--token", "t")  # status reads public endpoints
    _fails_cleanly(_mlgate(*command, "--url", url, *token), "is --url the HTTP port of an mlgate gateway?")


def test_a_url_that_does_not_speak_http_1_1() -> None:
    """The gRPC port (HTTP/2) or any other protocol: 'mlgate status' was a BadStatusLine traceback."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def answer() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.recv(4096)
                connection.sendall(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00garbage\r\n\r\n")

        threading.Thread(target=answer, daemon=True).start()
        _fails_cleanly(_mlgate("status", "--url", f"http://127.0.0.1:{listener.getsockname()[1]}"),
                       "not HTTP/1.1", "is --url the HTTP port of an mlgate gateway?")



def test_a_rollout_record_the_gateway_cannot_read_is_shown_as_such(not_mlgate: tuple[str, type[_Answers]]) -> None:
    """A record written by an older mlgate that validated less: 'rollout status' called the gateway 'not mlgate'."""
    import json

    from routing.rollout import RolloutSpec, start

    url, handler = not_mlgate
    record = start(RolloutSpec(model="m", challenger="2"), "1", 100.0, "otto").model_dump(mode="json")
    handler.body = json.dumps({**record, "state": "canary", "step": 99}).encode()
    shown = _mlgate("rollout", "status", "m", "--url", url, "--token", "t")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("state canary: the stored record cannot be read: step: 99 is outside -1..3\n")
    assert shown.stdout.endswith("abort rolls it back; nothing else can act on it\n")
    as_json = json.loads(_mlgate("rollout", "status", "m", "--json", "--url", url, "--token", "t").stdout)
    assert as_json["state"] == "canary" and as_json["unreadable"] == ["step: 99 is outside -1..3"]
