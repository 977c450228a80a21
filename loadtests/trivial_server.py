"""A trivial, very fast HTTP/1.1 server that answers every request with a fixed OIP response.

Why: to measure the load generator's own ceiling. If the server does almost
no work, the request rate the generator reaches is bounded by the generator,
so this is the reference for "the load generator is not the bottleneck".
``--behaviour`` makes it misbehave in the ways the load generator must
handle (closing connections, chunked bodies, stalls, bad bodies, 503s), so
it doubles as a test fixture.

Run: ``python -m loadtests.trivial_server --port 8999 [--behaviour ok]`` (loopback).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import cast

_BODY = (
    b'{"model_name":"breast-cancer","model_version":"1","outputs":['
    b'{"name":"label","datatype":"INT64","shape":[1],"data":[1]},'
    b'{"name":"probabilities","datatype":"FP32","shape":[1,2],"data":[0.1,0.9]}]}'
)


def _fixed(status: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n".encode()
        + extra + b"\r\n" + body
    )


def _chunked(body: bytes) -> bytes:
    half = len(body) // 2
    chunks = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in (body[:half], body[half:]))
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        + chunks + b"0\r\n\r\n"
    )


RESPONSE = _fixed("200 OK", _BODY)
# behaviour -> (response bytes or None for "never answer", close the connection after answering)
BEHAVIOURS: dict[str, tuple[bytes | None, bool]] = {
    "ok": (RESPONSE, False),
    "close": (_fixed("200 OK", _BODY, b"connection: close\r\n"), True),
    "chunked": (_chunked(_BODY), False),
    "bad-body": (_fixed("200 OK", b'{"result": 1}'), False),
    "503": (_fixed("503 Service Unavailable", b'{"error": "overloaded"}', b"retry-after: 1\r\n"), False),
    "stall": (None, False),
}


class FixedResponder(asyncio.Protocol):
    """Frames requests by Content-Length and answers each with the behaviour's fixed response."""

    def __init__(self, behaviour: str = "ok") -> None:
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._response, self._close = BEHAVIOURS[behaviour]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport to write answers on."""
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        """Answer every complete request in the buffer (pipelining-safe)."""
        self._buf += data
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = _content_length(bytes(self._buf[:end]))
            total = end + 4 + length
            if len(self._buf) < total:
                return
            del self._buf[:total]
            assert self._transport is not None
            if self._response is None:
                continue  # "stall": swallow the request, never answer
            self._transport.write(self._response)
            if self._close:
                self._transport.close()
                return


def _content_length(head: bytes) -> int:
    pos = head.lower().find(b"\r\ncontent-length:")
    if pos < 0:
        return 0
    eol = head.find(b"\r\n", pos + 2)
    return int(head[pos + 17:eol if eol >= 0 else len(head)])


async def serve(host: str, port: int, behaviour: str = "ok") -> None:
    """Serve until SIGINT/SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(lambda: FixedResponder(behaviour), host, port, backlog=1024)
    print(f"trivial server ({behaviour}) on http://{host}:{port}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    """CLI entry point."""
    import uvloop

    p = argparse.ArgumentParser(prog="python -m loadtests.trivial_server")
    p.add_argument("--port", type=int, default=8999)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--behaviour", choices=sorted(BEHAVIOURS), default="ok")
    args = p.parse_args()
    uvloop.run(serve(args.host, args.port, args.behaviour))


if __name__ == "__main__":
    main()
