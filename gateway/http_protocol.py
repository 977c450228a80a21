"""uvicorn's HTTP/1.1 protocol, stamping each request with the time its first bytes were parsed, and gathering
large bodies whole.

A request's ``timeout`` is a budget from when the server has it, as a gRPC deadline is. But uvicorn
parses every request that arrived in one pass of the event loop before any of their handlers run,
and a burst of large JSON bodies then keeps the last handler waiting behind the others' decoding
(300 requests of 64 rows: ~100 ms on the 2-core box). Timed from the handler, such a request looked
fresh and was admitted although its caller had already given up on it; timed from here it is not.

A body uvicorn passes on in pieces is copied up to four times: httptools hands each piece over as bytes,
uvicorn appends it to a bytearray, ``receive`` copies that into bytes for each message, and the application
joins the messages. With 4,096-row requests (480 KiB) the three after httptools' were about 12% of a busy
gateway's samples (py-spy, 2-core box). So a body that declares its length, from ``GATHER_FROM_BYTES`` up to the
application's limit, is gathered here into one bytearray, handed to the application through the scope
(``WHOLE_BODY``) when it is complete: one copy after httptools'. That cut the gateway's CPU per such request by
17% (loadtests/README.md, "Large bodies gathered whole"). Other bodies (small, chunked, or over the limit, which
the application refuses from its declared length) take uvicorn's way.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

RECEIVED_AT = "mlgate.received_at"
"""Scope key: ``time.monotonic()`` when the request's first bytes were parsed."""

WHOLE_BODY = "mlgate.whole_body"
"""Scope key: the request's whole body (a bytearray), where the protocol gathered it; its messages then carry none."""

GATHER_FROM_BYTES = 64 << 10
"""Bodies from this size are gathered whole: uvicorn's own flow-control mark (``HIGH_WATER_LIMIT``). Below it the
extra copies are cheap: on the 2-core box copying 64 KiB out of a bytearray took 1.7 µs, 4 KiB 0.16 µs."""


class StampingHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, gather_up_to: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gather_up_to = gather_up_to
        """The application's body limit: bodies declared larger take uvicorn's way, to be refused."""
        self._gathered: bytearray | None = None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[RECEIVED_AT] = time.monotonic()  # type: ignore[literal-required]
        self._gathered = None

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self._gather_up_to and not self.parser.should_upgrade():
            length = declared_length(self.headers)
            if GATHER_FROM_BYTES <= length <= self._gather_up_to:
                self._gathered = bytearray()

    def on_body(self, body: bytes) -> None:
        gathered = self._gathered
        if gathered is None:
            super().on_body(body)
        elif self.cycle.response_complete:  # answered already (refused): the rest is dropped, as uvicorn does
            self._gathered = None
        else:
            gathered += body  # reading is never paused for it: the declared length, within the limit, bounds it

    def on_message_complete(self) -> None:
        gathered, self._gathered = self._gathered, None
        if gathered is not None and not self.cycle.response_complete:
            self.scope[WHOLE_BODY] = gathered  # type: ignore[literal-required]
        super().on_message_complete()


def declared_length(headers: list[tuple[bytes, bytes]]) -> int:
    """Content-Length (0 when absent or not a number: httptools has checked the framing itself)."""
    for name, value in headers:
        if name == b"content-length":
            value = value.strip()
            return int(value) if value.isascii() and value.isdigit() else 0
    return 0


def listener_config(app: Any, host: str, port: int, gather_up_to: int = 0, **overrides: Any) -> uvicorn.Config:
    """How mlgate serves HTTP: this protocol, no lifespan, and none of uvicorn's per-request extras (access
    log, Server and Date headers, proxy headers), which cost CPU on every request. One place, so that
    ``loadtests.bench_refusal``'s servers measure the listener ``mlgate serve`` runs, not a copy of it.
    ``gather_up_to``: the application's body limit, up to which large bodies are gathered whole (0: never)."""
    protocol = partial(StampingHttpToolsProtocol, gather_up_to=gather_up_to)
    return uvicorn.Config(app, host=host, port=port, http=protocol, lifespan="off",  # type: ignore[arg-type]
                          access_log=False, log_config=None, server_header=False, date_header=False,
                          proxy_headers=False, **overrides)
