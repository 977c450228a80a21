"""End-to-end: tritonclient.grpc against the real running gateway (Ray, ONNX Runtime, demo repository).

Predictions are checked against ONNX Runtime run directly on the same model
file and the same rows, so the test proves the whole path — protobuf decode,
validation, batching, the Ray hop, and encode — changes nothing. Every error
case also checks that the server goes on answering correctly afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tritonclient_grpc
from sklearn.datasets import load_breast_cancer
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

MODEL = "breast-cancer"
DEFAULT_VERSION = "1"
READY_VERSIONS = ("1", "2", "3")
BROKEN_VERSION = "9"
INPUT = "features"
FEATURES = 30


# --------------------------------------------------------------------------- helpers and fixtures


@cache
def all_rows() -> np.ndarray:
    return np.ascontiguousarray(load_breast_cancer().data, dtype=np.float32)


def rows(start: int, count: int) -> np.ndarray:
    return np.ascontiguousarray(all_rows()[start:start + count])


@cache
def _session(model_file: str) -> Any:
    return ort.InferenceSession(model_file, providers=["CPUExecutionProvider"])


def reference(repository: Path, version: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """ONNX Runtime on the same model file, in this process: what the gateway must return."""
    session = _session(str(repository / MODEL / version / "model.onnx"))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {INPUT: x}), strict=True))


def features_input(x: np.ndarray, datatype: str = "FP32") -> Any:
    tensor = tritonclient_grpc.InferInput(INPUT, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def status_of(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status())


def message_of(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.message())


@pytest.fixture(scope="module")
def client(gateway: Any) -> Iterator[Any]:
    with tritonclient_grpc.InferenceServerClient(gateway.grpc_url) as c:
        yield c


@pytest.fixture(scope="module")
def stub(gateway: Any) -> Iterator[Any]:
    """A plain gRPC stub (Triton's generated one), for requests tritonclient cannot express."""
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def repository(gateway: Any) -> Path:
    return Path(gateway.repository)


def assert_still_serving(client: Any, repository: Path) -> None:
    """After an error the server must answer a good request correctly."""
    x = rows(100, 2)
    result = client.infer(MODEL, [features_input(x)])
    expected = reference(repository, DEFAULT_VERSION, x)["label"]
    np.testing.assert_array_equal(result.as_numpy("label"), expected)


def expect_raw_error(stub: Any, client: Any, repository: Path, code: grpc.StatusCode,
                     request: service_pb2.ModelInferRequest) -> str:
    """Send a request tritonclient cannot express; it must fail with ``code``. Returns the message."""
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(request)
    assert exc.value.code() == code, exc.value.details()
    assert_still_serving(client, repository)
    return str(exc.value.details())


def typed_request(x: np.ndarray) -> service_pb2.ModelInferRequest:
    """A request carrying ``x`` in typed FP32 contents (as non-Triton OIP clients send it)."""
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name=INPUT, datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    return request


def expect_error(client: Any, repository: Path, code: str, *args: Any, **kwargs: Any) -> str:
    """Run one infer that must fail with ``code``; return its message, once the server is seen serving on."""
    with pytest.raises(InferenceServerException) as exc:
        client.infer(*args, **kwargs)
    assert status_of(exc) == f"StatusCode.{code}", message_of(exc)
    assert "Traceback" not in message_of(exc)
    assert_still_serving(client, repository)
    return message_of(exc)


# --------------------------------------------------------------------------- health and metadata


def test_server_live_and_ready(client: Any) -> None:
    assert client.is_server_live() is True
    assert client.is_server_ready() is True


def test_server_metadata(client: Any) -> None:
    metadata = client.get_server_metadata()
    assert metadata.name == "mlgate"
    assert metadata.version
    assert "model_repository(index)" in metadata.extensions


def test_model_metadata(client: Any) -> None:
    metadata = client.get_model_metadata(MODEL)
    assert metadata.name == MODEL
    assert metadata.platform == "onnxruntime_onnx"
    assert list(metadata.versions) == [*READY_VERSIONS, BROKEN_VERSION]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [(INPUT, "FP32", [-1, FEATURES])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("probabilities", "FP32", [-1, 2]), ("label", "INT64", [-1]),
    ]


def test_pinned_version_metadata(client: Any) -> None:
    metadata = client.get_model_metadata(MODEL, "2")
    assert list(metadata.versions) == ["2"]


def test_model_ready(client: Any) -> None:
    assert client.is_model_ready(MODEL) is True
    for version in READY_VERSIONS:
        assert client.is_model_ready(MODEL, version) is True
    assert client.is_model_ready("breast-cancer-wide", "1") is True
    assert client.is_model_ready(MODEL, BROKEN_VERSION) is False


def test_model_ready_for_unknown_model_is_not_found(client: Any) -> None:
    with pytest.raises(InferenceServerException) as exc:
        client.is_model_ready("no-such-model")
    assert status_of(exc) == "StatusCode.NOT_FOUND"
    assert "unknown model 'no-such-model'" in message_of(exc)


def test_repository_index(client: Any) -> None:
    index = client.get_model_repository_index()
    entries = {(m.name, m.version): m for m in index.models}
    for version in READY_VERSIONS:
        assert entries[(MODEL, version)].state == "READY"
        assert entries[(MODEL, version)].reason == ""
    assert entries[("breast-cancer-wide", "1")].state == "READY"
    broken = entries[(MODEL, BROKEN_VERSION)]
    assert broken.state == "UNAVAILABLE"
    assert "model.onnx" in broken.reason
    assert "SHA-256" in broken.reason


def test_repository_index_ready_only(stub: Any) -> None:
    response = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True))
    assert {m.state for m in response.models} == {"READY"}
    versions = {m.version for m in response.models if m.name == MODEL}
    assert versions == set(READY_VERSIONS)


# --------------------------------------------------------------------------- inference


def test_infer_default_version_matches_onnxruntime(client: Any, repository: Path) -> None:
    x = rows(0, 8)
    result = client.infer(MODEL, [features_input(x)], request_id="req-default")
    expected = reference(repository, DEFAULT_VERSION, x)
    response = result.get_response()
    assert response.model_name == MODEL
    assert response.model_version == DEFAULT_VERSION
    assert response.id == "req-default"
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], rtol=0, atol=1e-6)
    assert result.as_numpy("label").dtype == np.int64
    assert result.as_numpy("probabilities").shape == (8, 2)


@pytest.mark.parametrize("version", READY_VERSIONS)
def test_infer_pinned_version_matches_onnxruntime(client: Any, repository: Path, version: str) -> None:
    x = rows(200, 5)
    result = client.infer(MODEL, [features_input(x)], model_version=version)
    expected = reference(repository, version, x)
    assert result.get_response().model_version == version
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], rtol=0, atol=1e-6)


def test_versions_really_differ(client: Any, repository: Path) -> None:
    """Guards the pinned-version test: v1 and v3 disagree somewhere on the data, so routing is observable."""
    x = all_rows()
    v1 = client.infer(MODEL, [features_input(x[:500])], model_version="1").as_numpy("probabilities")
    v3 = client.infer(MODEL, [features_input(x[:500])], model_version="3").as_numpy("probabilities")
    assert not np.allclose(v1, v3, atol=1e-3)


def test_requested_output_subset(client: Any, repository: Path) -> None:
    x = rows(10, 3)
    outputs = [tritonclient_grpc.InferRequestedOutput("label")]
    result = client.infer(MODEL, [features_input(x)], outputs=outputs)
    assert [o.name for o in result.get_response().outputs] == ["label"]
    assert result.as_numpy("probabilities") is None
    expected = reference(repository, DEFAULT_VERSION, x)["label"]
    np.testing.assert_array_equal(result.as_numpy("label"), expected)


def test_requested_outputs_keep_the_requested_order(client: Any) -> None:
    outputs = [tritonclient_grpc.InferRequestedOutput(n) for n in ("label", "probabilities")]
    result = client.infer(MODEL, [features_input(rows(0, 1))], outputs=outputs)
    assert [o.name for o in result.get_response().outputs] == ["label", "probabilities"]


def test_single_row(client: Any, repository: Path) -> None:
    x = rows(42, 1)
    result = client.infer(MODEL, [features_input(x)])
    expected = reference(repository, DEFAULT_VERSION, x)["label"]
    np.testing.assert_array_equal(result.as_numpy("label"), expected)


def test_typed_contents_get_typed_answers(stub: Any, repository: Path) -> None:
    """Clients that do not use raw contents (other OIP clients) are answered in typed fields."""
    x = rows(20, 4)
    request = typed_request(x)
    request.model_version, request.id = "2", "typed"
    response = stub.ModelInfer(request)
    assert (response.model_version, response.id) == ("2", "typed")
    assert len(response.raw_output_contents) == 0
    by_name = {o.name: o for o in response.outputs}
    expected = reference(repository, "2", x)
    np.testing.assert_array_equal(np.array(by_name["label"].contents.int64_contents), expected["label"])
    probabilities = np.array(by_name["probabilities"].contents.fp32_contents, dtype=np.float32).reshape(4, 2)
    np.testing.assert_allclose(probabilities, expected["probabilities"], rtol=0, atol=1e-6)


def test_concurrent_requests_each_get_their_own_rows(client: Any, repository: Path) -> None:
    """Concurrent requests are batched together; each must still get exactly its own answers."""
    x = all_rows()
    expected = reference(repository, DEFAULT_VERSION, x)
    starts = list(range(0, 480, 7))

    def one(start: int) -> tuple[int, np.ndarray, np.ndarray]:
        count = 1 + start % 5
        result = client.infer(MODEL, [features_input(rows(start, count))])
        return start, result.as_numpy("label"), result.as_numpy("probabilities")

    with ThreadPoolExecutor(max_workers=16) as pool:
        for start, labels, probabilities in pool.map(one, starts):
            count = 1 + start % 5
            np.testing.assert_array_equal(labels, expected["label"][start:start + count])
            np.testing.assert_allclose(probabilities, expected["probabilities"][start:start + count],
                                       rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- bad requests


def test_wrong_tensor_name(client: Any, repository: Path) -> None:
    tensor = tritonclient_grpc.InferInput("feature", [1, FEATURES], "FP32").set_data_from_numpy(rows(0, 1))
    message = expect_error(client, repository, "INVALID_ARGUMENT", MODEL, [tensor])
    assert message == (
        f"unknown input 'feature' for model '{MODEL}' version '{DEFAULT_VERSION}'; expected inputs: {INPUT}"
    )


def test_wrong_datatype(client: Any, repository: Path) -> None:
    x = rows(0, 1).astype(np.float64)
    message = expect_error(client, repository, "INVALID_ARGUMENT", MODEL, [features_input(x, "FP64")])
    assert message == (
        f"input '{INPUT}' has datatype FP64; model '{MODEL}' version '{DEFAULT_VERSION}' expects FP32"
    )


def test_wrong_feature_count(client: Any, repository: Path) -> None:
    x = np.ascontiguousarray(rows(0, 2)[:, :29])
    message = expect_error(client, repository, "INVALID_ARGUMENT", MODEL, [features_input(x)])
    assert message == (
        f"input '{INPUT}' has shape [2, 29]; model '{MODEL}' version '{DEFAULT_VERSION}' expects [-1, 30] "
        "(30 features per row, got 29)"
    )


def test_shape_not_matching_data_length(client: Any, repository: Path) -> None:
    tensor = features_input(rows(0, 1)).set_shape([2, FEATURES])
    message = expect_error(client, repository, "INVALID_ARGUMENT", MODEL, [tensor])
    assert message == f"input '{INPUT}': FP32 shape [2, 30] needs 240 bytes but 120 were sent"


def test_nan_in_features(client: Any, repository: Path) -> None:
    x = rows(0, 3).copy()
    x[1, 4] = np.nan
    message = expect_error(client, repository, "INVALID_ARGUMENT", MODEL, [features_input(x)])
    assert message == (
        f"input '{INPUT}' holds a non-finite value (NaN or infinity) at index [1, 4]; "
        f"model '{MODEL}' version '{DEFAULT_VERSION}' accepts finite values only"
    )


def test_missing_input(client: Any, repository: Path) -> None:
    message = expect_error(client, repository, "INVALID_ARGUMENT", MODEL, [])
    assert message.startswith(f"missing input '{INPUT}' (FP32 [-1, 30])")


def test_unknown_requested_output(client: Any, repository: Path) -> None:
    outputs = [tritonclient_grpc.InferRequestedOutput("scores")]
    message = expect_error(client, repository, "INVALID_ARGUMENT", MODEL, [features_input(rows(0, 1))],
                           outputs=outputs)
    assert message == (
        f"unknown output 'scores' for model '{MODEL}' version '{DEFAULT_VERSION}'; "
        "it has outputs: probabilities, label"
    )


def test_too_many_rows(client: Any, repository: Path) -> None:
    manifest = json.loads((repository / MODEL / DEFAULT_VERSION / "manifest.json").read_text())
    limit = int(manifest.get("max_batch_rows", 1024))
    x = np.resize(all_rows(), (limit + 1, FEATURES)).astype(np.float32)
    message = expect_error(client, repository, "INVALID_ARGUMENT", MODEL, [features_input(x)])
    assert message == (
        f"the request has {limit + 1} rows; model '{MODEL}' version '{DEFAULT_VERSION}' takes at most "
        f"{limit} per request"
    )


def test_mixed_raw_and_typed_contents(client: Any, stub: Any, repository: Path) -> None:
    request = typed_request(rows(0, 1))
    request.raw_input_contents.append(rows(0, 1).tobytes())
    message = expect_raw_error(stub, client, repository, grpc.StatusCode.INVALID_ARGUMENT, request)
    assert "also uses raw_input_contents" in message


def test_unknown_model(client: Any, repository: Path) -> None:
    message = expect_error(client, repository, "NOT_FOUND", "no-such-model", [features_input(rows(0, 1))])
    assert message.startswith("unknown model 'no-such-model'; served models: ")
    assert MODEL in message


def test_unknown_version(client: Any, repository: Path) -> None:
    message = expect_error(client, repository, "NOT_FOUND", MODEL, [features_input(rows(0, 1))],
                           model_version="42")
    assert message.startswith(f"model '{MODEL}' has no version '42'; versions: 1, 2, 3")


def test_broken_version_is_unavailable(client: Any, repository: Path) -> None:
    message = expect_error(client, repository, "UNAVAILABLE", MODEL, [features_input(rows(0, 1))],
                           model_version=BROKEN_VERSION)
    assert message.startswith(f"model '{MODEL}' version '{BROKEN_VERSION}' is not ready")
    assert "model.onnx" in message


def test_impossible_timeout_parameter_is_resource_exhausted(client: Any, repository: Path) -> None:
    # tritonclient's `timeout` (µs) is sent as the request's "timeout" parameter; it counts from the request's
    # arrival, so decoding and routing it use up 1 µs before it reaches the batcher
    message = expect_error(client, repository, "RESOURCE_EXHAUSTED", MODEL, [features_input(rows(0, 1))],
                           timeout=1)
    assert "none of it was left when the request reached the batcher" in message


def test_malformed_timeout_parameter_is_invalid(stub: Any, client: Any, repository: Path) -> None:
    request = typed_request(rows(0, 1))
    request.parameters["timeout"].string_param = "soon"
    message = expect_raw_error(stub, client, repository, grpc.StatusCode.INVALID_ARGUMENT, request)
    assert "'timeout' must be a non-negative integer of microseconds (0: no timeout), got \"soon\"" in message


def test_a_timeout_of_zero_is_none_as_in_triton(client: Any, repository: Path) -> None:
    """tritonclient sends ``timeout=0`` as given; Triton reads it as "no timeout", and here it was INVALID_ARGUMENT."""
    x = rows(10, 3)
    result = client.infer(MODEL, [features_input(x)], timeout=0)
    np.testing.assert_array_equal(result.as_numpy("label"), reference(repository, DEFAULT_VERSION, x)["label"])


def test_generous_grpc_deadline_is_served(client: Any, repository: Path) -> None:
    x = rows(10, 3)
    result = client.infer(MODEL, [features_input(x)], client_timeout=5.0, timeout=5_000_000)
    np.testing.assert_array_equal(result.as_numpy("label"), reference(repository, DEFAULT_VERSION, x)["label"])


# --------------------------------------------------------------------------- messages protobuf cannot parse


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (``payload`` under 128 bytes), written by hand so it may hold bad UTF-8."""
    return bytes([number << 3 | 2, len(payload)]) + payload


@pytest.mark.parametrize(("method", "payload", "named"), [
    ("ModelInfer", _field(1, b"breast-\xffcancer"), "field 'model_name' is not valid UTF-8"),
    ("ModelInfer", _field(1, MODEL.encode()) + _field(5, _field(1, b"feat\xc3") + _field(2, b"FP32")),
     "field 'inputs[0].name' is not valid UTF-8"),
    ("ModelInfer", _field(1, MODEL.encode()) + _field(4, _field(1, b"timeout") + _field(2, _field(3, b"\xfe"))),
     "field 'parameters[0].value.string_param' is not valid UTF-8"),
    ("ModelInfer", b"\x0a\x40" + MODEL.encode(), "malformed protobuf (a field of 64 bytes at byte 2 runs past"),
    ("ModelReady", _field(1, MODEL.encode()) + _field(2, b"\x80"), "field 'version' is not valid UTF-8"),
    ("ModelMetadata", _field(1, b"\xe9"), "field 'name' is not valid UTF-8"),
    ("ServerLive", b"\x0b", "malformed protobuf (wire type 3 at byte 1)"),
])
def test_unparsable_message_is_invalid_argument_naming_the_field(
    gateway: Any, client: Any, repository: Path, method: str, payload: bytes, named: str
) -> None:
    """Bytes protobuf refuses — a string field that is not UTF-8, a truncated message — were UNKNOWN
    ("Unexpected DecodeError"), with grpcio's traceback in the gateway's log."""
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")  # bytes in, bytes out
        with pytest.raises(grpc.RpcError) as exc:
            call(payload, timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details()
    assert f"is not a valid inference.{method}Request message: {named}" in str(exc.value.details())
    assert "DecodeError" not in gateway.log_path.read_text(errors="replace")
    assert_still_serving(client, repository)


# --------------------------------------------------------------------------- long values quoted in messages


def test_error_quoting_a_long_model_name_keeps_its_status(client: Any, repository: Path) -> None:
    """The message quotes the name; at 20,000 characters it made the ``grpc-message`` trailer too large for the
    client, which then reported RESOURCE_EXHAUSTED "received metadata size exceeds hard limit" instead."""
    name = "m" * 20_000
    message = expect_error(client, repository, "NOT_FOUND", name, [features_input(rows(0, 1))])
    assert message.startswith("unknown model 'mmmm") and "...' (20,000 characters)" in message
    assert message.endswith(f"; served models: {MODEL}, breast-cancer-wide")
    with pytest.raises(InferenceServerException) as exc:
        client.is_model_ready(name)
    assert status_of(exc) == "StatusCode.NOT_FOUND"


def test_error_quoting_a_long_non_ascii_value_keeps_its_status(stub: Any, client: Any, repository: Path) -> None:
    """Non-ASCII characters are percent-encoded in the trailer (up to 12 bytes each): 2,000 of them overflowed it."""
    request = typed_request(rows(0, 1))
    request.parameters["routing_key"].string_param = "\U0001f600" * 2_000
    message = expect_raw_error(stub, client, repository, grpc.StatusCode.INVALID_ARGUMENT, request)
    assert message.startswith("request parameter 'routing_key' must be a string of 1 to 256 characters, got "
                              '"\U0001f600')
    assert message.endswith('..." (2,000 characters)')


# --------------------------------------------------------------------------- refusing before decoding


def test_bytes_tensor_for_a_numeric_input_is_refused_before_its_data_is_decoded(
    stub: Any, client: Any, repository: Path
) -> None:
    """BYTES decoding is a Python loop over the elements on the event loop: 3 million of them sent to an FP32 input
    held every other request up for seconds, and were then refused for their datatype anyway. The last element's
    length prefix runs past the end, so a message about it would show that the data was decoded first."""
    count = 3_000_000
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name=INPUT, datatype="BYTES", shape=[count])
    request.raw_input_contents.append(b"\x01\x00\x00\x00a" * (count - 1) + b"\xff\x00\x00\x00a")
    message = expect_raw_error(stub, client, repository, grpc.StatusCode.INVALID_ARGUMENT, request)
    assert message == f"input '{INPUT}' has datatype BYTES; model '{MODEL}' version '{DEFAULT_VERSION}' expects FP32"


def test_unknown_input_is_refused_before_its_data_is_decoded(stub: Any, client: Any, repository: Path) -> None:
    request = typed_request(rows(0, 1))
    request.inputs[0].name = "feature"
    del request.inputs[0].contents.fp32_contents[1:]  # a count error, were the data decoded first
    message = expect_raw_error(stub, client, repository, grpc.StatusCode.INVALID_ARGUMENT, request)
    assert message == (f"unknown input 'feature' for model '{MODEL}' version '{DEFAULT_VERSION}'; "
                       f"expected inputs: {INPUT}")


def test_input_repeated_a_million_times_is_refused_at_its_second_copy(
    stub: Any, client: Any, repository: Path
) -> None:
    """22 MB naming one input a million times: every copy was decoded before the duplicate was refused, holding the
    event loop for 8 to 11 s. The last copy is undecodable, so a message about it would show they all were."""
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name=INPUT, datatype="FP32", shape=[1, FEATURES])
    for _ in range(1_000_000):
        request.inputs.add(name=INPUT, datatype="FP32", shape=[0, FEATURES])
    request.inputs.add(name=INPUT, datatype="FP32", shape=[1, FEATURES + 1])
    request.raw_input_contents.extend([rows(0, 1).tobytes()] + [b""] * 1_000_000 + [rows(0, 1).tobytes()])
    message = expect_raw_error(stub, client, repository, grpc.StatusCode.INVALID_ARGUMENT, request)
    assert message == f"input '{INPUT}' is given more than once"


def test_unknown_output_among_a_million_is_refused_as_read(stub: Any, client: Any, repository: Path) -> None:
    """The same for requested outputs: all were read before any name was checked. The last is refused for its
    parameters, so a message about it would show that all were read."""
    request = typed_request(rows(0, 1))
    request.outputs.add(name="label")
    for index in range(1_000_000):
        request.outputs.add(name=f"o{index}")
    request.outputs.add(name="probabilities").parameters["classification"].int64_param = 1
    message = expect_raw_error(stub, client, repository, grpc.StatusCode.INVALID_ARGUMENT, request)
    assert message == f"unknown output 'o0' for model '{MODEL}' version '{DEFAULT_VERSION}'; it has outputs: " \
                      "probabilities, label"
