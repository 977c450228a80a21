"""The Open Inference Protocol over gRPC (KServe v2 / Triton ``GRPCInferenceService``): the servicer and server.

The servicer maps each RPC onto ``InferenceService`` — the same validation,
version resolution and batching as the HTTP front end — and every
``InferenceError`` onto its gRPC status code; the messages are converted by
``gateway.grpc_codec``, which is pure.

The server is a ``grpc.aio`` server; it runs on the same asyncio loop as the
HTTP server, so both front ends feed the same batchers without threads.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from functools import wraps
from typing import Any, Final, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from gateway.body_budget import BodyBudget
from gateway.errors import DeadlineExceeded, InferenceError, Overloaded
from gateway.grpc_codec import (
    decode_infer_request,
    describe_undecodable,
    encode_infer_response,
    model_metadata_response,
    repository_index_response,
    request_parameter,
    server_metadata_response,
)
from gateway.proto import grpc_service_pb2 as pb
from gateway.proto import grpc_service_pb2_grpc as pb_grpc
from gateway.service import (
    CLIENT_CLOSED,
    InferenceService,
    InferResult,
    parse_routing_key,
    parse_timeout_us,
    tighter,
)
from gateway.traffic import Target
from telemetry.tracing import NOT_TRACED, TRACE_ID_HEADER

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- deadlines


def request_deadline(request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    """When the request's time budget runs out (``time.monotonic()``): the tighter of its ``timeout``
    parameter (µs) and the gRPC deadline, counted from now (call it on arrival). The batcher enforces
    it. DeadlineExceeded if the gRPC deadline has already passed.
    """
    from_parameter = parse_timeout_us(request_parameter(request, "timeout"))
    remaining: float | None = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceeded("the request's gRPC deadline had passed on arrival")
    budget = tighter(from_parameter, remaining)
    return None if budget is None else time.monotonic() + budget


def routing_key_parameter(request: pb.ModelInferRequest) -> str | None:
    """The OIP ``routing_key`` request parameter, if the request sets it (a string parameter)."""
    return parse_routing_key(request_parameter(request, "routing_key"))


def first_values(metadata: Iterable[tuple[str, str | bytes]]) -> dict[str, str]:
    """Each text metadata key's first value, whitespace stripped: what the HTTP front end reads from its headers.

    The router's header rules, the sticky key, ``authorization``, ``x-request-id`` and ``traceparent`` are read
    from this. A dict comprehension kept the last value, so a request sending ``x-tester: no`` then
    ``x-tester: yes`` was routed by a header rule on gRPC and not on HTTP. Binary (``-bin``) values are left out.
    """
    first: dict[str, str] = {}
    for key, value in metadata:
        if isinstance(value, str) and key not in first:
            first[key] = value.strip()
    return first


# --------------------------------------------------------------------------- servicer

_Servicer = TypeVar("_Servicer", bound="OipGrpcServicer")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Handler = Callable[[_Servicer, _Request, Any], Awaitable[_Response]]


def _rpc(handler: _Handler[_Servicer, _Request, _Response]) -> _Handler[_Servicer, _Request, _Response]:
    """Map errors to statuses: InferenceError -> its code and message; anything else -> INTERNAL, logged.

    The client never sees a stack trace; the log keeps it.
    """

    @wraps(handler)
    async def guarded(
        self: _Servicer, request: _Request, context: grpc.aio.ServicerContext[Any, Any]
    ) -> _Response:
        try:
            return await handler(self, request, context)
        except InferenceError as exc:
            await abort_with(context, exc)
        except Exception:
            log.exception("unhandled error in gRPC %s", handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")
            raise AssertionError("context.abort() returned") from None

    return guarded


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], exc: InferenceError) -> NoReturn:
    """End the RPC with the error's status; overload errors also carry a ``retry-after`` trailer (seconds)."""
    trailers: tuple[tuple[str, str], ...] = ()
    if exc.retry_after_s is not None:
        trailers = (("retry-after", str(max(1, math.ceil(exc.retry_after_s)))),)
    await context.abort(exc.grpc_code, status_message(exc.message), trailing_metadata=trailers)
    raise AssertionError("context.abort() returned")  # it always raises; this keeps type checkers sure


STATUS_MESSAGE_BYTES: Final = 4096
"""Most bytes an error message may take in the ``grpc-message`` trailer, as sent (percent-encoded). Clients
refuse trailers past 16 KiB outright and, from 8 KiB, at random (grpc's metadata soft limit)."""


def status_message(message: str) -> str:
    """``message``, cut in the middle to fit ``STATUS_MESSAGE_BYTES`` once percent-encoded.

    Messages quoted what the client sent (a model name, a tensor name, a routing key) whole; a long one made the
    trailer too large, and the client saw RESOURCE_EXHAUSTED "received metadata size exceeds hard limit" instead of
    the error. They now quote only its start (``errors.quoted``, ``errors.shown``); this bound stays for what they
    list at length (every served model, every declared input). The head names the field and quotes the value, the
    tail says what was expected, so both are kept.
    The fast path costs one length check: no character is sent as more than 12 bytes (4 UTF-8 bytes, each %XX);
    past it, only the first and last ``STATUS_MESSAGE_BYTES`` characters are ever read.
    """
    if len(message) * 12 <= STATUS_MESSAGE_BYTES:
        return message
    if len(message) <= STATUS_MESSAGE_BYTES and _encoded_size(message) <= STATUS_MESSAGE_BYTES:
        return message
    half = (STATUS_MESSAGE_BYTES - 64) // 2  # 64: room for the marker
    head, tail = _fitting_prefix(message[:half], half), _fitting_prefix(message[-half:][::-1], half)[::-1]
    cut = len(message) - len(head) - len(tail)
    return f"{head}... ({cut} characters cut) ...{tail}"


def _encoded_size(text: str) -> int:
    """Bytes ``text`` takes in a ``grpc-message`` trailer: printable ASCII but '%' as is, any other byte as %XX."""
    data = text.encode("utf-8", "surrogatepass")
    plain = sum(1 for byte in data if 0x20 <= byte <= 0x7E and byte != 0x25)
    return plain + 3 * (len(data) - plain)


def _fitting_prefix(text: str, budget: int) -> str:
    """The longest prefix of ``text`` whose encoded size is at most ``budget``."""
    used = 0
    for index, char in enumerate(text):
        used += _encoded_size(char)
        if used > budget:
            return text[:index]
    return text


class OipGrpcServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``GRPCInferenceService`` over an ``InferenceService`` (OIP RPCs plus Triton's RepositoryIndex)."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    @_rpc
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.service.live())

    @_rpc
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.ready())

    @_rpc
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.service.model_ready(request.name, request.version or None))

    @_rpc
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerMetadataResponse:
        return server_metadata_response(self.service.server_metadata())

    @_rpc
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelMetadataResponse:
        return model_metadata_response(self.service.model_metadata(request.name, request.version or None))

    @_rpc
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RepositoryIndexResponse:
        # One repository per server: repository_name is accepted and ignored.
        return repository_index_response(self.service.repository_index(ready_only=request.ready))

    @_rpc
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelInferResponse:
        started = time.perf_counter()
        service, model = self.service, request.model_name
        metadata = first_values(context.invocation_metadata() or ())
        tracing = service.tracing
        trace_id, trace = NOT_TRACED if tracing is None else tracing.start_request(model, "grpc", metadata.get)
        target: Target | None = None
        result: InferResult | None = None
        request_id = metadata.get("x-request-id") if service.access_log_sample else None  # else on failure
        status = 500
        try:
            if trace_id is not None:  # initial metadata: it reaches the caller on errors too
                await context.send_initial_metadata(((TRACE_ID_HEADER, trace_id),))
            deadline = request_deadline(request, context)  # on arrival, before any work
            # Resolve first: an unknown model is NOT_FOUND without decoding a possibly large body.
            if trace is not None:
                trace.start_step("route")
            target = service.resolve(model, request.model_version or None, metadata.get,
                                     metadata.get("authorization"))
            if trace is not None:
                trace.start_step("decode")
            decoded = decode_infer_request(request, target.declared)
            request_id = request_id or decoded.id or None
            if trace is not None:
                trace.end_step()
            result = await service.infer(target, decoded.tensors, decoded.requested_outputs, deadline,
                                         routing_key_parameter(request), trace)
            if trace is not None:
                trace.start_step("encode")  # ended with the request's span, in ``finished``
            response = encode_infer_response(result, decoded.id, decoded.raw)
            status = 200
            return response
        except InferenceError as exc:
            status = exc.http_status
            if trace is not None:
                trace.fail(exc.message, {"rpc.grpc.status_code": exc.grpc_code.value[0]})
            raise
        except asyncio.CancelledError:  # the caller cancelled or its deadline passed while we worked
            status = CLIENT_CLOSED
            if trace is not None:
                trace.fail("cancelled by the caller", {"rpc.grpc.status_code": grpc.StatusCode.CANCELLED.value[0]})
            raise
        except Exception as exc:
            if trace is not None:
                trace.fail(f"internal server error ({type(exc).__name__})",
                           {"rpc.grpc.status_code": grpc.StatusCode.INTERNAL.value[0]})
            request_id = request_id or metadata.get("x-request-id")
            raise service.unexpected("grpc", model, request_id, trace_id) from None  # ``_rpc`` answers it
        finally:
            service.finished("grpc", model, target, result, status, started, trace, request_id, trace_id)


_METHODS: Final[dict[str, tuple[type[Message], type[Message]]]] = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
    "RepositoryIndex": (pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
}
"""Every RPC of ``GRPCInferenceService`` the servicer implements, with its request and response messages."""

SERVICE_NAME: Final = "inference.GRPCInferenceService"


def method_handlers(servicer: OipGrpcServicer,
                    budget: BodyBudget | None = None) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """The servicer's RPCs, each parsing its own request (see ``_parsing``)."""
    return {
        name: grpc.unary_unary_rpc_method_handler(
            _parsing(request_type, getattr(servicer, name), budget),
            request_deserializer=None,
            response_serializer=response_type.SerializeToString,
        )
        for name, (request_type, response_type) in _METHODS.items()
    }


def _parsing(
    request_type: type[Message], method: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Message]],
    budget: BodyBudget | None,
) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[Message]]:
    """The RPC on the request's raw bytes: parsed here, so that bytes protobuf refuses (a string field that is not
    UTF-8, a truncated message) are INVALID_ARGUMENT naming the field. Left to grpcio's deserializer, they were
    UNKNOWN with a traceback in the log. The parse itself is the same ``FromString`` grpcio would call.

    The message's bytes count against the process's ``budget`` (``server.max_inflight_body_bytes``, shared with
    HTTP) until the RPC is answered; past it, RESOURCE_EXHAUSTED with a ``retry-after`` trailer before it is
    parsed. grpcio has received the message by then, so this bounds the messages held while they are served,
    not those on their way in.
    """

    async def handler(payload: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Message:
        held: dict[str, int] = {}
        try:
            if budget is not None:
                try:
                    budget.charge(held, len(payload))
                except Overloaded as exc:
                    await abort_with(context, exc)
            try:
                request = request_type.FromString(payload)
            except DecodeError:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    describe_undecodable(request_type.DESCRIPTOR, payload))
                raise AssertionError("context.abort() returned") from None
            return await method(request, context)
        finally:
            if budget is not None:
                budget.release(held)

    return handler



# --------------------------------------------------------------------------- server


def build_grpc_server(
    service: InferenceService, host: str, port: int, max_message_bytes: int, share_port: bool = False,
    budget: BodyBudget | None = None,
) -> tuple[grpc.aio.Server, int]:
    """The (not yet started) gRPC server and the port it bound; port 0 picks a free one.

    ``grpc.so_reuseport`` is off so that a port already taken fails here, loudly, instead of
    silently sharing traffic with another process — unless ``share_port``: the gateway's own
    worker processes (``server.workers``) share their ports on purpose, the kernel spreading
    connections among them.
    """
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 1 if share_port else 0),
    ]
    server = grpc.aio.server(options=options)
    handlers = method_handlers(OipGrpcServicer(service), budget)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpcio raises on a failed bind (older versions return 0)
        raise RuntimeError(f"gRPC server could not listen on {address}: {exc}") from None
    if bound == 0:
        raise RuntimeError(f"gRPC server could not listen on {address}")
    return server, bound


__all__ = [
    "OipGrpcServicer",
    "build_grpc_server",
    "first_values",
    "method_handlers",
    "request_deadline",
    "status_message",
]
