"""Unit tests for the gRPC codec: protobuf messages <-> WireTensors / InferResult, no server, no Ray.

The messages built here are also re-parsed with tritonclient's own generated
classes where it matters, because tritonclient is what real clients use and it
serialises with Triton's definitions, not ours.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from gateway.datatypes import NUMPY_DTYPES, serialize_bytes_tensor
from gateway.errors import BadRequest
from gateway.grpc_codec import (
    TYPED_FIELD,
    array_from_contents,
    decode_infer_request,
    describe_undecodable,
    encode_infer_response,
    model_metadata_response,
    repository_index_response,
    requested_outputs,
)
from gateway.grpc_server import STATUS_MESSAGE_BYTES, status_message
from gateway.proto import grpc_service_pb2 as pb
from gateway.registry import ServedVersion, VersionState
from gateway.service import InferResult
from gateway.tensors import Declared
from serving.manifest import TensorSpec

NUMERIC = [dt for dt in NUMPY_DTYPES if dt != "BYTES"]
TYPED_NUMERIC = [dt for dt in NUMERIC if dt != "FP16"]


def _sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Values that exercise each type's range edges where that is cheap."""
    count = int(np.prod(shape))
    dtype = NUMPY_DTYPES[datatype]
    if datatype == "BOOL":
        return (np.arange(count) % 2 == 0).reshape(shape)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.resize(np.array([info.min, info.max, 0, 1], dtype=dtype), count)
        return values.reshape(shape)
    return (np.arange(count, dtype=dtype) / 3 - 1).reshape(shape)


def _raw_request(*tensors: tuple[str, str, tuple[int, ...], bytes]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    for name, datatype, shape, blob in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(blob)
    return request


def _typed_request(name: str, datatype: str, shape: tuple[int, ...], **contents: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    tensor.contents.CopyFrom(pb.InferTensorContents(**contents))
    return request


def _message(exc: pytest.ExceptionInfo[BadRequest]) -> str:
    return exc.value.message


# --------------------------------------------------------------------------- raw inputs


@pytest.mark.parametrize("datatype", NUMERIC)
def test_raw_input_round_trips_every_numeric_datatype(datatype: str) -> None:
    expected = _sample(datatype, (3, 4))
    request = _raw_request(("x", datatype, (3, 4), expected.tobytes()))
    decoded = decode_infer_request(request)
    assert decoded.raw is True
    [tensor] = decoded.tensors
    assert (tensor.name, tensor.datatype, tensor.shape) == ("x", datatype, (3, 4))
    assert tensor.array.dtype == NUMPY_DTYPES[datatype]
    np.testing.assert_array_equal(tensor.array, expected)


def test_raw_input_is_a_view_not_a_copy() -> None:
    request = _raw_request(("x", "FP32", (2, 2), np.ones(4, np.float32).tobytes()))
    [tensor] = decode_infer_request(request).tensors
    assert tensor.array.base is not None
    assert not tensor.array.flags.owndata


def test_raw_bytes_input_uses_length_prefixed_layout() -> None:
    values = np.array([b"a", b"", "é".encode(), b"\x00\xff"], dtype=object)
    request = _raw_request(("s", "BYTES", (2, 2), serialize_bytes_tensor(values)))
    [tensor] = decode_infer_request(request).tensors
    assert tensor.array.shape == (2, 2)
    assert tensor.array.reshape(-1).tolist() == values.tolist()


def test_raw_bytes_input_with_truncated_element_is_refused() -> None:
    blob = (5).to_bytes(4, "little") + b"abc"
    with pytest.raises(BadRequest) as exc:
        decode_infer_request(_raw_request(("s", "BYTES", (1,), blob)))
    assert "input 's'" in _message(exc) and "claims 5 bytes" in _message(exc)


def test_raw_bytes_input_with_leftover_bytes_is_refused() -> None:
    blob = serialize_bytes_tensor(np.array([b"ab"], dtype=object)) + b"zz"
    with pytest.raises(BadRequest, match="2 bytes left over"):
        decode_infer_request(_raw_request(("s", "BYTES", (1,), blob)))


def test_raw_input_byte_count_must_match_shape() -> None:
    request = _raw_request(("x", "FP32", (2, 30), np.zeros(59, np.float32).tobytes()))
    with pytest.raises(BadRequest) as exc:
        decode_infer_request(request)
    assert _message(exc) == "input 'x': FP32 shape [2, 30] needs 240 bytes but 236 were sent"


def test_raw_contents_count_must_equal_inputs_count() -> None:
    request = _raw_request(("a", "FP32", (1,), np.zeros(1, np.float32).tobytes()))
    request.inputs.add(name="b", datatype="FP32", shape=[1])
    with pytest.raises(BadRequest) as exc:
        decode_infer_request(request)
    assert "raw_input_contents has 1 entries but the request has 2 inputs" in _message(exc)


def test_more_raw_contents_than_inputs_is_refused() -> None:
    request = _raw_request(("a", "FP32", (1,), np.zeros(1, np.float32).tobytes()))
    request.raw_input_contents.append(b"\x00" * 4)
    with pytest.raises(BadRequest, match="raw_input_contents has 2 entries but the request has 1 inputs"):
        decode_infer_request(request)


def test_mixing_raw_and_typed_contents_is_refused() -> None:
    request = _raw_request(("a", "FP32", (1,), np.zeros(1, np.float32).tobytes()))
    second = request.inputs.add(name="b", datatype="FP32", shape=[1])
    second.contents.fp32_contents.append(1.0)
    request.raw_input_contents.append(b"\x00" * 4)
    with pytest.raises(BadRequest) as exc:
        decode_infer_request(request)
    assert "input 'b' has typed contents but the request also uses raw_input_contents" in _message(exc)


def test_raw_bool_must_be_zero_or_one() -> None:
    with pytest.raises(BadRequest, match="BOOL bytes must be 0 or 1"):
        decode_infer_request(_raw_request(("b", "BOOL", (2,), b"\x01\x02")))


# --------------------------------------------------------------------------- typed inputs


@pytest.mark.parametrize("datatype", TYPED_NUMERIC)
def test_typed_input_round_trips_every_datatype(datatype: str) -> None:
    expected = _sample(datatype, (2, 3))
    field = TYPED_FIELD[datatype]
    request = _typed_request("x", datatype, (2, 3), **{field: expected.reshape(-1).tolist()})
    decoded = decode_infer_request(request)
    assert decoded.raw is False
    [tensor] = decoded.tensors
    assert tensor.shape == (2, 3)
    assert tensor.array.dtype == NUMPY_DTYPES[datatype]
    np.testing.assert_array_equal(tensor.array, expected)


@pytest.mark.parametrize(
    ("datatype", "field"),
    [
        ("BOOL", "bool_contents"),
        ("INT8", "int_contents"), ("INT16", "int_contents"), ("INT32", "int_contents"),
        ("INT64", "int64_contents"),
        ("UINT8", "uint_contents"), ("UINT16", "uint_contents"), ("UINT32", "uint_contents"),
        ("UINT64", "uint64_contents"),
        ("FP32", "fp32_contents"), ("FP64", "fp64_contents"),
        ("BYTES", "bytes_contents"),
    ],
)
def test_each_datatype_maps_to_the_spec_field(datatype: str, field: str) -> None:
    assert TYPED_FIELD[datatype] == field


def test_typed_bytes_input() -> None:
    request = _typed_request("s", "BYTES", (1, 2), bytes_contents=[b"hello", b"\x00"])
    [tensor] = decode_infer_request(request).tensors
    assert tensor.array.dtype == object
    assert tensor.array.tolist() == [[b"hello", b"\x00"]]


def test_fp16_is_only_accepted_raw() -> None:
    with pytest.raises(BadRequest) as exc:
        decode_infer_request(_typed_request("h", "FP16", (1,), fp32_contents=[1.0]))
    assert _message(exc) == (
        "input 'h': FP16 tensors must be sent in raw_input_contents "
        "(the protocol has no typed contents field for them)"
    )


def test_typed_element_count_must_match_shape() -> None:
    request = _typed_request("x", "FP32", (2, 30), fp32_contents=[0.0] * 59)
    with pytest.raises(BadRequest) as exc:
        decode_infer_request(request)
    assert _message(exc) == "input 'x': shape [2, 30] needs 60 elements but contents.fp32_contents has 59"


def test_typed_data_in_the_wrong_field_is_refused() -> None:
    request = _typed_request("x", "FP32", (2,), int64_contents=[1, 2])
    with pytest.raises(BadRequest) as exc:
        decode_infer_request(request)
    assert _message(exc) == (
        "input 'x': FP32 data belongs in contents.fp32_contents, but contents has int64_contents"
    )


def test_typed_data_in_two_fields_is_refused() -> None:
    request = _typed_request("x", "INT64", (1,), int64_contents=[1], fp32_contents=[1.0])
    with pytest.raises(BadRequest, match="but contents has fp32_contents"):
        decode_infer_request(request)


def test_input_without_any_data_is_refused() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 30])
    with pytest.raises(BadRequest) as exc:
        decode_infer_request(request)
    assert _message(exc).startswith("input 'x' has no data: put its 30 elements in contents.fp32_contents")


def test_empty_tensor_needs_no_contents() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[0, 30])
    [tensor] = decode_infer_request(request).tensors
    assert tensor.array.shape == (0, 30)


@pytest.mark.parametrize(
    ("datatype", "values", "bad"),
    [
        ("INT8", [1, 128], 128),
        ("INT8", [-129, 0], -129),
        ("INT16", [40000], 40000),
        ("UINT8", [256], 256),
        ("UINT16", [70000], 70000),
    ],
)
def test_narrow_integers_are_range_checked(datatype: str, values: list[int], bad: int) -> None:
    field = TYPED_FIELD[datatype]
    with pytest.raises(BadRequest) as exc:
        array_from_contents("i", datatype, (len(values),), pb.InferTensorContents(**{field: values}))
    assert _message(exc).startswith(f"input 'i': value out of range for {datatype} [")
    assert _message(exc).endswith(f": {bad}")


def test_unknown_datatype_is_refused() -> None:
    with pytest.raises(BadRequest, match='unknown datatype "FLOAT32"'):
        decode_infer_request(_typed_request("x", "FLOAT32", (1,), fp32_contents=[1.0]))


def test_negative_dimension_is_refused() -> None:
    with pytest.raises(BadRequest, match="shape must hold non-negative integers"):
        decode_infer_request(_typed_request("x", "FP32", (-1, 1), fp32_contents=[1.0]))


def test_unnamed_input_is_refused() -> None:
    with pytest.raises(BadRequest, match="non-empty 'name'"):
        decode_infer_request(_typed_request("", "FP32", (1,), fp32_contents=[1.0]))


def test_shared_memory_inputs_are_refused() -> None:
    request = _typed_request("x", "FP32", (1,), fp32_contents=[1.0])
    request.inputs[0].parameters["shared_memory_region"].string_param = "region"
    with pytest.raises(BadRequest, match="input 'x': shared-memory tensors are not supported"):
        decode_infer_request(request)


def test_declared_inputs_are_checked_before_data_is_decoded() -> None:
    declared = Declared("model 'm' version '1'", [TensorSpec(name="x", datatype="FP32", shape=[-1, 2])], [])
    garbage = _raw_request(("x", "BYTES", (2,), b"\xff\xff\xff\xff"))  # undecodable as BYTES
    with pytest.raises(BadRequest) as exc:
        decode_infer_request(garbage, declared)
    assert _message(exc) == "input 'x' has datatype BYTES; model 'm' version '1' expects FP32"
    with pytest.raises(BadRequest) as exc:
        decode_infer_request(_typed_request("y", "FP32", (1, 2), fp32_contents=[1.0]), declared)
    assert _message(exc) == "unknown input 'y' for model 'm' version '1'; expected inputs: x"
    good = decode_infer_request(_typed_request("x", "FP32", (1, 2), fp32_contents=[1.0, 2.0]), declared)
    np.testing.assert_array_equal(good.tensors[0].array, [[1.0, 2.0]])


def test_duplicate_input_is_refused_before_its_data_is_decoded() -> None:
    request = _raw_request(("x", "FP32", (1,), b"\0" * 4), ("x", "BYTES", (1,), b"\xff"))
    with pytest.raises(BadRequest) as exc:
        decode_infer_request(request)
    assert _message(exc) == "input 'x' is given more than once"


def test_duplicate_and_unknown_outputs_are_refused_as_read() -> None:
    declared = Declared("model 'm' version '1'", [], [TensorSpec(name="label", datatype="INT64", shape=[-1])])
    request = _typed_request("x", "FP32", (1,), fp32_contents=[1.0])
    request.outputs.add(name="label")
    assert requested_outputs(request, declared) == ["label"]
    request.outputs.add(name="label").parameters["classification"].int64_param = 2
    with pytest.raises(BadRequest) as exc:
        requested_outputs(request)
    assert _message(exc) == "output 'label' is requested more than once"
    del request.outputs[1]
    request.outputs.add(name="nope").parameters["classification"].int64_param = 2
    with pytest.raises(BadRequest) as exc:
        requested_outputs(request, declared)
    assert _message(exc) == "unknown output 'nope' for model 'm' version '1'; it has outputs: label"


# --------------------------------------------------------------------------- request metadata


def test_requested_outputs_and_id_and_version() -> None:
    request = _typed_request("x", "FP32", (1,), fp32_contents=[1.0])
    request.id, request.model_version = "req-7", "2"
    request.outputs.add(name="label")
    request.outputs.add(name="probabilities")
    decoded = decode_infer_request(request)
    assert (decoded.id, decoded.model, decoded.version) == ("req-7", "m", "2")
    assert decoded.requested_outputs == ["label", "probabilities"]


def test_no_requested_outputs_means_all() -> None:
    request = _typed_request("x", "FP32", (1,), fp32_contents=[1.0])
    decoded = decode_infer_request(request)
    assert decoded.requested_outputs is None
    assert decoded.version is None


def test_classification_extension_is_refused() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.outputs.add(name="label").parameters["classification"].int64_param = 2
    with pytest.raises(BadRequest, match="output 'label': the classification extension is not supported"):
        requested_outputs(request)


# --------------------------------------------------------------------------- responses


def _result(specs: list[TensorSpec], outputs: dict[str, np.ndarray]) -> InferResult:
    entry = ServedVersion("breast-cancer", "2", None, state=VersionState.READY)
    return InferResult(entry, outputs, specs)


PROBS = TensorSpec(name="probabilities", datatype="FP32", shape=(-1, 2))
LABEL = TensorSpec(name="label", datatype="INT64", shape=(-1,))


def test_raw_response_matches_tritonclient_layout() -> None:
    from tritonclient.grpc import service_pb2 as triton_pb

    probabilities = np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32)
    labels = np.array([1, 0], dtype=np.int64)
    result = _result([PROBS, LABEL], {"probabilities": probabilities, "label": labels})
    response = encode_infer_response(result, "id-1", raw=True)
    parsed = triton_pb.ModelInferResponse.FromString(response.SerializeToString())
    assert (parsed.model_name, parsed.model_version, parsed.id) == ("breast-cancer", "2", "id-1")
    assert [(o.name, o.datatype, list(o.shape)) for o in parsed.outputs] == [
        ("probabilities", "FP32", [2, 2]), ("label", "INT64", [2]),
    ]
    assert not parsed.outputs[0].HasField("contents")
    np.testing.assert_array_equal(np.frombuffer(parsed.raw_output_contents[0], np.float32).reshape(2, 2),
                                  probabilities)
    np.testing.assert_array_equal(np.frombuffer(parsed.raw_output_contents[1], np.int64), labels)


def test_typed_response_uses_typed_fields() -> None:
    probabilities = np.array([[0.25, 0.75]], dtype=np.float32)
    result = _result([LABEL, PROBS], {"probabilities": probabilities, "label": np.array([1], np.int64)})
    response = encode_infer_response(result, "", raw=False)
    assert len(response.raw_output_contents) == 0
    label, probs = response.outputs
    assert list(label.contents.int64_contents) == [1]
    assert list(probs.contents.fp32_contents) == [0.25, 0.75]
    assert list(probs.shape) == [1, 2]


def test_response_casts_to_the_declared_datatype() -> None:
    result = _result([LABEL], {"label": np.array([1, 0], dtype=np.int32)})
    response = encode_infer_response(result, "", raw=True)
    assert np.frombuffer(response.raw_output_contents[0], np.int64).tolist() == [1, 0]


def test_fp16_output_forces_raw_for_every_output() -> None:
    half = TensorSpec(name="h", datatype="FP16", shape=(-1,))
    result = _result([half, LABEL], {"h": np.array([1.5], np.float16), "label": np.array([3], np.int64)})
    response = encode_infer_response(result, "", raw=False)
    assert len(response.raw_output_contents) == 2
    assert np.frombuffer(response.raw_output_contents[0], np.float16).tolist() == [1.5]
    assert not any(o.HasField("contents") for o in response.outputs)


def test_bytes_output_raw_and_typed() -> None:
    spec = TensorSpec(name="s", datatype="BYTES", shape=(-1,))
    values = np.array([b"x", "yz"], dtype=object)
    raw = encode_infer_response(_result([spec], {"s": values}), "", raw=True)
    assert raw.raw_output_contents[0] == b"\x01\x00\x00\x00x\x02\x00\x00\x00yz"
    typed = encode_infer_response(_result([spec], {"s": values}), "", raw=False)
    assert list(typed.outputs[0].contents.bytes_contents) == [b"x", b"yz"]


def test_model_metadata_and_index_are_wire_compatible_with_triton() -> None:
    from tritonclient.grpc import service_pb2 as triton_pb

    metadata = model_metadata_response({
        "name": "breast-cancer", "versions": ["1", "2"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 30]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        "parameters": {"device": "cpu", "max_batch_rows": 1024},
    })
    assert dict(metadata.properties) == {"device": "cpu", "max_batch_rows": "1024"}
    parsed = triton_pb.ModelMetadataResponse.FromString(metadata.SerializeToString())
    assert list(parsed.versions) == ["1", "2"]
    assert (parsed.inputs[0].name, list(parsed.inputs[0].shape)) == ("features", [-1, 30])

    index = repository_index_response([
        {"name": "m", "version": "1", "state": "READY"},
        {"name": "m", "version": "9", "state": "UNAVAILABLE", "reason": "model.onnx: bad sha"},
    ])
    parsed_index = triton_pb.RepositoryIndexResponse.FromString(index.SerializeToString())
    assert [(m.version, m.state, m.reason) for m in parsed_index.models] == [
        ("1", "READY", ""), ("9", "UNAVAILABLE", "model.onnx: bad sha"),
    ]


def test_triton_request_decodes_with_our_messages() -> None:
    from tritonclient.grpc import service_pb2 as triton_pb

    rows = np.arange(60, dtype=np.float32).reshape(2, 30)
    triton_request = triton_pb.ModelInferRequest(model_name="breast-cancer", model_version="1", id="t")
    triton_request.inputs.add(name="features", datatype="FP32", shape=[2, 30])
    triton_request.raw_input_contents.append(rows.tobytes())
    triton_request.outputs.add(name="label")
    decoded = decode_infer_request(pb.ModelInferRequest.FromString(triton_request.SerializeToString()))
    assert decoded.raw and decoded.id == "t" and decoded.requested_outputs == ["label"]
    np.testing.assert_array_equal(decoded.tensors[0].array, rows)


def test_rpc_paths_match_triton() -> None:
    from tritonclient.grpc import service_pb2 as triton_pb

    ours = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert method.full_name == other.full_name
        assert method.input_type.full_name == other.input_type.full_name
        assert method.output_type.full_name == other.output_type.full_name
    assert "RepositoryIndex" in ours.methods_by_name


def test_shared_message_fields_match_triton() -> None:
    """Every field we declare has the same number, type and cardinality in Triton's proto."""
    from tritonclient.grpc import service_pb2 as triton_pb

    def check(ours: Any, theirs: Any) -> None:
        for field in ours.fields:
            other = theirs.fields_by_number.get(field.number)
            if other is None:  # OIP-only fields (ModelMetadataResponse.properties) are ignored by Triton
                assert (ours.full_name, field.name) == ("inference.ModelMetadataResponse", "properties")
                continue
            assert (field.name, field.type, field.is_repeated) == (other.name, other.type, other.is_repeated)
        for nested in ours.nested_types:
            if nested.name in theirs.nested_types_by_name:
                check(nested, theirs.nested_types_by_name[nested.name])

    for name, message in pb.DESCRIPTOR.message_types_by_name.items():
        check(message, triton_pb.DESCRIPTOR.message_types_by_name[name])


# --------------------------------------------------------------------------- messages protobuf cannot parse


def _undecodable(payload: bytes) -> str:
    """What the caller is told about ``payload``, which protobuf itself must refuse."""
    with pytest.raises(DecodeError):
        pb.ModelInferRequest.FromString(payload)
    return describe_undecodable(pb.ModelInferRequest.DESCRIPTOR, payload)


def test_non_utf8_string_field_is_named_by_its_path() -> None:
    request = pb.ModelInferRequest(model_name="m", id="r")
    request.inputs.add(name="a", datatype="FP32", shape=[1])
    request.inputs.add(name="b", datatype="FP32", shape=[1])
    request.raw_input_contents.extend([b"\xff" * 4, b"\xff" * 4])  # bytes fields may hold anything
    payload = request.SerializeToString().replace(b"\x0a\x01b", b"\x0a\x01\xff")
    assert _undecodable(payload).endswith("field 'inputs[1].name' is not valid UTF-8 (protobuf string fields must be)")


def test_non_utf8_map_key_is_named() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.parameters["k\u00e9"].int64_param = 1
    payload = request.SerializeToString().replace("\u00e9".encode(), b"\xe9!")
    assert "field 'parameters[0].key' is not valid UTF-8" in _undecodable(payload)


def test_fault_past_the_walk_budget_is_not_searched_for() -> None:
    """A fault after a million fields took 7.6 s of the event loop to locate; the walk now stops at its budget."""
    def inputs_then_bad_id(count: int) -> bytes:
        request = pb.ModelInferRequest(model_name="m")
        for _ in range(count):  # four fields each: the input, its name, datatype and shape
            request.inputs.add(name="x", datatype="FP32", shape=[0])
        return request.SerializeToString() + b"\x1a\x01\xff"  # then an id that is not UTF-8

    assert _undecodable(inputs_then_bad_id(30_000)).endswith(
        "malformed protobuf, or a string field that is not UTF-8 (not located within its first 100000 fields)")
    assert "field 'id' is not valid UTF-8" in _undecodable(inputs_then_bad_id(1_000))


def test_truncated_message_is_malformed() -> None:
    payload = pb.ModelInferRequest(model_name="breast-cancer").SerializeToString()[:-3]
    assert _undecodable(payload) == ("the request is not a valid inference.ModelInferRequest message: malformed "
                                     "protobuf (a field of 13 bytes at byte 2 runs past the end (12 bytes))")


# --------------------------------------------------------------------------- status messages


def _trailer_size(message: str) -> int:
    """Bytes of ``message`` in the ``grpc-message`` trailer: percent-encoded, as the gRPC spec says."""
    return len(quote(message.encode(), safe=bytes(b for b in range(0x20, 0x7F) if b != 0x25)))


def test_short_status_message_is_unchanged() -> None:
    message = "input 'x': unknown datatype 'F'; expected one of " + ", ".join(NUMPY_DTYPES)
    assert status_message(message) is message


@pytest.mark.parametrize("value", ["n" * 50_000, "\u00e9" * 3_000, "%" * 5_000, "\U0001f600" * 1_000])
def test_long_status_message_keeps_head_and_tail_within_the_trailer_budget(value: str) -> None:
    message = f"unknown model '{value}'; served models: a, b"
    fitted = status_message(message)
    assert _trailer_size(fitted) <= STATUS_MESSAGE_BYTES < _trailer_size(message)
    assert fitted.startswith(f"unknown model '{value[:10]}") and fitted.endswith("'; served models: a, b")
    head, cut, tail = fitted.partition(" characters cut) ...")
    assert cut and int(head.rsplit("(", 1)[1]) == len(message) - len(head.rsplit("... (", 1)[0]) - len(tail)


@pytest.mark.parametrize(("field", "value"), [("int64_param", 7), ("uint64_param", 7), ("string_param", "seq-7")])
def test_a_request_of_a_sequence_is_refused_not_answered_as_stateless(field: str, value: Any) -> None:
    """Before, ``sequence_id`` was ignored: each request of a stateful client's sequence was answered on its own."""
    request = _typed_request("x", "FP32", (1, 1), fp32_contents=[1.0])
    setattr(request.parameters["sequence_id"], field, value)
    refusal = f"request parameter 'sequence_id' ({json.dumps(value)}): sequences are not supported"
    with pytest.raises(BadRequest, match=re.escape(refusal)):
        decode_infer_request(request)
    setattr(request.parameters["sequence_id"], field, type(value)())  # 0 or "": no sequence, as Triton reads it
    assert decode_infer_request(request).tensors[0].array.tolist() == [[1.0]]
