"""How many bytes of request bodies (HTTP) and messages (gRPC) one gateway process holds at once, over all its
connections.

``server.max_request_bytes`` bounds each body, but nothing bounded their sum: a few hundred clients sending
64 MiB bodies at once, or trickling them, could make a gateway process hold them all (a gathered body is read
without pausing: ``gateway.http_protocol``) until its memory ran out, and every caller would lose their
answer with it. Past ``server.max_inflight_body_bytes`` a request is refused with 429 and ``Retry-After``
before its body is read (or, without a declared length, as soon as its chunks cross the line), and the
bodies already held are answered as usual.

A body is charged when its handler starts reading it, by its declared length (what the protocol will gather)
or chunk by chunk without one, plus its decompressed size when it came compressed, and released once its
response has been sent: a decoded binary tensor is a view into the body, so the body lives that long.
A gRPC message is charged its size before it is parsed (``gateway.grpc_server``), released once answered.
The event loop is the only thread that touches it: no lock.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from gateway.errors import Overloaded

HELD = "mlgate.body_bytes_held"
"""Scope key: the bytes this request's body holds in its process's budget (released with its response)."""

RETRY_AFTER_S = 1.0


class BodyBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def charge(self, scope: MutableMapping[str, Any], nbytes: int) -> None:
        """Count ``nbytes`` more against the request's process; Overloaded (nothing counted) past the limit."""
        if nbytes <= 0:
            return
        if self.held + nbytes > self.limit:
            raise Overloaded(
                f"the gateway is holding {self.held} bytes of request bodies and this one would pass its limit of "
                f"{self.limit} (server.max_inflight_body_bytes); retry shortly",
                retry_after_s=RETRY_AFTER_S,
            )
        self.held += nbytes
        scope[HELD] = scope.get(HELD, 0) + nbytes

    def release(self, scope: MutableMapping[str, Any]) -> None:
        """Give back whatever the request's body was charged (nothing if it was never read)."""
        self.held -= scope.pop(HELD, 0)
