"""OIP v2 REST bodies: JSON tensors and Triton's binary tensor extension.

Request: a JSON header, optionally followed by raw tensor bytes when the
``Inference-Header-Content-Length`` header gives the JSON's length; inputs
with ``parameters.binary_data_size`` take their bytes from that tail, in
order. Response: outputs as JSON ``data`` or, when asked for (per output
``binary_data`` or request-wide ``binary_data_output``), as raw bytes after
the JSON header. orjson parses and serialises (numpy arrays directly), and
binary inputs are viewed in place with ``np.frombuffer`` — no copies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from gateway.datatypes import numpy_dtype, serialize_bytes_tensor
from gateway.errors import BadRequest, quoted
from gateway.service import InferResult, parse_routing_key, parse_timeout_us, refuse_sequence
from gateway.tensors import (
    Declared,
    WireTensor,
    array_from_buffer,
    array_from_json,
    check_datatype,
    check_input_header,
    check_output_name,
    parse_shape,
    refuse_shared_memory,
)

_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


@dataclass(slots=True)
class HttpInferRequest:
    id: str | None
    tensors: list[WireTensor]
    requested_outputs: list[str] | None
    binary_outputs: set[str]
    """Names of the outputs to return as raw bytes."""
    timeout_s: float | None = None
    """The request's own time budget (OIP parameter ``timeout``, microseconds on the wire)."""
    routing_key: str | None = None
    """OIP parameter ``routing_key``: keeps a caller on one version of a split."""


def decode_infer_request(body: bytes | bytearray, header_length: int | None,
                         declared: Declared | None = None) -> HttpInferRequest:
    """Decode one request body; BadRequest on anything malformed. Each tensor's name (and with ``declared`` its
    datatype) is checked before its data is decoded (``check_input_header``, ``check_output_name``)."""
    if header_length is None:
        header: bytes | bytearray | memoryview = body
        tail = memoryview(b"")
    else:
        if header_length > len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length is {header_length} but the body has only {len(body)} bytes"
            )
        view = memoryview(body)
        header, tail = view[:header_length], view[header_length:]
    doc = _parse_json(header, header_length)
    if not isinstance(doc, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(doc).__name__}")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f"'id' must be a string, got {type(request_id).__name__}")
    parameters = _parameters(doc.get("parameters"), "request")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise BadRequest("request parameter 'binary_data_output' must be true or false")
    timeout_s = parse_timeout_us(parameters.get("timeout"))
    routing_key = parse_routing_key(parameters.get("routing_key"))
    refuse_sequence(parameters.get("sequence_id"))
    tensors = _decode_inputs(doc.get("inputs"), tail, declared, header_length is not None)
    requested, binary = _decode_outputs(doc.get("outputs"), binary_default, declared)
    return HttpInferRequest(request_id, tensors, requested, binary, timeout_s, routing_key)


def _parse_json(raw: bytes | bytearray | memoryview, header_length: int | None) -> Any:
    """The request's JSON, as orjson reads it; ``header_length``: its length, where the request gave one.

    orjson refuses the NaN/Infinity literals Python's json writes; a body orjson refused is read again by Python's
    json only to accept those, so that the finiteness check can name the tensor that holds them instead of saying
    "bad JSON". Only then: Python's json also reads what orjson rightly refuses and mlgate cannot handle (lone
    surrogates, which fail later on encoding; integers of any size; UTF-16 and UTF-32 bodies; nesting deep enough to
    exhaust the interpreter's stack), each once a 500. A document read that way must still be one orjson could
    write back, which rules those out.
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        refusal = BadRequest(_not_json(raw, header_length, exc))
        constants: list[str] = []

        def constant(literal: str) -> float:
            constants.append(literal)
            return float(literal)

        try:
            doc = json.loads(bytes(raw).decode("utf-8"), parse_constant=constant)
            if not constants:
                raise refusal from None
            orjson.dumps(doc)
        except (ValueError, UnicodeDecodeError, RecursionError, orjson.JSONEncodeError):
            raise refusal from None
        return doc


def _not_json(raw: bytes | bytearray | memoryview, header_length: int | None, exc: ValueError) -> str:
    """Why a body is not JSON, in the terms of the mistake behind it: binary tensor bytes sent without the
    Inference-Header-Content-Length header (orjson then complains of invalid UTF-8 or trailing characters), or
    a header that cuts the JSON short or runs into the binary bytes (orjson then speaks of the whole body)."""
    if header_length is not None:
        return (f"the request's JSON header (its first {header_length} bytes, as Inference-Header-Content-Length "
                f"says) is not valid JSON: {exc}")
    if b'"binary_data_size"' in raw:
        return (f"request body is not valid JSON: {exc}; a JSON header followed by binary tensor data needs the "
                "Inference-Header-Content-Length header to give the JSON's length")
    return f"request body is not valid JSON: {exc}"


def _parameters(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequest(f"{where} 'parameters' must be a JSON object")
    return raw


def _decode_inputs(raw: Any, tail: memoryview, declared: Declared | None, header_given: bool) -> list[WireTensor]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest("'inputs' must be a non-empty list of tensors")
    tensors: list[WireTensor] = []
    seen: set[str] = set()
    offset = 0
    for item in raw:
        if not isinstance(item, dict):
            raise BadRequest("each entry of 'inputs' must be a JSON object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("every input needs a non-empty string 'name'")
        datatype = check_datatype(name, item.get("datatype"))
        check_input_header(declared, seen, name, datatype)
        shape = parse_shape(name, item.get("shape"))
        parameters = _parameters(item.get("parameters"), f"input {quoted(name)}")
        refuse_shared_memory(f"input {quoted(name)}", parameters)
        size = parameters.get("binary_data_size")
        if size is not None:
            if "data" in item:
                raise BadRequest(f"input {quoted(name)} has both 'data' and parameter 'binary_data_size'")
            if type(size) is not int or size < 0:
                raise BadRequest(f"input {quoted(name)}: binary_data_size must be a non-negative integer")
            if offset + size > len(tail):
                raise BadRequest(
                    f"input {quoted(name)}: binary_data_size {size} runs past the end of the body "
                    f"({len(tail) - offset} binary bytes left)" + ("" if header_given else
                    "; without the Inference-Header-Content-Length header the whole body is read as JSON, "
                    "so binary tensor data needs that header to give the JSON's length")
                )
            array = array_from_buffer(name, datatype, shape, tail[offset:offset + size])
            offset += size
        elif "data" in item:
            array = array_from_json(name, datatype, shape, item["data"])
        else:
            raise BadRequest(f"input {quoted(name)} has neither 'data' nor parameter 'binary_data_size'")
        tensors.append(WireTensor(name, datatype, shape, array))
    if offset != len(tail):
        raise BadRequest(f"{len(tail) - offset} bytes after the JSON header belong to no input")
    return tensors


def _decode_outputs(raw: Any, binary_default: bool, declared: Declared | None) -> tuple[list[str] | None, set[str]]:
    """The outputs asked for (None: all of them, also for an empty list, as gRPC, where an empty list and none
    cannot be told apart, reads it) and which of them go as binary tensors."""
    if raw is None or raw == []:
        return None, {"*"} if binary_default else set()
    if not isinstance(raw, list):
        raise BadRequest("'outputs' must be a list")
    names: list[str] = []
    binary: set[str] = set()
    seen: set[str] = set()
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest("each entry of 'outputs' must be an object with a string 'name'")
        name = item["name"]
        check_output_name(declared, seen, name)
        parameters = _parameters(item.get("parameters"), f"output {quoted(name)}")
        refuse_shared_memory(f"output {quoted(name)}", parameters)
        if parameters.get("classification"):
            raise BadRequest(f"output {quoted(name)}: the classification extension is not supported")
        wants_binary = parameters.get("binary_data", binary_default)
        if not isinstance(wants_binary, bool):
            raise BadRequest(f"output {quoted(name)}: parameter 'binary_data' must be true or false")
        names.append(name)
        if wants_binary:
            binary.add(name)
    return names, binary


def encode_infer_response(result: InferResult, request: HttpInferRequest) -> tuple[bytes, int | None]:
    """Response body and, when it carries binary tensors, the length of its JSON header."""
    all_binary = "*" in request.binary_outputs
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for spec in result.specs:
        array = result.outputs[spec.name]
        entry: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(array.shape)}
        if all_binary or spec.name in request.binary_outputs:
            blob = _tensor_bytes(spec.datatype, array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(spec.datatype, array)
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": result.version.model, "model_version": result.version.version}
    if request.id is not None:
        doc["id"] = request.id
    if result.variant is not None:
        doc["parameters"] = result.parameters()
    doc["outputs"] = outputs
    header = orjson.dumps(doc, option=_DUMP_OPTIONS)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _tensor_bytes(datatype: str, array: np.ndarray) -> bytes:
    if datatype == "BYTES":
        return serialize_bytes_tensor(array)
    return np.ascontiguousarray(array, dtype=numpy_dtype(datatype)).tobytes()


def _json_data(datatype: str, array: np.ndarray) -> Any:
    if datatype == "BYTES":
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in array.reshape(-1)]
    flat = np.ascontiguousarray(array, dtype=numpy_dtype(datatype)).reshape(-1)
    return flat if flat.dtype != np.float16 else flat.tolist()  # orjson has no float16


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def json_body(doc: Any) -> bytes:
    return orjson.dumps(doc, option=_DUMP_OPTIONS)
