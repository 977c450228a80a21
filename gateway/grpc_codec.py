"""The Open Inference Protocol's gRPC messages (KServe v2 / Triton ``GRPCInferenceService``): pure conversions.

``decode_infer_request`` turns a ``ModelInferRequest`` into ``WireTensor``s, raising ``BadRequest`` with
messages that name the tensor and say what was expected; ``encode_infer_response`` turns an ``InferResult``
back into a ``ModelInferResponse``; the metadata and index responses are built here too. No server, no
service: ``gateway.grpc_server`` maps the RPCs onto ``InferenceService``, and this codec is tested without it.

Tensor data comes either as ``raw_input_contents`` (what tritonclient sends:
one little-endian blob per input, viewed in place with ``np.frombuffer``) or
as the typed ``contents`` fields; a request uses one or the other. The
response mirrors the request: raw in, raw out (tritonclient reads only
``raw_output_contents``), typed in, typed out — except that FP16 has no typed
field, so a response holding FP16 is always raw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from google.protobuf.descriptor import FieldDescriptor

from gateway.datatypes import numpy_dtype, serialize_bytes_tensor
from gateway.errors import BadRequest, quoted
from gateway.proto import grpc_service_pb2 as pb
from gateway.service import InferResult, refuse_sequence
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

def request_parameter(request: pb.ModelInferRequest, name: str) -> Any:
    """The value of a request parameter, whichever of ``InferParameter``'s fields carries it; None when unset."""
    parameter = request.parameters.get(name)
    if parameter is None:
        return None
    field = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, field) if field else None


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
                f"input {quoted(name)} has typed contents but the request also uses raw_input_contents; "
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
    refuse_shared_memory(f"input {quoted(name)}", tensor.parameters)
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
            f"input {quoted(name)}: {datatype} tensors must be sent in raw_input_contents "
            "(the protocol has no typed contents field for them)"
        )
    present = [descriptor.name for descriptor, _ in contents.ListFields()]
    strays = [f for f in present if f != field]
    if strays:
        raise BadRequest(
            f"input {quoted(name)}: {datatype} data belongs in contents.{field}, "
            f"but contents has {', '.join(strays)}"
        )
    values = getattr(contents, field)
    count = math.prod(shape)
    if not present and count:
        raise BadRequest(
            f"input {quoted(name)} has no data: put its {count} elements in contents.{field} or send the request's "
            "inputs as raw_input_contents"
        )
    if len(values) != count:
        raise BadRequest(
            f"input {quoted(name)}: shape {list(shape)} needs {count} elements "
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
                f"input {quoted(name)}: value out of range for {datatype} [{info.min}, {info.max}]: {bad}"
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
        where = f"output {quoted(name)}"
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
