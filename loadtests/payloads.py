"""OIP inference request bodies, built once before a run from sklearn's bundled breast-cancer data.

Bodies are built up front so the hot loop spends no CPU on encoding, and
there are a few hundred distinct ones so that a server cannot get away with
caching a single answer -- every request carries real, varying rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import orjson

from loadtests.httpclient import build_request

Payload = Literal["json", "binary"]
N_FEATURES = 30
INPUT_NAME = "features"


@dataclass(frozen=True)
class EncodedBody:
    """One request body plus the content headers that go with it."""

    body: bytes
    headers: dict[str, str]


def load_rows() -> np.ndarray:
    """The 569 x 30 breast-cancer feature matrix (bundled with scikit-learn, no download)."""
    from sklearn.datasets import load_breast_cancer  # imported lazily: sklearn import takes ~1 s

    data = load_breast_cancer().data
    return np.ascontiguousarray(data, dtype=np.float64)


def _request(tensor: Mapping[str, object], binary_outputs: bool) -> dict[str, object]:
    """The request object; ``binary_outputs`` asks for every output as raw bytes after the JSON (as tritonclient
    does by default), which spares the server from printing large outputs as JSON numbers."""
    request: dict[str, object] = {"inputs": [tensor]}
    if binary_outputs:
        request["parameters"] = {"binary_data_output": True}
    return request


def json_body(rows: np.ndarray, binary_outputs: bool = False) -> EncodedBody:
    """OIP JSON: one FP32 input ``features`` of shape [R, 30], data flattened row-major.

    Values are sent as the dataset's own decimals (float64 repr), as a client
    holding a dataframe would send them; the server parses them into FP32.
    """
    tensor = {
        "name": INPUT_NAME,
        "datatype": "FP32",
        "shape": [int(rows.shape[0]), N_FEATURES],
        "data": rows.reshape(-1).tolist(),
    }
    return EncodedBody(orjson.dumps(_request(tensor, binary_outputs)), {"Content-Type": "application/json"})


def binary_body(rows: np.ndarray, binary_outputs: bool = False) -> EncodedBody:
    """Triton binary tensor extension: JSON header + raw little-endian FP32 bytes.

    ``Inference-Header-Content-Length`` tells the server where the JSON header
    ends; ``binary_data_size`` on the input says how many raw bytes belong to it.
    """
    raw = rows.astype("<f4").tobytes()
    tensor = {
        "name": INPUT_NAME,
        "datatype": "FP32",
        "shape": [int(rows.shape[0]), N_FEATURES],
        "parameters": {"binary_data_size": len(raw)},
    }
    header = orjson.dumps(_request(tensor, binary_outputs))
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return EncodedBody(header + raw, headers)


def row_batches(data: np.ndarray, rows_per_request: int, count: int) -> list[np.ndarray]:
    """``count`` consecutive windows of ``rows_per_request`` rows, wrapping around the dataset."""
    n = data.shape[0]
    out = []
    for i in range(count):
        idx = (np.arange(rows_per_request) + i * rows_per_request) % n
        out.append(data[idx])
    return out


def infer_path(model: str, version: str | None) -> str:
    """OIP infer route for a model, optionally pinned to one version."""
    if version:
        return f"/v2/models/{model}/versions/{version}/infer"
    return f"/v2/models/{model}/infer"


def build_requests(
    host_header: str,
    model: str,
    version: str | None,
    rows_per_request: int,
    payload: Payload,
    count: int = 256,
    prefix: str = "",
    binary_outputs: bool = False,
) -> list[bytes]:
    """Complete, pre-encoded HTTP requests (head + body) ready for ``transport.write``."""
    if rows_per_request < 1:
        raise ValueError("rows per request must be >= 1")
    encode = json_body if payload == "json" else binary_body
    path = prefix + infer_path(model, version)
    requests = []
    for rows in row_batches(load_rows(), rows_per_request, count):
        enc = encode(rows, binary_outputs)
        requests.append(build_request("POST", host_header, path, enc.body, enc.headers))
    return requests
