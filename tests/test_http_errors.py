"""Every kind of bad input gets the right status and a message that says what to fix; the server keeps serving."""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from tests.conftest import TAMPERED_VERSION, RunningGateway

INFER = "/v2/models/breast-cancer/infer"


@pytest.fixture(scope="module")
def http(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{gateway.http_url}", timeout=30) as client:
        yield client


def _body(data: Any = None, *, name: str = "features", datatype: str = "FP32",
          shape: list[int] | None = None) -> dict[str, Any]:
    data = [0.5] * 30 if data is None else data
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape or [1, 30], "data": data}]}


def _assert_error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    message = response.json()["error"]
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "Traceback" not in response.text


def _binary_request(array: np.ndarray, declared_size: int | None = None,
                    header_length_delta: int = 0) -> tuple[bytes, dict[str, str]]:
    raw = array.astype("<f4").tobytes()
    header = orjson.dumps({"inputs": [{
        "name": "features", "datatype": "FP32", "shape": list(array.shape),
        "parameters": {"binary_data_size": len(raw) if declared_size is None else declared_size},
    }]})
    headers = {"Inference-Header-Content-Length": str(len(header) + header_length_delta),
               "Content-Type": "application/octet-stream"}
    return header + raw, headers


@pytest.fixture(autouse=True)
def still_serving_afterwards(http: httpx.Client) -> Iterator[None]:
    """After every bad request, a good one still gets its answer."""
    yield
    response = http.post(INFER, json=_body())
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == "1"


def test_malformed_json(http: httpx.Client) -> None:
    response = http.post(INFER, content=b'{"inputs": [', headers={"Content-Type": "application/json"})
    _assert_error(response, 400, "not valid JSON")


def test_body_that_is_not_an_object(http: httpx.Client) -> None:
    _assert_error(http.post(INFER, json=[1, 2, 3]), 400, "must be a JSON object")


def test_missing_inputs(http: httpx.Client) -> None:
    _assert_error(http.post(INFER, json={"inputs": []}), 400, "'inputs' must be a non-empty list")


def test_wrong_tensor_name(http: httpx.Client) -> None:
    _assert_error(http.post(INFER, json=_body(name="feats")), 400, "unknown input 'feats'", "expected inputs: features")


def test_wrong_datatype(http: httpx.Client) -> None:
    _assert_error(http.post(INFER, json=_body(datatype="FP64")), 400, "datatype FP64", "expects FP32")


def test_name_and_datatype_are_checked_before_the_data_is_decoded(http: httpx.Client) -> None:
    """Each tensor is checked against the model from its header: decoding data the model cannot take cost
    seconds for large BYTES tensors, and the message was then about the data rather than the name or type."""
    _assert_error(http.post(INFER, json=_body(data=[0.5] * 29, name="feats")), 400, "unknown input 'feats'")
    _assert_error(http.post(INFER, json=_body(data=[1] * 30, datatype="BYTES")), 400,
                  "input 'features' has datatype BYTES", "expects FP32")


def test_unknown_datatype(http: httpx.Client) -> None:
    _assert_error(http.post(INFER, json=_body(datatype="FLOAT")), 400, 'unknown datatype "FLOAT"')


def test_shape_does_not_match_data_length(http: httpx.Client) -> None:
    _assert_error(http.post(INFER, json=_body(data=[0.5] * 29)), 400, "needs 30 elements but data has 29")


def test_wrong_feature_count(http: httpx.Client) -> None:
    response = http.post(INFER, json=_body(data=[0.5] * 29, shape=[1, 29]))
    _assert_error(response, 400, "shape [1, 29]", "expects [-1, 30]", "30 features per row, got 29")


def test_strings_where_numbers_belong(http: httpx.Client) -> None:
    _assert_error(http.post(INFER, json=_body(data=["x"] * 30)), 400, "FP32 data must be numbers, got strings")


def test_ragged_nested_data(http: httpx.Client) -> None:
    response = http.post(INFER, json=_body(data=[[0.5] * 30, [0.5] * 29], shape=[2, 30]))
    _assert_error(response, 400, "ragged")


def test_too_many_rows_for_the_model(http: httpx.Client) -> None:
    response = http.post(INFER, json=_body(data=[0.5] * 30 * 1025, shape=[1025, 30]))
    _assert_error(response, 400, "1025 rows", "at most 1024")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_json_values(http: httpx.Client, literal: str) -> None:
    values = ", ".join(["0.5"] * 7 + [literal] + ["0.5"] * 22)
    raw = f'{{"inputs": [{{"name": "features", "datatype": "FP32", "shape": [1, 30], "data": [{values}]}}]}}'
    response = http.post(INFER, content=raw.encode(), headers={"Content-Type": "application/json"})
    _assert_error(response, 400, "non-finite", "index [0, 7]", "finite values only")


def test_non_finite_binary_values(http: httpx.Client) -> None:
    rows = np.full((2, 30), 0.5, dtype=np.float32)
    rows[1, 3] = math.nan
    body, headers = _binary_request(rows)
    _assert_error(http.post(INFER, content=body, headers=headers), 400, "non-finite", "index [1, 3]")


def test_body_over_the_size_limit(http: httpx.Client) -> None:
    oversized = b'{"inputs": []}' + b" " * (1024 * 1024)
    response = http.post(INFER, content=oversized, headers={"Content-Type": "application/json"})
    _assert_error(response, 413, "exceeds the limit of 1048576 bytes")


def test_unknown_model(http: httpx.Client) -> None:
    response = http.post("/v2/models/no-such-model/infer", json=_body())
    _assert_error(response, 404, "unknown model 'no-such-model'", "breast-cancer")


def test_unknown_version(http: httpx.Client) -> None:
    response = http.post("/v2/models/breast-cancer/versions/77/infer", json=_body())
    _assert_error(response, 404, "no version '77'", "versions: 1, 2, 3")


def test_unknown_model_metadata(http: httpx.Client) -> None:
    _assert_error(http.get("/v2/models/no-such-model"), 404, "unknown model 'no-such-model'")


def test_unavailable_version(http: httpx.Client) -> None:
    response = http.post(f"/v2/models/breast-cancer/versions/{TAMPERED_VERSION}/infer", json=_body())
    _assert_error(response, 503, "not ready", "SHA-256")
    assert response.headers["retry-after"] == "1"


def test_binary_header_length_beyond_body(http: httpx.Client) -> None:
    body, headers = _binary_request(np.ones((1, 30), np.float32), header_length_delta=10_000)
    _assert_error(http.post(INFER, content=body, headers=headers), 400,
                  "Inference-Header-Content-Length", "only")


def test_binary_size_beyond_body(http: httpx.Client) -> None:
    body, headers = _binary_request(np.ones((1, 30), np.float32), declared_size=240)
    _assert_error(http.post(INFER, content=body, headers=headers), 400, "binary_data_size 240 runs past the end")


def test_binary_size_not_matching_shape(http: httpx.Client) -> None:
    body, headers = _binary_request(np.ones((1, 30), np.float32), declared_size=60)
    _assert_error(http.post(INFER, content=body, headers=headers), 400, "needs 120 bytes but 60 were sent")


@pytest.mark.parametrize("value", [b"\xb2", b"9" * 5000, b"-1", b"12a"])
def test_binary_header_length_that_is_not_a_plain_number(http: httpx.Client, value: bytes) -> None:
    """'²' passes str.isdigit but not int(), and 5,000 digits pass isdigit but not int()'s digit limit: both were
    500s."""
    body, headers = _binary_request(np.ones((1, 30), np.float32))
    raw_headers = {name.encode(): text.encode() for name, text in headers.items()}
    response = http.post(INFER, content=body, headers={**raw_headers, b"Inference-Header-Content-Length": value})
    text = value.decode("latin-1")
    shown = f'"{text[:64]}..." (5,000 characters)' if len(text) > 64 else f'"{text}"'
    _assert_error(response, 400, f"Inference-Header-Content-Length must be a non-negative integer, got {shown}")


def test_a_lone_surrogate_is_bad_json_not_a_server_error(http: httpx.Client) -> None:
    body = b'{"id": "\\udc00", "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 30], "data": [NaN' + \
        b", 0.5" * 29 + b"]}]}"
    _assert_error(http.post(INFER, content=body, headers={"Content-Type": "application/json"}), 400,
                  "not valid JSON")


def _compressed(encoding: str, payload: bytes) -> bytes:
    return gzip.compress(payload) if encoding == "gzip" else zlib.compress(payload)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_bodies_are_served(http: httpx.Client, encoding: str) -> None:
    """tritonclient's request_compression_algorithm: the body gzip- or deflate-compressed, said in Content-Encoding."""
    payload = orjson.dumps(_body())
    response = http.post(INFER, content=_compressed(encoding, payload),
                         headers={"Content-Type": "application/json", "Content-Encoding": encoding})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [1, 2]


def test_a_gzip_body_of_several_members_is_read_whole(http: httpx.Client) -> None:
    payload = orjson.dumps(_body())
    body = gzip.compress(payload[:50]) + gzip.compress(payload[50:])
    response = http.post(INFER, content=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("encoding", "cut", "extra", "message"),
    [
        ("gzip", 8, b"", "truncated gzip data"),
        ("deflate", 3, b"", "truncated deflate data"),
        ("deflate", 0, b"??", "2 bytes after the end of its deflate data"),
        ("gzip", 0, b"junk", "not valid gzip data"),
    ],
)
def test_compressed_bodies_cut_short_or_with_trailing_bytes(http: httpx.Client, encoding: str, cut: int,
                                                           extra: bytes, message: str) -> None:
    """A truncated stream was served as the part that could be inflated; bytes after it were dropped."""
    whole = _compressed(encoding, orjson.dumps(_body()))
    body = (whole[:-cut] if cut else whole) + extra
    headers = {"Content-Type": "application/json", "Content-Encoding": encoding}
    _assert_error(http.post(INFER, content=body, headers=headers), 400, message)


def test_compression_bomb_and_unknown_encoding(http: httpx.Client) -> None:
    bomb = gzip.compress(b" " * (2 << 20))  # 2 KiB on the wire, more than the test gateway's 1 MiB once inflated
    response = http.post(INFER, content=bomb, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    _assert_error(response, 413, "decompressed request body exceeds the limit")
    response = http.post(INFER, content=b"{}", headers={"Content-Type": "application/json", "Content-Encoding": "br"})
    _assert_error(response, 400, "unsupported Content-Encoding 'br'")


def test_stacked_content_codings_are_refused_by_name(http: httpx.Client) -> None:
    """A second Content-Encoding header was ignored: gzip applied twice was inflated once, then 'not valid JSON'."""
    twice = gzip.compress(gzip.compress(orjson.dumps(_body())))
    for headers in ([("Content-Encoding", "gzip"), ("Content-Encoding", "gzip")], [("Content-Encoding", "gzip, gzip")]):
        response = http.post(INFER, content=twice, headers=[("Content-Type", "application/json"), *headers])
        _assert_error(response, 400, "Content-Encoding stacks 2 codings (gzip, gzip)")
    once = [("Content-Type", "application/json"), ("Content-Encoding", "identity"), ("Content-Encoding", "gzip")]
    assert http.post(INFER, content=gzip.compress(orjson.dumps(_body())), headers=once).status_code == 200


def test_unknown_requested_output(http: httpx.Client) -> None:
    body = {**_body(), "outputs": [{"name": "logits"}]}
    _assert_error(http.post(INFER, json=body), 400, "unknown output 'logits'", "probabilities, label")


def test_wrong_method(http: httpx.Client) -> None:
    response = http.get(INFER)
    _assert_error(response, 405, "method GET not allowed here; use POST")
    assert response.headers["allow"] == "POST"


def test_unknown_endpoint(http: httpx.Client) -> None:
    _assert_error(http.get("/v2/nothing/here"), 404, "no such endpoint")
    _assert_error(http.post("/v2foo/models/breast-cancer/infer", json=_body()), 404, "no such endpoint")


@pytest.mark.parametrize(("value", "shown"), [("soon", '"soon"'), (True, "true"), (1.5, "1.5"), ([1], "[1]")])
def test_malformed_timeout_parameter(http: httpx.Client, value: Any, shown: str) -> None:
    """The value is quoted as the caller wrote it in JSON: ``true`` was shown as Python's ``True``."""
    response = http.post(INFER, json={**_body(), "parameters": {"timeout": value}})
    _assert_error(response, 400,
                  f"'timeout' must be a non-negative integer of microseconds (0: no timeout), got {shown}")


LONG = 200_000
"""Characters of a name or value no message should repeat whole (the test gateway's body limit is 1 MiB)."""


@pytest.mark.parametrize(("body", "fragments"), [
    ({**_body(), "parameters": {"routing_key": "k" * LONG}},
     ["'routing_key' must be a string of 1 to 256 characters, got \"kkkk", '..." (200,000 characters)']),
    (_body(name="n" * LONG), ["unknown input 'nnnn", "...' (200,000 characters) for model 'breast-cancer'",
                              "expected inputs: features"]),
    (_body(datatype="F" * LONG), ['unknown datatype "FFFF', '..." (200,000 characters); expected one of']),
    (_body(shape=[1] * LONG), ["non-negative integers, got [1, 1, ", ", ...] (200,000 items)"]),
    ({**_body(), "outputs": [{"name": "o" * LONG}]}, ["unknown output 'oooo", "...' (200,000 characters) for"]),
    ({**_body(), "parameters": {"sequence_id": "s" * LONG}}, ['\'sequence_id\' ("ssss', "(200,000 characters)):"]),
], ids=["routing-key", "input-name", "datatype", "shape", "output-name", "sequence-id"])
def test_messages_quote_only_the_start_of_a_long_name_or_value(http: httpx.Client, body: dict[str, Any],
                                                               fragments: list[str]) -> None:
    """Messages quoted what they refused whole: a 200,000-character routing key came back as a 200 KB error."""
    response = http.post(INFER, json=body)
    _assert_error(response, 400, *fragments)
    assert len(response.content) < 400, response.text


def test_a_long_model_name_is_quoted_in_part(http: httpx.Client) -> None:
    response = http.post(f"/v2/models/{'m' * 20_000}/infer", json=_body())
    _assert_error(response, 404, "unknown model 'mmmm", "...' (20,000 characters); served models: breast-cancer")
    assert len(response.content) < 400, response.text


def test_a_timeout_of_zero_is_none_as_in_triton_and_a_negative_one_is_refused(http: httpx.Client) -> None:
    """Triton reads 0 as "no timeout"; here it was a 400, so a tritonclient caller passing timeout=0 failed."""
    served = http.post(INFER, json={**_body(), "parameters": {"timeout": 0}})
    assert served.status_code == 200, served.text
    _assert_error(http.post(INFER, json={**_body(), "parameters": {"timeout": -1}}), 400,
                  "'timeout' must be a non-negative integer of microseconds (0: no timeout), got -1")


def test_impossible_timeout_is_refused_at_once_with_429(http: httpx.Client) -> None:
    response = http.post(INFER, json={**_body(), "parameters": {"timeout": 1}})  # one microsecond
    # The budget counts from the request's arrival, so it is gone before the request reaches the batcher
    # (refusals the latency model predicts: test_batcher.py).
    _assert_error(response, 429, "cannot answer within the request's timeout", "none of it was left")
    assert int(response.headers["retry-after"]) >= 1


def test_generous_timeout_is_served(http: httpx.Client) -> None:
    response = http.post(INFER, json={**_body(), "parameters": {"timeout": 5_000_000}})
    assert response.status_code == 200, response.text


def _metric(http: httpx.Client, name: str, labels: dict[str, str]) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    response = http.get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_metrics_endpoint_counts_batches_and_refusals(http: httpx.Client) -> None:
    labels = {"model": "breast-cancer", "version": "1"}
    batches = _metric(http, "mlgate_batch_rows_count", labels)
    refused = _metric(http, "mlgate_batcher_rejections_total", {**labels, "reason": "deadline"})
    assert http.post(INFER, json=_body()).status_code == 200
    assert http.post(INFER, json={**_body(), "parameters": {"timeout": 1}}).status_code == 429
    assert _metric(http, "mlgate_batch_rows_count", labels) == batches + 1
    assert _metric(http, "mlgate_batcher_rejections_total", {**labels, "reason": "deadline"}) == refused + 1
    assert _metric(http, "mlgate_latency_model_fixed_seconds", labels) > 0
