"""The OIP v2 REST endpoints as a plain ASGI application.

The hot path (``POST .../infer``) is a few dictionary look-ups away from the
socket: no framework routing, no request objects, one body read, one orjson
parse, one send. It also serves ``/metrics`` for Prometheus and hands
``/admin/...`` to the admin API (``gateway.admin_api``); every other path is a
404 with an OIP error body.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any

import orjson

from gateway.body_budget import BodyBudget
from gateway.errors import (
    BadRequest,
    InferenceError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    quoted,
    shown,
)
from gateway.http_codec import HttpInferRequest, decode_infer_request, encode_infer_response, error_body, json_body
from gateway.http_protocol import RECEIVED_AT, WHOLE_BODY, declared_length
from gateway.service import CLIENT_CLOSED, InferenceService, InferResult
from gateway.traffic import Target
from telemetry.metrics import exposition
from telemetry.tracing import NOT_TRACED, TRACE_ID_HEADER

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

Response = tuple[int, list[tuple[bytes, bytes]], bytes]

JSON_HEADERS = [(b"content-type", b"application/json")]
BINARY_CONTENT_TYPE = b"application/octet-stream"
TRACE_ID = TRACE_ID_HEADER.encode()


class ClientDisconnected(Exception):
    """The client went away before its body arrived; nothing to answer."""


ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class OipHttpApp:
    def __init__(self, service: InferenceService, max_request_bytes: int, admin: ASGIApp | None = None,
                 bodies: BodyBudget | None = None) -> None:
        self.service = service
        self.max_request_bytes = max_request_bytes
        self.admin = admin
        """The control plane (``/admin/...``), a separate application on the same port."""
        self.bodies = bodies
        """The bytes of request bodies this process may hold at once, shared with gRPC (None: no bound)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if self.admin is not None and scope["path"].startswith("/admin/"):
            await self.admin(scope, receive, send)
            return
        try:
            await self._respond(scope, receive, send)
        finally:
            if self.bodies is not None:
                self.bodies.release(scope)

    async def _respond(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            status, headers, body = await self._handle(scope, receive)
        except ClientDisconnected:
            return
        except InferenceError as exc:
            status, headers, body = _error_response(exc)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            status, headers, body = 500, list(JSON_HEADERS), error_body("internal server error")
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, scope: Scope, receive: Receive) -> Response:
        method: str = scope["method"]
        if scope["path"] == "/metrics":
            _allow(method, "GET")
            body, content_type = exposition()
            return 200, [(b"content-type", content_type.encode())], body
        if scope["path"] != "/v2" and not scope["path"].startswith("/v2/"):
            raise NotFound(f"no such endpoint: {method} {scope['path']}")
        parts = scope["path"].rstrip("/").split("/")[2:]  # drop "" and "v2"
        if len(parts) >= 2 and parts[0] == "models":
            return await self._model_endpoint(method, parts[1:], scope, receive)
        service = self.service
        if not parts:
            _allow(method, "GET")
            return _json(200, service.server_metadata())
        if parts == ["health", "live"]:
            _allow(method, "GET")
            return _json(200, {"live": service.live()})
        if parts == ["health", "ready"]:
            _allow(method, "GET")
            ready = service.ready()
            return _json(200 if ready else 503, {"ready": ready})
        if parts == ["repository", "index"]:
            _allow(method, "POST")
            index_request = await self._read_body(scope, receive)
            return _json(200, service.repository_index(ready_only=_index_ready_only(index_request)))
        raise NotFound(f"no such endpoint: {method} {scope['path']}")

    async def _model_endpoint(self, method: str, parts: list[str], scope: Scope, receive: Receive) -> Response:
        model, rest = parts[0], parts[1:]
        version: str | None = None
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        service = self.service
        if rest == ["infer"]:
            _allow(method, "POST")
            return await self._infer(model, version, scope, receive)
        if not rest:
            _allow(method, "GET")
            return _json(200, service.model_metadata(model, version))
        if rest == ["ready"]:
            _allow(method, "GET")
            ready = service.model_ready(model, version)
            return _json(200 if ready else 503, {"name": model, "ready": ready})
        if rest == ["config"]:
            _allow(method, "GET")
            return _json(200, service.model_config(model, version))
        raise NotFound(f"no such endpoint: {method} {scope['path']}")

    async def _infer(self, model: str, version: str | None, scope: Scope, receive: Receive) -> Response:
        """One inference request, counted, timed and traced whatever its outcome (``InferenceService.finished``).

        Errors are answered here rather than in ``__call__`` so that they, too, carry the trace id.
        """
        started = time.perf_counter()
        service = self.service
        header = partial(raw_header, scope["headers"])
        tracing = service.tracing
        trace_id, trace = tracing.start_request(model, "http", header) if tracing is not None else NOT_TRACED
        target: Target | None = None
        result: InferResult | None = None
        request_id = header("x-request-id") if service.access_log_sample else None  # else looked up on failure
        status = 500
        try:
            # 401/404/503/429 before reading a possibly large body
            authorization = header("authorization") if service.data_plane_auth is not None else None
            if trace is not None:
                trace.start_step("route")
            target = service.resolve(model, version, header, authorization)
            if trace is not None:
                trace.start_step("decode")
            body = await self._read_body(scope, receive)
            request = decode_infer_request(body, _header_length(scope), target.declared)
            request_id = request_id or request.id
            if trace is not None:
                trace.end_step()
            deadline = None if request.timeout_s is None else _deadline(request.timeout_s, scope)
            result = await service.infer(target, request.tensors, request.requested_outputs, deadline,
                                         request.routing_key, trace)
            if trace is not None:
                trace.start_step("encode")  # ended with the request's span, in ``finished``
            response = _infer_response(result, request)
            status = 200
        except InferenceError as exc:
            status = exc.http_status
            if trace is not None:
                trace.fail(exc.message)
            response = _error_response(exc)
        except ClientDisconnected:
            status = CLIENT_CLOSED
            if trace is not None:
                trace.fail("the client went away before its body arrived")
            raise
        except asyncio.CancelledError:  # the connection closed, or shutdown's grace ran out, while we worked
            status = CLIENT_CLOSED
            if trace is not None:
                trace.fail("cancelled")
            raise
        except Exception as exc:
            if trace is not None:
                trace.fail(f"internal server error ({type(exc).__name__})")
            request_id = request_id or header("x-request-id")
            response = _error_response(service.unexpected("http", model, request_id, trace_id))
        finally:
            service.finished("http", model, target, result, status, started, trace, request_id, trace_id)
        if trace_id is not None:
            response[1].append((TRACE_ID, trace_id.encode()))
        return response

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | bytearray:
        limit = self.max_request_bytes
        declared = refuse_declared_oversize(scope["headers"], limit)
        budget = self.bodies
        if budget is not None:
            budget.charge(scope, declared)
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            if budget is not None and not declared:  # chunked: charged as it arrives
                budget.charge(scope, len(chunk))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: bytes | bytearray = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        gathered: bytearray | None = scope.get(WHOLE_BODY)  # a large body the protocol gathered: no messages carried it
        if gathered is not None:
            body = gathered
        encoding = _content_coding(scope["headers"])
        if encoding is not None:
            body = _decompress(body, encoding, limit)
            if budget is not None:
                budget.charge(scope, len(body))
        return body


def _infer_response(result: InferResult, request: HttpInferRequest) -> Response:
    payload, header_length = encode_infer_response(result, request)
    headers = list(JSON_HEADERS) if header_length is None else [
        (b"content-type", BINARY_CONTENT_TYPE),
        (b"inference-header-content-length", str(header_length).encode())]
    if result.variant is not None:
        headers.append((b"x-mlgate-variant", result.variant.encode()))
    if result.fallback is not None:
        headers.append((b"x-mlgate-fallback", result.fallback.encode()))
    return 200, headers, payload


def _decompress(body: bytes | bytearray, encoding: str, limit: int) -> bytes:
    """gzip/deflate request bodies (tritonclient's request_compression_algorithm), bounded against bombs. A gzip
    body may be several members back to back (RFC 1952), as Python's gzip reads them; a stream that stops before
    its end, or bytes after a deflate stream, are refused rather than served as what could be read."""
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise BadRequest(f"unsupported Content-Encoding {quoted(encoding)}; use gzip, deflate or identity")
    pieces: list[bytes] = []
    size = 0
    rest: bytes | bytearray = body
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            piece = inflater.decompress(rest, limit + 1 - size)
        except zlib.error as exc:
            raise BadRequest(f"request body is not valid {encoding} data: {exc}") from None
        pieces.append(piece)
        size += len(piece)
        if size > limit or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"decompressed request body exceeds the limit of {limit} bytes")
        if not inflater.eof:
            raise BadRequest(f"request body is truncated {encoding} data: the compressed stream does not end")
        rest = inflater.unused_data
        if not rest:
            return pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if encoding != "gzip":
            raise BadRequest(f"request body has {len(rest)} bytes after the end of its {encoding} data")


def _content_coding(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The body's one content coding, or None for none (identity).

    Codings stack in the order they were applied, whether listed in one ``Content-Encoding`` or in several
    (RFC 9110 8.4). Only the first header was read: ``gzip`` twice was inflated once, and its still-compressed
    bytes were then refused as JSON that does not parse. A stack is refused by name."""
    codings = [coding.strip().lower() for key, value in headers if key == b"content-encoding"
               for coding in value.decode("latin-1").split(",")]
    applied = [coding for coding in codings if coding not in ("identity", "")]
    if len(applied) > 1:
        raise BadRequest(f"Content-Encoding stacks {len(applied)} codings ({', '.join(applied)[:80]}); "
                         "a request body may have one: gzip or deflate")
    return applied[0] if applied else None


def _header(scope: Scope, name: bytes) -> str | None:
    """A header's value, lower-cased (lengths, encodings: compared without case)."""
    value = raw_header(scope["headers"], name.decode("latin-1"))
    return None if value is None else value.lower()


def refuse_declared_oversize(headers: list[tuple[bytes, bytes]], limit: int) -> int:
    """The declared ``Content-Length`` (0 without one); PayloadTooLarge if it is more than ``limit`` bytes, refused
    before any is read."""
    declared = declared_length(headers)
    if declared > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    return declared


def raw_header(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    """A header's value as sent (case kept: routing keys and header rules compare it exactly)."""
    wanted = name.encode("latin-1")
    for key, value in headers:
        if key == wanted:
            return str(value.decode("latin-1").strip())
    return None


def _header_length(scope: Scope) -> int | None:
    raw = _header(scope, b"inference-header-content-length")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):  # ('²' is a digit to str.isdigit, not to int)
        raise BadRequest(f"Inference-Header-Content-Length must be a non-negative integer, got {shown(raw)}")
    return int(raw)


def _index_ready_only(body: bytes | bytearray) -> bool:
    if not body.strip():
        return False
    try:
        doc = orjson.loads(body)
    except ValueError:
        raise BadRequest("repository index request body must be JSON") from None
    ready = doc.get("ready", False) if isinstance(doc, dict) else None
    if not isinstance(ready, bool):
        raise BadRequest("repository index request must be a JSON object whose 'ready' is true or false")
    return ready


def _allow(method: str, allowed: str) -> None:
    """MethodNotAllowed (405, with ``Allow``) unless ``method`` is ``allowed``. Where GET is, HEAD is too (RFC 9110
    9.1: every general-purpose server supports both; load balancers and uptime checks probe with HEAD): it is
    answered as GET would be, and uvicorn leaves the body out."""
    if method != allowed and not (method == "HEAD" and allowed == "GET"):
        raise MethodNotAllowed(method, "GET, HEAD" if allowed == "GET" else allowed)


def _json(status: int, doc: Any) -> Response:
    return status, list(JSON_HEADERS), json_body(doc)


def _deadline(timeout_s: float, scope: Scope) -> float:
    """When a request's ``timeout`` runs out (``time.monotonic()``): counted from its first bytes' arrival
    (``gateway.http_protocol``), or from now where no protocol stamped the request."""
    received_at: float | None = scope.get(RECEIVED_AT)
    return (time.monotonic() if received_at is None else received_at) + timeout_s


def _error_response(exc: InferenceError) -> Response:
    headers = list(JSON_HEADERS)
    if isinstance(exc, Unauthorized):
        headers.append((b"www-authenticate", b"Bearer"))
    if exc.retry_after_s is not None:
        headers.append((b"retry-after", str(max(1, round(exc.retry_after_s))).encode()))
    if isinstance(exc, MethodNotAllowed):
        headers.append((b"allow", exc.allowed.encode()))
    return exc.http_status, headers, error_body(exc.message)
