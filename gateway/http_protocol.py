"""uvicorn's HTTP/1.1 protocol, stamping each request with the time its first bytes were parsed.

A request's ``timeout`` is a budget from when the server has it, as a gRPC deadline is. But uvicorn
parses every request that arrived in one pass of the event loop before any of their handlers run,
and a burst of large JSON bodies then keeps the last handler waiting behind the others' decoding
(300 requests of 64 rows: ~100 ms on the 2-core box). Timed from the handler, such a request looked
fresh and was admitted although its caller had already given up on it; timed from here it is not.
"""

from __future__ import annotations

import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

RECEIVED_AT = "mlgate.received_at"
"""Scope key: ``time.monotonic()`` when the request's first bytes were parsed."""


class StampingHttpToolsProtocol(HttpToolsProtocol):
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[RECEIVED_AT] = time.monotonic()  # type: ignore[literal-required]


def listener_config(app: Any, host: str, port: int, **overrides: Any) -> uvicorn.Config:
    """How mlgate serves HTTP: this protocol, no lifespan, and none of uvicorn's per-request extras (access
    log, Server and Date headers, proxy headers), which cost CPU on every request. One place, so that
    ``loadtests.bench_refusal``'s servers measure the listener ``mlgate serve`` runs, not a copy of it."""
    return uvicorn.Config(app, host=host, port=port, http=StampingHttpToolsProtocol, lifespan="off",
                          access_log=False, log_config=None, server_header=False, date_header=False,
                          proxy_headers=False, **overrides)
