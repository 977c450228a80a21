"""The Open Inference Protocol over gRPC (KServe v2 / Triton ``GRPCInferenceService``).

Two layers, kept apart so the codec can be tested without a server:

* the codec (``decode_infer_request``, ``encode_infer_response``) turns
  protobuf messages into ``WireTensor``s and an ``InferResult`` back into a
  ``ModelInferResponse``; it is pure and raises ``BadRequest`` with messages
  that name the tensor and say what was expected;
* the servicer maps each RPC onto ``InferenceService`` — the same validation,
  version resolution and batching as the HTTP front end — and every
  ``InferenceError`` onto its gRPC status code.

Tensor data comes either as ``raw_input_contents`` (what tritonclient sends:
one little-endian blob per input, viewed in place with ``np.frombuffer``) or
as the typed ``contents`` fields; a request uses one or the other. The
response mirrors the request: raw in, raw out (tritonclient reads only
``raw_output_contents``), typed in, typed out — except that FP16 has no typed
field, so a response holding FP16 is always raw.

The server is a ``grpc.aio`` server; it runs on the same asyncio loop as the
HTTP server, so both front ends feed the same batchers without threads.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import wraps
from typing import Any, Final, NoReturn, TypeVar

import grpc
import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from gateway.datatypes import numpy_dtype, serialize_bytes_tensor
from gateway.errors import BadRequest, DeadlineExceeded, InferenceError
from gateway.proto import grpc_service_pb2 as pb
from gateway.proto import grpc_service_pb2_grpc as pb_grpc
from gateway.service import (
    CLIENT_CLOSED,
    InferenceService,
    InferResult,
    parse_routing_key,
    parse_timeout_us,
    refuse_sequence,
    tighter,
)
from gateway.tensors import (
    Declared,
    WireTensor,
    array_from_buffer,
    check_datatype,
    check_input_header,
    check_output_name,
    parse_shape,
    refuse_shared_memory,
)
from gateway.traffic import Target
from telemetry.tracing import NOT_TRACED, TRACE_ID_HEADER

log = logging.getLogger(__name__)

_T = TypeVar("_T")

TYPED_FIELD: Final[dict[str, str]] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""The ``InferTensorContents`` field that carries each OIP datatype; FP16 has none (raw only)."""

_WIRE_DTYPE: Final[dict[str, np.dtype]] = {
    "int_contents": np.dtype(np.int32),
    "uint_contents": np.dtype(np.uint32),
}
"""Typed fields wider than the datatypes they carry: decode at field width, then range-check and narrow."""

# --------------------------------------------------------------------------- codec (pure)


@dataclass(slots=True)
class GrpcInferRequest:
    """A decoded ``ModelInferRequest``: what ``InferenceService.infer`` needs, plus how to answer."""

    model: str
    version: str | None
    id: str
    tensors: list[WireTensor]
    requested_outputs: list[str] | None
    raw: bool
    """True when the inputs came as ``raw_input_contents``; the outputs then go back raw too."""


def decode_infer_request(request: pb.ModelInferRequest, declared: Declared | None = None) -> GrpcInferRequest:
    """Decode the inputs and requested outputs of one request; BadRequest on anything malformed. Each tensor's
    name (and with ``declared`` its datatype) is checked from its header, before its data is decoded
    (``check_input_header``, ``check_output_name``)."""
    refuse_sequence(request_parameter(request, "sequence_id"))
    raw = len(request.raw_input_contents) > 0
    tensors = decode_raw_inputs(request, declared) if raw else decode_typed_inputs(request, declared)
    return GrpcInferRequest(
        model=request.model_name,
        version=request.model_version or None,
        id=request.id,
        tensors=tensors,
        requested_outputs=requested_outputs(request, declared),
        raw=raw,
    )


def decode_raw_inputs(request: pb.ModelInferRequest, declared: Declared | None = None) -> list[WireTensor]:
    """Inputs whose data is in ``raw_input_contents``, one blob per input in order, viewed without a copy."""
    blobs = request.raw_input_contents
    if len(blobs) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(blobs)} entries but the request has {len(request.inputs)} inputs; "
            "raw contents must hold exactly one entry per input, in order"
        )
    tensors: list[WireTensor] = []
    seen: set[str] = set()
    for tensor, blob in zip(request.inputs, blobs, strict=True):
        name, datatype, shape = _header(tensor, declared, seen)
        if tensor.HasField("contents"):
            raise BadRequest(
                f"input '{name}' has typed contents but the request also uses raw_input_contents; "
                "send every input one way or the other"
            )
        array = array_from_buffer(name, datatype, shape, memoryview(blob))
        tensors.append(WireTensor(name, datatype, shape, array))
    return tensors


def decode_typed_inputs(request: pb.ModelInferRequest, declared: Declared | None = None) -> list[WireTensor]:
    """Inputs whose data is in the typed ``contents`` field matching each tensor's datatype."""
    tensors: list[WireTensor] = []
    seen: set[str] = set()
    for tensor in request.inputs:
        name, datatype, shape = _header(tensor, declared, seen)
        array = array_from_contents(name, datatype, shape, tensor.contents)
        tensors.append(WireTensor(name, datatype, shape, array))
    return tensors


def _header(
    tensor: pb.ModelInferRequest.InferInputTensor, declared: Declared | None, seen: set[str]
) -> tuple[str, str, tuple[int, ...]]:
    """One input's name, datatype and shape, checked; ``seen``: the names of the inputs before it."""
    name = tensor.name
    if not name:
        raise BadRequest("every input needs a non-empty 'name'")
    refuse_shared_memory(f"input '{name}'", tensor.parameters)
    datatype = check_datatype(name, tensor.datatype)
    check_input_header(declared, seen, name, datatype)
    shape = parse_shape(name, list(tensor.shape))
    return name, datatype, shape


def array_from_contents(
    name: str, datatype: str, shape: tuple[int, ...], contents: pb.InferTensorContents
) -> np.ndarray:
    """Decode one tensor's typed contents into an array of ``shape``, checking field, count and range."""
    field = TYPED_FIELD.get(datatype)
    if field is None:
        raise BadRequest(
            f"input '{name}': {datatype} tensors must be sent in raw_input_contents "
            "(the protocol has no typed contents field for them)"
        )
    present = [descriptor.name for descriptor, _ in contents.ListFields()]
    strays = [f for f in present if f != field]
    if strays:
        raise BadRequest(
            f"input '{name}': {datatype} data belongs in contents.{field}, "
            f"but contents has {', '.join(strays)}"
        )
    values = getattr(contents, field)
    count = math.prod(shape)
    if not present and count:
        raise BadRequest(
            f"input '{name}' has no data: put its {count} elements in contents.{field} or send the request's "
            "inputs as raw_input_contents"
        )
    if len(values) != count:
        raise BadRequest(
            f"input '{name}': shape {list(shape)} needs {count} elements "
            f"but contents.{field} has {len(values)}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    target = numpy_dtype(datatype)
    wire = _WIRE_DTYPE.get(field, target)
    array = np.fromiter(values, dtype=wire, count=count)
    if wire != target:
        array = _narrow(name, datatype, array, target)
    return array.reshape(shape)


def _narrow(name: str, datatype: str, array: np.ndarray, target: np.dtype) -> np.ndarray:
    """INT8/INT16 and UINT8/UINT16 arrive in 32-bit fields: refuse values the datatype cannot hold."""
    if array.size:
        info = np.iinfo(target)
        low, high = int(array.min()), int(array.max())
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise BadRequest(
                f"input '{name}': value out of range for {datatype} [{info.min}, {info.max}]: {bad}"
            )
    return array.astype(target)


def requested_outputs(request: pb.ModelInferRequest, declared: Declared | None = None) -> list[str] | None:
    """The names of the outputs the client asked for, in order; None (all outputs) when it named none. Each is
    checked as it is read (``check_output_name``): a message naming a million outputs costs no more than one
    naming three."""
    if not request.outputs:
        return None
    names: list[str] = []
    seen: set[str] = set()
    for output in request.outputs:
        name = output.name
        where = f"output '{name}'"
        check_output_name(declared, seen, name)
        refuse_shared_memory(where, output.parameters)
        if "classification" in output.parameters:
            raise BadRequest(f"{where}: the classification extension is not supported")
        names.append(name)
    return names


def encode_infer_response(result: InferResult, request_id: str, raw: bool) -> pb.ModelInferResponse:
    """The response for ``result``: raw contents when asked (or when an output has no typed field)."""
    response = pb.ModelInferResponse(
        model_name=result.version.model, model_version=result.version.version, id=request_id
    )
    if result.variant is not None:
        for name, value in result.parameters().items():
            response.parameters[name].string_param = value
    use_raw = raw or any(spec.datatype not in TYPED_FIELD for spec in result.specs)
    for spec in result.specs:
        array = result.outputs[spec.name]
        output = response.outputs.add(name=spec.name, datatype=spec.datatype, shape=array.shape)
        if use_raw:
            response.raw_output_contents.append(tensor_bytes(spec.datatype, array))
        else:
            fill_contents(output.contents, spec.datatype, array)
    return response


def tensor_bytes(datatype: str, array: np.ndarray) -> bytes:
    """Row-major little-endian bytes of a tensor; BYTES in Triton's length-prefixed layout."""
    if datatype == "BYTES":
        return serialize_bytes_tensor(array)
    return np.ascontiguousarray(array, dtype=numpy_dtype(datatype)).tobytes()


def fill_contents(contents: pb.InferTensorContents, datatype: str, array: np.ndarray) -> None:
    """Put a tensor into the typed contents field for its datatype (row-major, flattened)."""
    field = getattr(contents, TYPED_FIELD[datatype])
    if datatype == "BYTES":
        field.extend(x.encode("utf-8") if isinstance(x, str) else bytes(x) for x in array.reshape(-1))
        return
    flat = np.ascontiguousarray(array, dtype=numpy_dtype(datatype)).reshape(-1)
    field.extend(flat.tolist())


def describe_undecodable(descriptor: Any, payload: bytes) -> str:
    """Why ``payload`` failed to parse as a ``descriptor`` message, for the caller: the first string field that is
    not UTF-8, by its path (``inputs[0].name``), else that the bytes are not protobuf at all.

    protobuf's own error names neither the field nor the cause. This walks the wire format in Python, but only
    once parsing has already failed, so a valid request pays nothing for it; and at most ``WALK_FIELDS`` fields, so
    that a large message with its fault near the end holds the event loop for a fraction of a second, not seconds.
    """
    what = f"the request is not a valid {descriptor.full_name} message"
    try:
        field = _first_non_utf8(descriptor, memoryview(payload), "", [WALK_FIELDS])
    except _Malformed as exc:
        return f"{what}: malformed protobuf ({exc})"
    except _WalkTooLong:
        return (f"{what}: malformed protobuf, or a string field that is not UTF-8 "
                f"(not located within its first {WALK_FIELDS} fields)")
    if field is None:
        return f"{what}: malformed protobuf"
    return f"{what}: field '{field}' is not valid UTF-8 (protobuf string fields must be)"


WALK_FIELDS: Final = 100_000
"""Most fields ``describe_undecodable`` reads (0.1 to 0.2 s here) before it gives up locating the fault."""


class _Malformed(Exception):
    """The bytes break the protobuf wire format itself (a truncated field, an unknown wire type)."""


class _WalkTooLong(Exception):
    """``WALK_FIELDS`` fields were read without finding the fault."""


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 70:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise _Malformed(f"a varint runs past byte {pos}")


def _first_non_utf8(descriptor: Any, data: memoryview, prefix: str, budget: list[int]) -> str | None:
    """The path of the first string field in ``data`` (a ``descriptor`` message) that is not UTF-8; None if none.
    ``budget``: how many more fields may be read, shared with the nested calls."""
    seen: dict[int, int] = {}
    pos = 0
    while pos < len(data):
        budget[0] -= 1
        if budget[0] < 0:
            raise _WalkTooLong
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise _Malformed(f"a field of {size} bytes at byte {pos} runs past the end ({len(data)} bytes)")
            chunk, pos = data[pos:pos + size], pos + size
            field = descriptor.fields_by_number.get(number)
            if field is None:
                continue
            path: str = prefix + field.name
            if field.is_repeated:
                index = seen.get(number, 0)
                seen[number] = index + 1
                path += f"[{index}]"
            if field.type == FieldDescriptor.TYPE_STRING:
                try:
                    str(chunk, "utf-8")
                except UnicodeDecodeError:
                    return path
            elif field.message_type is not None:
                found: str | None = _first_non_utf8(field.message_type, chunk, path + ".", budget)
                if found is not None:
                    return found
        else:
            raise _Malformed(f"wire type {wire} at byte {pos}")
        if pos > len(data):
            raise _Malformed(f"a fixed-width field runs past the end ({len(data)} bytes)")
    return None


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


def request_parameter(request: pb.ModelInferRequest, name: str) -> Any:
    """The value of a request parameter, whichever of ``InferParameter``'s fields carries it; None when unset."""
    parameter = request.parameters.get(name)
    if parameter is None:
        return None
    field = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, field) if field else None


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

    Messages quote what the client sent (a model name, a tensor name, a routing key); a long one made the trailer
    too large, and the client saw RESOURCE_EXHAUSTED "received metadata size exceeds hard limit" instead of the
    error. The head names the field and quotes the value, the tail says what was expected, so both are kept.
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


def method_handlers(servicer: OipGrpcServicer) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """The servicer's RPCs, each parsing its own request (see ``_parsing``)."""
    return {
        name: grpc.unary_unary_rpc_method_handler(
            _parsing(request_type, getattr(servicer, name)),
            request_deserializer=None,
            response_serializer=response_type.SerializeToString,
        )
        for name, (request_type, response_type) in _METHODS.items()
    }


def _parsing(
    request_type: type[Message], method: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Message]]
) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[Message]]:
    """The RPC on the request's raw bytes: parsed here, so that bytes protobuf refuses (a string field that is not
    UTF-8, a truncated message) are INVALID_ARGUMENT naming the field. Left to grpcio's deserializer, they were
    UNKNOWN with a traceback in the log. The parse itself is the same ``FromString`` grpcio would call.
    """

    async def handler(payload: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Message:
        try:
            request = request_type.FromString(payload)
        except DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                describe_undecodable(request_type.DESCRIPTOR, payload))
            raise AssertionError("context.abort() returned") from None
        return await method(request, context)

    return handler


def server_metadata_response(doc: dict[str, Any]) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name=doc["name"], version=doc["version"], extensions=doc["extensions"])


def model_metadata_response(doc: dict[str, Any]) -> pb.ModelMetadataResponse:
    """The service's metadata dict as protobuf; its ``parameters`` become the OIP ``properties`` map."""

    def tensors(specs: Sequence[dict[str, Any]]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [
            pb.ModelMetadataResponse.TensorMetadata(name=s["name"], datatype=s["datatype"], shape=s["shape"])
            for s in specs
        ]

    properties = {str(key): str(value) for key, value in doc.get("parameters", {}).items()}
    return pb.ModelMetadataResponse(
        name=doc["name"], versions=doc["versions"], platform=doc["platform"],
        inputs=tensors(doc["inputs"]), outputs=tensors(doc["outputs"]), properties=properties,
    )


def repository_index_response(index: Sequence[dict[str, str]]) -> pb.RepositoryIndexResponse:
    return pb.RepositoryIndexResponse(models=[
        pb.RepositoryIndexResponse.ModelIndex(
            name=item["name"], version=item["version"], state=item["state"], reason=item.get("reason", "")
        )
        for item in index
    ])


# --------------------------------------------------------------------------- server


def build_grpc_server(
    service: InferenceService, host: str, port: int, max_message_bytes: int, share_port: bool = False
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
    handlers = method_handlers(OipGrpcServicer(service))
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
    "TYPED_FIELD",
    "GrpcInferRequest",
    "OipGrpcServicer",
    "array_from_contents",
    "build_grpc_server",
    "decode_infer_request",
    "describe_undecodable",
    "encode_infer_response",
    "first_values",
    "method_handlers",
    "request_deadline",
    "status_message",
]
