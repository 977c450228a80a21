"""A minimal HTTP/1.1 keep-alive client on ``asyncio.Protocol``, built for load generation.

Why not aiohttp or httpx: on a 2-core box the load generator shares the CPU
with the server under test, and a general-purpose client spends tens of
microseconds per request on header objects, URL handling and futures. This
client sends pre-encoded request bytes and parses only what a load generator
needs -- the status code, ``Content-Length`` (or chunked framing), the body and
``Connection: close`` -- and reports completions through plain callbacks
instead of futures, so one request costs a few microseconds of client CPU.

One request is in flight per connection at a time (no pipelining), exactly as
a browser or an HTTP/1.1 SDK would use a keep-alive connection.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

_HEADER_END = b"\r\n\r\n"
_CONTENT_LENGTH = b"\r\ncontent-length:"
_CHUNKED = b"\r\ntransfer-encoding: chunked"
_CONN_CLOSE = b"\r\nconnection: close"
_NO_BODY_STATUSES = frozenset({204, 304})

# Body framing of the response being read.
_FRAME_LENGTH = 0
_FRAME_CHUNKED = 1
_FRAME_UNTIL_CLOSE = 2


class ResponseSink(Protocol):
    """Receives the outcome of each request sent on an :class:`HttpConnection`."""

    def on_response(self, conn: HttpConnection, status: int, body: bytes) -> None:
        """A complete response arrived; ``conn.closed`` says whether the connection can be reused."""

    def on_failure(self, conn: HttpConnection, kind: str) -> None:
        """The request in flight on ``conn`` failed (``kind`` names why); ``conn`` is closed."""


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying at most one request at a time.

    The driver owns ``sent_ns``/``intended_ns`` (timestamps of the request in
    flight) so that timing state lives next to the connection without a dict
    lookup per request.
    """

    __slots__ = (
        "_body_len", "_buf", "_close_after", "_framing", "_head_len", "_sink", "_status", "_transport",
        "busy", "closed", "intended_ns", "sent_ns",
    )

    def __init__(self, sink: ResponseSink) -> None:
        self._sink = sink
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._head_len = -1  # -1 until the header block of the current response is parsed
        self._body_len = 0
        self._framing = _FRAME_LENGTH
        self._status = 0
        self._close_after = False
        self.busy = False
        self.closed = False
        self.sent_ns = 0
        self.intended_ns = 0

    # --- asyncio.Protocol callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; asyncio already sets TCP_NODELAY on TCP sockets."""
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        """Accumulate bytes and complete the response once its framing says it is whole."""
        if not self.busy:
            self._fail("protocol_unsolicited_data")
            return
        self._buf += data
        if self._head_len < 0 and not self._parse_head():
            return
        if self._framing == _FRAME_LENGTH:
            end = self._head_len + self._body_len
            if len(self._buf) < end:
                return
            if len(self._buf) > end:
                self._fail("protocol_extra_data")
                return
            body = bytes(self._buf[self._head_len:end])
        elif self._framing == _FRAME_CHUNKED:
            try:
                decoded = _decode_chunked(self._buf, self._head_len)
            except ValueError:
                self._fail("protocol_bad_chunk")
                return
            if decoded is None:
                return
            body = decoded
        else:
            return  # read until the server closes: completed in eof_received
        self._complete(body)

    def eof_received(self) -> bool | None:
        """A read-until-close body ends here; anything else in flight is a failure (see connection_lost)."""
        if self.busy and self._head_len >= 0 and self._framing == _FRAME_UNTIL_CLOSE:
            self._close_after = True
            self._complete(bytes(self._buf[self._head_len:]))
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        """Report the request in flight, if any, as failed: the server went away before answering."""
        self.closed = True
        if self.busy:
            self.busy = False
            kind = "connection_closed" if exc is None else exception_kind(exc)
            self._sink.on_failure(self, kind)

    # --- driver API -----------------------------------------------------------------------------

    def send(self, request: bytes) -> None:
        """Write one complete pre-encoded request; the outcome goes to the sink."""
        assert self._transport is not None and not self.busy
        self.busy = True
        self._transport.write(request)

    def abort(self, kind: str) -> None:
        """Give up on the request in flight (e.g. a timeout), report it as ``kind``, drop the connection."""
        self._fail(kind)

    def close(self) -> None:
        """Close an idle connection politely."""
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    # --- internals ------------------------------------------------------------------------------

    def _parse_head(self) -> bool:
        """Parse status line and the three headers we care about; False while the head is incomplete."""
        buf = self._buf
        end = buf.find(_HEADER_END)
        if end < 0:
            if len(buf) > 65536:
                self._fail("protocol_header_too_large")
            return False
        head = bytes(buf[:end]).lower()
        try:
            status = int(head[9:12])
        except ValueError:
            self._fail("protocol_bad_status_line")
            return False
        self._status = status
        self._head_len = end + 4
        self._close_after = _CONN_CLOSE in head or head.startswith(b"http/1.0")
        return self._parse_framing(head, status)

    def _parse_framing(self, head: bytes, status: int) -> bool:
        """Decide how the body is delimited: Content-Length, chunked, none, or until close."""
        pos = head.find(_CONTENT_LENGTH)
        if pos >= 0:
            eol = head.find(b"\r\n", pos + 2)
            try:
                self._body_len = int(head[pos + len(_CONTENT_LENGTH):eol if eol >= 0 else len(head)])
            except ValueError:
                self._fail("protocol_bad_content_length")
                return False
            self._framing = _FRAME_LENGTH
        elif _CHUNKED in head:
            self._framing = _FRAME_CHUNKED
        elif status in _NO_BODY_STATUSES or 100 <= status < 200:
            self._body_len = 0
            self._framing = _FRAME_LENGTH
        else:
            self._framing = _FRAME_UNTIL_CLOSE
        return True

    def _complete(self, body: bytes) -> None:
        """Reset for the next request, then hand the response to the sink."""
        status = self._status
        self._buf.clear()
        self._head_len = -1
        self.busy = False
        if self._close_after:
            self.close()
        self._sink.on_response(self, status, body)

    def _fail(self, kind: str) -> None:
        """Report the request in flight as failed and abort the connection (its state is unknowable)."""
        was_busy = self.busy
        self.busy = False
        self.closed = True
        if self._transport is not None:
            self._transport.abort()
        if was_busy:
            self._sink.on_failure(self, kind)


def _decode_chunked(buf: bytearray, start: int) -> bytes | None:
    """Decode a chunked body beginning at ``start``; None while it is incomplete.

    Rarely used (OIP servers send Content-Length), so it simply re-scans the
    buffer on each arrival rather than keeping incremental state. Raises
    ValueError on a malformed chunk size.
    """
    out = bytearray()
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        pos = eol + 2
        if size == 0:
            return bytes(out) if buf.find(_HEADER_END, pos - 2) >= 0 else None
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos:pos + size]
        pos += size + 2


def exception_kind(exc: BaseException) -> str:
    """Short, bounded error label for the report (never a message with addresses or numbers)."""
    if isinstance(exc, ConnectionRefusedError):
        return "connect_refused"
    if isinstance(exc, ConnectionResetError):
        return "connection_reset"
    if isinstance(exc, BrokenPipeError):
        return "broken_pipe"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


def build_request(method: str, host: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """Pre-encode one complete HTTP/1.1 request so the hot loop only calls ``transport.write``."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class FutureSink:
    """Completes one future per connection: for callers that await each response (tests, probes) but want
    this client's low CPU cost (a general-purpose client would, on a 2-core box, slow the gateway it tests)."""

    def __init__(self) -> None:
        self.pending: dict[HttpConnection, asyncio.Future[tuple[int, bytes]]] = {}

    def on_response(self, conn: HttpConnection, status: int, body: bytes) -> None:
        self.pending.pop(conn).set_result((status, body))

    def on_failure(self, conn: HttpConnection, kind: str) -> None:
        self.pending.pop(conn).set_exception(ConnectionError(kind))
