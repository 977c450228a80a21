"""OIP JSON and binary tensor decoding/encoding for every datatype, without a server."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import orjson
import pytest

from gateway.datatypes import NUMPY_DTYPES, deserialize_bytes_tensor, serialize_bytes_tensor
from gateway.errors import BadRequest
from gateway.http_codec import HttpInferRequest, decode_infer_request, encode_infer_response
from gateway.registry import ServedVersion
from gateway.service import InferResult
from gateway.tensors import WireTensor, bind_inputs
from serving.manifest import TensorSpec

NUMERIC = [d for d in NUMPY_DTYPES if d not in ("BYTES", "BOOL")]


def _json_request(datatype: str, shape: list[int], data: Any, **extra: Any) -> bytes:
    return orjson.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}], **extra})


def _binary_request(datatype: str, array: np.ndarray, **extra: Any) -> tuple[bytes, int]:
    raw = serialize_bytes_tensor(array) if datatype == "BYTES" else array.tobytes()
    header = orjson.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": list(array.shape),
                                       "parameters": {"binary_data_size": len(raw)}}], **extra})
    return header + raw, len(header)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_every_numeric_datatype_decodes_from_flat_and_nested_json(datatype: str) -> None:
    expected = np.array([[1, 2, 3], [4, 5, 6]], dtype=NUMPY_DTYPES[datatype])
    for data in (expected.reshape(-1).tolist(), expected.tolist()):
        tensor = decode_infer_request(_json_request(datatype, [2, 3], data), None).tensors[0]
        assert tensor.array.dtype == expected.dtype
        np.testing.assert_array_equal(tensor.array, expected)


@pytest.mark.parametrize("datatype", [*NUMERIC, "BOOL"])
def test_every_fixed_size_datatype_decodes_from_binary_without_copying(datatype: str) -> None:
    expected = (np.arange(6) % 2).astype(NUMPY_DTYPES[datatype]).reshape(2, 3)
    body, header_length = _binary_request(datatype, expected)
    tensor = decode_infer_request(body, header_length).tensors[0]
    np.testing.assert_array_equal(tensor.array, expected)
    assert not tensor.array.flags.owndata  # a view over the request body


def test_bool_json_and_bytes_json() -> None:
    flags = decode_infer_request(_json_request("BOOL", [3], [True, False, True]), None).tensors[0]
    np.testing.assert_array_equal(flags.array, [True, False, True])
    words = decode_infer_request(_json_request("BYTES", [2, 1], [["héllo"], ["b"]]), None).tensors[0]
    assert words.array.tolist() == [[("héllo").encode()], [b"b"]]


def test_bytes_binary_round_trip_and_truncation() -> None:
    array = np.array([b"abc", b"", "ünï".encode()], dtype=object)
    body, header_length = _binary_request("BYTES", array)
    assert decode_infer_request(body, header_length).tensors[0].array.tolist() == array.tolist()
    raw = serialize_bytes_tensor(array)
    with pytest.raises(ValueError, match="element 2 claims 5 bytes but only 3 remain"):
        deserialize_bytes_tensor(raw[:18], 3)
    with pytest.raises(ValueError, match="element 2 has no length prefix"):
        deserialize_bytes_tensor(raw[:12], 3)


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("INT32", [1.5, 2.0], "INT32 data must be integers, got non-integer numbers"),
        ("UINT8", [1, 256], "value out of range for UINT8 [0, 255]: 256"),
        ("INT8", [-129, 0], "value out of range for INT8 [-128, 127]: -129"),
        ("BOOL", [1, 0], "BOOL data must be true/false, got integers"),
        ("FP32", [True, False], "FP32 data must be numbers, got booleans"),
        ("FP32", ["1", "2"], "FP32 data must be numbers, got strings"),
        ("BYTES", [1, 2], "BYTES data must be strings, got int"),
        ("FP16", [1.0, 1e10], "value out of range for FP16 [-65504, 65504]: 1e+10"),
        ("FP16", [70000, 1], "value out of range for FP16 [-65504, 65504]: 70000"),
        # was an infinity, then refused as "a non-finite value (NaN or infinity)": not what the client sent
        ("FP32", [1.0, -1e39], "value out of range for FP32 [-3.40282e+38, 3.40282e+38]: -1e+39"),
        # numpy reads these as [1.5, 1.0] and [3, 0]: served as data
        ("FP32", [1.5, True], "FP32 data must be numbers, got true/false among them"),
        ("INT64", [3, False], "INT64 data must be numbers, got true/false among them"),
    ],
)
def test_json_values_of_the_wrong_kind_are_refused(datatype: str, data: list[Any], message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)):
        decode_infer_request(_json_request(datatype, [2], data), None)


@pytest.mark.parametrize("shape", [[1000], [10, 100], [2, 5, 100]])
@pytest.mark.parametrize("where", [0, 537, 999])
def test_a_boolean_hidden_in_a_large_or_nested_tensor_is_found(shape: list[int], where: int) -> None:
    """Past the size where a vectorised test for 0s and 1s runs first, and at every nesting depth."""
    flat: list[Any] = [0.25] * 1000
    flat[where] = True
    data = np.asarray(flat, dtype=object).reshape(shape).tolist()
    with pytest.raises(BadRequest, match="FP32 data must be numbers, got true/false among them"):
        decode_infer_request(_json_request("FP32", shape, data), None)
    flat[where] = 1.0  # the same value as a number is data
    data = np.asarray(flat, dtype=object).reshape(shape).tolist()
    array = decode_infer_request(_json_request("FP32", shape, data), None).tensors[0].array
    assert array.shape == tuple(shape) and array.ravel()[where] == 1.0


@pytest.mark.parametrize("datatype", ["FP16", "FP32"])
def test_json_values_at_the_edge_of_a_float_range_are_kept(datatype: str) -> None:
    largest = float(np.finfo(NUMPY_DTYPES[datatype]).max)
    array = decode_infer_request(_json_request(datatype, [2], [largest, -largest]), None).tensors[0].array
    assert array.dtype == NUMPY_DTYPES[datatype]
    assert array.tolist() == [largest, -largest]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2]}]}, "neither 'data' nor"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]}, "non-negative integers"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": "2", "data": [1]}]}, "shape must be a list"),
        ({"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}, "non-empty string 'name'"),
        ({"id": 5, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}, "'id' must be a string"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
          "outputs": [{"name": "y", "parameters": {"classification": 2}}]}, "classification extension"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
          "parameters": {"binary_data_output": "yes"}}, "'binary_data_output' must be true or false"),
    ],
)
def test_structural_errors_are_precise(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode_infer_request(orjson.dumps(doc), None)


def _input(**fields: Any) -> dict[str, Any]:
    return {"name": "x", "datatype": "FP32", "shape": [1], "data": [1], **fields}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (orjson.dumps({"inputs": [_input(datatype=[])]}), "unknown datatype"),
        (orjson.dumps({"inputs": [_input(datatype={})]}), "unknown datatype"),
        # what orjson refuses and Python's json would read: each was a 500 further on
        (b'{"inputs": [{"name": "\\ud800", "datatype": "FP32", "shape": [1], "data": [1]}]}', "not valid JSON"),
        (b'{"inputs": [{"name": "\\ud800", "datatype": "FP32", "shape": [1], "data": [NaN]}]}', "not valid JSON"),
        (b'{"id": "\\udc00", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}',
         "not valid JSON"),
        (b'{"parameters": {"timeout": 1' + b"0" * 400 + b'}, "inputs": [{"name": "x", "datatype": "FP32", '
         b'"shape": [1], "data": [1]}]}', "not valid JSON"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ' + b"[" * 3000 + b"]" * 3000 + b"}]}",
         "not valid JSON"),
        ('{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [NaN]}]}'.encode("utf-16"),
         "not valid JSON"),
        (orjson.dumps({"inputs": [_input(datatype="BYTES", data=[["a"]], shape=[1])]}).replace(
            b'[["a"]]', b"[" * 900 + b'"a"' + b"]" * 900), "nested deeper than 8 levels"),
        (orjson.dumps({"inputs": [_input(shape=[0, 2**62, 2**62], data=[])]}), "is too large"),
        (orjson.dumps({"inputs": [_input(parameters={"shared_memory_region": "r"})]}), "shared-memory tensors"),
        (orjson.dumps({"inputs": [_input()], "outputs": [{"name": "y", "parameters": {"shared_memory_region": "r"}}]}),
         "shared-memory tensors"),
    ],
)
def test_bodies_that_were_500s_are_precise_400s(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode_infer_request(body, None)


@pytest.mark.parametrize("count", [20_000_000, 2**40])
def test_a_bytes_shape_larger_than_its_buffer_is_refused_before_anything_is_allocated(count: int) -> None:
    """Each BYTES element takes at least its 4-byte length: a 4-byte buffer holds at most one. The element array was
    allocated from the shape first: 160 MB for 20 million, a MemoryError (a 500) for 2**40."""
    header = orjson.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [count],
                                       "parameters": {"binary_data_size": 4}}]})
    with pytest.raises(BadRequest, match=f"{count} BYTES elements need at least {4 * count} bytes"):
        decode_infer_request(header + b"\0\0\0\0", len(header))


def test_uint64_from_2_63_up_beside_smaller_values_decodes_exactly() -> None:
    """numpy reads [2**64 - 1, 1] as float64; it was refused as 'non-integer numbers'."""
    values = [2**64 - 1, 2**63, 1, 0]
    tensor = decode_infer_request(_json_request("UINT64", [4], values), None).tensors[0]
    assert tensor.array.dtype == np.uint64 and tensor.array.tolist() == values
    with pytest.raises(BadRequest, match="UINT64 data must be integers, got non-integer numbers"):
        decode_infer_request(_json_request("UINT64", [2], [2**63, 1.5]), None)


def test_an_empty_outputs_list_asks_for_every_output_as_grpc_reads_it() -> None:
    request = decode_infer_request(orjson.dumps({"inputs": [_input()], "outputs": []}), None)
    assert request.requested_outputs is None


def test_trailing_binary_bytes_are_refused() -> None:
    body, header_length = _binary_request("FP32", np.ones(2, np.float32))
    with pytest.raises(BadRequest, match="4 bytes after the JSON header belong to no input"):
        decode_infer_request(body + b"\0\0\0\0", header_length)


@pytest.mark.parametrize("tail", [np.arange(3, dtype="<f4").tobytes(), b"abcd"])
def test_binary_data_without_the_header_length_says_the_header_is_missing(tail: bytes) -> None:
    """A JSON header and its tensor bytes sent without Inference-Header-Content-Length were refused with orjson's
    complaint about the whole body ("str is not valid UTF-8: surrogates not allowed", "trailing characters")."""
    body, _ = _binary_request("FP32", np.ones(len(tail) // 4, np.float32))
    with pytest.raises(BadRequest, match=r"not valid JSON: .*needs the Inference-Header-Content-Length header"):
        decode_infer_request(body[: len(body) - len(tail)] + tail, None)


def test_binary_data_size_with_neither_the_header_length_nor_the_bytes_names_the_header() -> None:
    """The JSON alone, sent without its tensor bytes or the header: "runs past the end of the body (0 binary bytes
    left)" did not say that the bytes, had they been sent, would have been read as JSON."""
    body, header_length = _binary_request("FP32", np.ones(2, np.float32))
    with pytest.raises(BadRequest, match=r"runs past the end .*needs that header to give the JSON's length"):
        decode_infer_request(body[:header_length], None)
    with pytest.raises(BadRequest, match=r"\(0 binary bytes left\)$"):  # with the header, the bytes are missing
        decode_infer_request(body[:header_length], header_length)


@pytest.mark.parametrize("delta", [-3, 2])
def test_a_header_length_that_misses_the_json_is_named_as_the_cause(delta: int) -> None:
    """A header length that cuts the JSON short or runs into the tensor bytes was reported as "request body is not
    valid JSON", although the body was fine and the header was wrong."""
    body, header_length = _binary_request("FP32", np.ones(2, np.float32))
    with pytest.raises(BadRequest, match=f"JSON header \\(its first {header_length + delta} bytes, as "
                                         "Inference-Header-Content-Length says\\) is not valid JSON"):
        decode_infer_request(body, header_length + delta)


SPECS = (TensorSpec(name="x", datatype="FP32", shape=(-1, 3)),)


def test_bind_checks_rows_and_finiteness() -> None:
    good = WireTensor("x", "FP32", (2, 3), np.ones((2, 3), np.float32))
    inputs, rows = bind_inputs("m", SPECS, [good], max_rows=4, allow_non_finite=False)
    assert rows == 2 and inputs["x"] is good.array
    with pytest.raises(BadRequest, match="given more than once"):
        bind_inputs("m", SPECS, [good, good], max_rows=4, allow_non_finite=False)
    with pytest.raises(BadRequest, match="no rows"):
        bind_inputs("m", SPECS, [WireTensor("x", "FP32", (0, 3), np.ones((0, 3), np.float32))],
                    max_rows=4, allow_non_finite=False)
    nan = np.ones((2, 3), np.float32)
    nan[1, 2] = np.nan
    with pytest.raises(BadRequest, match=r"index \[1, 2\]"):
        bind_inputs("m", SPECS, [WireTensor("x", "FP32", (2, 3), nan)], max_rows=4, allow_non_finite=False)
    assert bind_inputs("m", SPECS, [WireTensor("x", "FP32", (2, 3), nan)], max_rows=4, allow_non_finite=True)[1] == 2


def _result(outputs: dict[str, np.ndarray], specs: list[TensorSpec]) -> InferResult:
    return InferResult(ServedVersion("m", "3", None), outputs, specs)


def test_response_mixes_json_and_binary_outputs_as_requested() -> None:
    probabilities = np.array([[0.25, 0.75], [1 / 3, 2 / 3]], dtype=np.float32)
    labels = np.array([1, 0], dtype=np.int64)
    specs = [TensorSpec(name="p", datatype="FP32", shape=(-1, 2)), TensorSpec(name="l", datatype="INT64", shape=(-1,))]
    request = HttpInferRequest(id="r1", tensors=[], requested_outputs=["p", "l"], binary_outputs={"p"})
    body, header_length = encode_infer_response(_result({"p": probabilities, "l": labels}, specs), request)
    assert header_length is not None
    header = orjson.loads(body[:header_length])
    assert header["id"] == "r1" and header["model_version"] == "3"
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 16}
    np.testing.assert_array_equal(np.frombuffer(body[header_length:], np.float32).reshape(2, 2), probabilities)
    assert header["outputs"][1]["data"] == [1, 0]


def test_json_floats_round_trip_exactly_in_float32() -> None:
    values = np.random.default_rng(0).random((50, 2), dtype=np.float32)
    specs = [TensorSpec(name="p", datatype="FP32", shape=(-1, 2))]
    body, _ = encode_infer_response(_result({"p": values}, specs), HttpInferRequest(None, [], None, set()))
    decoded = np.asarray(orjson.loads(body)["outputs"][0]["data"], dtype=np.float32).reshape(50, 2)
    np.testing.assert_array_equal(decoded, values)


@pytest.mark.parametrize("sequence_id", [7, "seq-7"])
def test_a_request_of_a_sequence_is_refused_not_answered_as_stateless(sequence_id: Any) -> None:
    """Before, ``sequence_id`` was ignored: each request of a stateful client's sequence was answered on its own."""
    body = _json_request("FP32", [1], [1.0], parameters={"sequence_id": sequence_id, "sequence_start": True})
    with pytest.raises(BadRequest, match=re.escape(f"request parameter 'sequence_id' ({json.dumps(sequence_id)}): "
                                                   "sequences are ")):
        decode_infer_request(body, None)
    unset = _json_request("FP32", [1], [1.0], parameters={"sequence_id": type(sequence_id)()})  # 0 or "": none
    assert decode_infer_request(unset, None).tensors[0].array.tolist() == [1.0]
