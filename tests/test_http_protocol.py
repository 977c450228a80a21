"""mlgate's HTTP protocol over a real socket: large bodies gathered whole, everything else as uvicorn does it.

A real uvicorn server (``listener_config``, as ``mlgate serve`` builds it) serves ``OipHttpApp`` over a
stand-in deployment; a raw socket client controls how the bytes arrive: in pieces, pipelined, chunked,
cut off, or after ``Expect: 100-continue``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pytest
import uvicorn

from gateway.body_budget import BodyBudget
from gateway.http_app import OipHttpApp
from gateway.http_protocol import GATHER_FROM_BYTES, WHOLE_BODY, listener_config
from tests.conftest import free_port
from tests.test_tracing import MANIFEST, MODEL, Deployment, make_service

LIMIT = 1 << 20
INFER = f"/v2/models/{MODEL}/infer"


@dataclass
class Seen:
    """Per request the application answered: whether its body came gathered, and how many messages it read."""

    requests: list[tuple[bool, int]] = field(default_factory=list)
    app: OipHttpApp | None = None


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[int, Seen]]:
    manifest = MANIFEST.model_copy(update={"max_batch_rows": 65536})
    app = OipHttpApp(make_service(None, Deployment(delay_s=0.0), manifest=manifest), LIMIT,
                     bodies=BodyBudget(LIMIT))
    seen = Seen(app=app)

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        messages, recorded = 0, False

        async def counted() -> Any:
            nonlocal messages
            messages += 1
            return await receive()

        def record() -> None:  # before the response leaves, so that a client holding it can look
            nonlocal recorded
            if not recorded:
                recorded = True
                seen.requests.append((WHOLE_BODY in scope, messages))

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                record()
            await send(message)

        try:
            await app(scope, counted, sending)
        finally:
            record()  # a request that got no response (its client went away)

    port = free_port()
    uvicorn_server = uvicorn.Server(listener_config(recording, "127.0.0.1", port, gather_up_to=LIMIT))
    thread = threading.Thread(target=lambda: asyncio.run(uvicorn_server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uvicorn_server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    yield port, seen
    uvicorn_server.should_exit = True
    thread.join(10)


def _binary_request(rows: int, start: float = 0.0) -> tuple[bytes, np.ndarray]:
    """Body and the rows it carries: a JSON header and the tensor as raw bytes (Triton's binary extension)."""
    x = np.arange(start, start + rows * 3, dtype=np.float32).reshape(rows, 3)
    header = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 3],
                                       "parameters": {"binary_data_size": x.nbytes}}]})
    return header + x.tobytes(), x


def _head(body: bytes, port: int, header_length: int | None = None, extra: str = "") -> bytes:
    lines = [f"POST {INFER} HTTP/1.1", f"host: 127.0.0.1:{port}", "content-type: application/octet-stream",
             f"content-length: {len(body)}"]
    if header_length is not None:
        lines.append(f"inference-header-content-length: {header_length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def _read_response(sock: socket.socket, pending: bytearray) -> tuple[int, dict[str, str], bytes]:
    while b"\r\n\r\n" not in pending:
        chunk = sock.recv(1 << 16)
        assert chunk, "the connection closed before a response"
        pending += chunk
    head, _, rest = bytes(pending).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(1 << 16)
        assert chunk, "the connection closed mid-response"
        rest += chunk
    pending[:] = rest[length:]
    return int(status_line.split()[1]), headers, rest[:length]


def _doubled(payload: bytes) -> np.ndarray:
    doc = orjson.loads(payload)
    (output,) = doc["outputs"]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def test_a_large_body_arriving_in_pieces_is_gathered_whole(server: tuple[int, Seen]) -> None:
    port, seen = server
    body, x = _binary_request(8192)  # 96 KiB
    header_length = body.index(b"}]}") + 3
    assert len(body) >= GATHER_FROM_BYTES
    with _connect(port) as sock:
        sock.sendall(_head(body, port, header_length))
        for piece in range(0, len(body), 10_000):  # pieces the server reads apart
            sock.sendall(body[piece:piece + 10_000])
            time.sleep(0.002)
        status, _, payload = _read_response(sock, bytearray())
    assert status == 200, payload
    np.testing.assert_array_equal(_doubled(payload), x * 2)
    assert seen.requests[-1] == (True, 1)  # one message, empty: the body came through the scope


def test_small_and_chunked_bodies_go_uvicorns_way(server: tuple[int, Seen]) -> None:
    port, seen = server
    small, x_small = _binary_request(10)
    large, x_large = _binary_request(8192, start=1.0)
    with _connect(port) as sock:
        sock.sendall(_head(small, port, small.index(b"}]}") + 3) + small)
        status, _, payload = _read_response(sock, bytearray())
        assert status == 200, payload
        np.testing.assert_array_equal(_doubled(payload), x_small * 2)
        assert seen.requests[-1][0] is False
        head = (f"POST {INFER} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
                f"inference-header-content-length: {large.index(b'}]}') + 3}\r\n\r\n").encode()
        sock.sendall(head)
        for piece in range(0, len(large), 30_000):
            chunk = large[piece:piece + 30_000]
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        status, _, payload = _read_response(sock, bytearray())
    assert status == 200, payload
    np.testing.assert_array_equal(_doubled(payload), x_large * 2)
    assert seen.requests[-1][0] is False  # no declared length: not gathered


def test_pipelined_large_requests_each_get_their_own_body(server: tuple[int, Seen]) -> None:
    port, seen = server
    bodies = [_binary_request(6000, start=float(i * 100_000)) for i in range(3)]
    wire = b"".join(_head(body, port, body.index(b"}]}") + 3) + body for body, _ in bodies)
    with _connect(port) as sock:
        sock.sendall(wire)  # all three at once: the second's bytes arrive while the first is answered
        pending = bytearray()
        for _, x in bodies:
            status, _, payload = _read_response(sock, pending)
            assert status == 200, payload
            np.testing.assert_array_equal(_doubled(payload), x * 2)
    assert seen.requests[-3:] == [(True, 1)] * 3


def test_expect_100_continue_gets_its_interim_answer_before_the_body(server: tuple[int, Seen]) -> None:
    port, seen = server
    body, x = _binary_request(8192, start=7.0)
    with _connect(port) as sock:
        sock.sendall(_head(body, port, body.index(b"}]}") + 3, extra="expect: 100-continue\r\n"))
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += sock.recv(1024)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        status, _, payload = _read_response(sock, bytearray(interim.partition(b"\r\n\r\n")[2]))
    assert status == 200, payload
    np.testing.assert_array_equal(_doubled(payload), x * 2)
    assert seen.requests[-1] == (True, 1)


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(server: tuple[int, Seen]) -> None:
    port, seen = server
    with _connect(port) as sock:
        sock.sendall((f"POST {INFER} HTTP/1.1\r\nhost: x\r\ncontent-length: {LIMIT + 1}\r\n\r\n").encode())
        sock.sendall(b"\0" * 200_000)
        status, _, payload = _read_response(sock, bytearray())
    assert status == 413
    assert f"exceeds the limit of {LIMIT} bytes" in orjson.loads(payload)["error"]
    assert seen.requests[-1][0] is False


def test_a_client_gone_mid_body_costs_nothing_and_the_server_keeps_serving(server: tuple[int, Seen]) -> None:
    port, seen = server
    body, x = _binary_request(8192, start=3.0)
    answered = len(seen.requests)
    with _connect(port) as sock:
        sock.sendall(_head(body, port, body.index(b"}]}") + 3) + body[: len(body) // 2])
        time.sleep(0.05)
    deadline = time.monotonic() + 5
    while len(seen.requests) == answered:  # the application learns of the disconnect and returns
        assert time.monotonic() < deadline, "the cut request never finished"
        time.sleep(0.01)
    assert seen.requests[-1][0] is False  # its half body was never handed over
    with _connect(port) as sock:
        sock.sendall(_head(body, port, body.index(b"}]}") + 3) + body)
        status, _, payload = _read_response(sock, bytearray())
    assert status == 200, payload
    np.testing.assert_array_equal(_doubled(payload), x * 2)


def _held(seen: Seen) -> int:
    assert seen.app is not None and seen.app.bodies is not None
    return seen.app.bodies.held


def _wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_bodies_past_the_process_budget_are_refused_with_429_and_the_held_one_is_answered(
        server: tuple[int, Seen]) -> None:
    """Budget = LIMIT (1 MiB): while a 720 KB body is on its way, a second is refused before it is read, with
    Retry-After; once the first is answered the budget is free again, also after a client that went away."""
    port, seen = server
    first, x_first = _binary_request(60_000)
    second, x_second = _binary_request(60_000, start=5.0)
    assert len(first) + len(second) > LIMIT
    with _connect(port) as holding, _connect(port) as refused:
        holding.sendall(_head(first, port, first.index(b"}]}") + 3) + first[:100_000])
        _wait_until(lambda: _held(seen) == len(first), "the first body was never charged")
        refused.sendall(_head(second, port, second.index(b"}]}") + 3) + second)
        status, headers, payload = _read_response(refused, bytearray())
        assert status == 429, payload
        assert headers["retry-after"] == "1"
        assert "max_inflight_body_bytes" in orjson.loads(payload)["error"]
        holding.sendall(first[100_000:])
        status, _, payload = _read_response(holding, bytearray())
    assert status == 200, payload
    np.testing.assert_array_equal(_doubled(payload), x_first * 2)
    _wait_until(lambda: _held(seen) == 0, "the answered body was never released")
    with _connect(port) as gone:  # cut off mid-body: released all the same
        gone.sendall(_head(second, port, second.index(b"}]}") + 3) + second[:100_000])
        _wait_until(lambda: _held(seen) == len(second), "the cut body was never charged")
    _wait_until(lambda: _held(seen) == 0, "the cut body was never released")
    with _connect(port) as again:
        again.sendall(_head(second, port, second.index(b"}]}") + 3) + second)
        status, _, payload = _read_response(again, bytearray())
    assert status == 200, payload
    np.testing.assert_array_equal(_doubled(payload), x_second * 2)


def test_a_chunked_body_is_charged_as_it_arrives(server: tuple[int, Seen]) -> None:
    """No declared length: refused once its chunks pass what the budget has left (a 720 KB body is held)."""
    port, seen = server
    first, _ = _binary_request(60_000)
    second, _ = _binary_request(60_000, start=5.0)
    with _connect(port) as holding, _connect(port) as chunked:
        holding.sendall(_head(first, port, first.index(b"}]}") + 3) + first[:100_000])
        _wait_until(lambda: _held(seen) == len(first), "the first body was never charged")
        chunked.sendall((f"POST {INFER} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
                         f"inference-header-content-length: {second.index(b'}]}') + 3}\r\n\r\n").encode())
        for piece in range(0, len(second), 30_000):
            chunk = second[piece:piece + 30_000]
            try:
                chunked.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except OSError:  # the server answered and closed: the rest is not wanted
                break
        status, _, payload = _read_response(chunked, bytearray())
        assert status == 429, payload
        assert "max_inflight_body_bytes" in orjson.loads(payload)["error"]
    _wait_until(lambda: _held(seen) == 0, "the bodies were never released")


@pytest.mark.parametrize("path", ["/v2/health/ready", f"/v2/models/{MODEL}", "/metrics"])
def test_head_is_answered_as_get_without_a_body_and_the_connection_serves_on(server: tuple[int, Seen],
                                                                               path: str) -> None:
    """HEAD on a GET endpoint was a 405 (RFC 9110 9.1: servers support GET and HEAD; health checkers probe with it)."""
    port, _ = server
    body, x = _binary_request(2)
    with _connect(port) as sock:
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode() + _head(body, port, body.index(b"}]}") + 3)
                     + body)
        pending = bytearray()
        while b"\r\n\r\n" not in pending:
            pending += sock.recv(1 << 16)
        head, _, rest = bytes(pending).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert int(dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])[b"content-length"]) > 0
        pending[:] = rest  # no body: what follows is the next response
        status, _, payload = _read_response(sock, pending)
    assert status == 200, payload
    np.testing.assert_array_equal(_doubled(payload), x * 2)


def test_a_method_a_get_endpoint_refuses_names_get_and_head(server: tuple[int, Seen]) -> None:
    port, _ = server
    with _connect(port) as sock:
        sock.sendall(b"PUT /v2/health/live HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        status, headers, payload = _read_response(sock, bytearray())
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert orjson.loads(payload)["error"] == "method PUT not allowed here; use GET, HEAD"
