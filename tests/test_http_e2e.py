"""OIP over HTTP, end to end: tritonclient.http against a real gateway, real Ray, real ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.conftest import TAMPERED_VERSION, RunningGateway

MODEL = "breast-cancer"


@pytest.fixture(scope="module")
def client(gateway: RunningGateway) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(gateway.http_url, concurrency=4)


def _infer(client: httpclient.InferenceServerClient, rows: np.ndarray, *, binary: bool,
           version: str = "", outputs: list[str] | None = None, request_id: str = "") -> httpclient.InferResult:
    features = httpclient.InferInput("features", list(rows.shape), "FP32")
    features.set_data_from_numpy(rows, binary_data=binary)
    requested = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in outputs] if outputs else None
    return client.infer(MODEL, [features], model_version=version, outputs=requested, request_id=request_id)


def test_server_health_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "mlgate"
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_metadata_describes_tensors(client: httpclient.InferenceServerClient) -> None:
    metadata = client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL
    assert {"1", "2", "3", TAMPERED_VERSION} <= set(metadata["versions"])
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 30]}]
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]}
    assert outputs == {"probabilities": ("FP32", [-1, 2]), "label": ("INT64", [-1])}
    assert client.get_model_metadata(MODEL, "2")["versions"] == ["2"]
    config = client.get_model_config(MODEL)
    assert config["max_batch_size"] >= 64


def test_model_readiness_per_version(client: httpclient.InferenceServerClient) -> None:
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "2")
    assert client.is_model_ready("breast-cancer-wide")
    assert not client.is_model_ready(MODEL, TAMPERED_VERSION)


def test_repository_index_lists_every_version_with_state(client: httpclient.InferenceServerClient) -> None:
    index = {(m["name"], m["version"]): m for m in client.get_model_repository_index()}
    for version in ("1", "2", "3"):
        assert index[(MODEL, version)]["state"] == "READY"
    assert index[("breast-cancer-wide", "1")]["state"] == "READY"
    tampered = index[(MODEL, TAMPERED_VERSION)]
    assert tampered["state"] == "UNAVAILABLE"
    assert "model.onnx" in tampered["reason"] and "SHA-256" in tampered["reason"]


def test_the_start_up_log_says_each_version_s_state_in_words_and_fields(gateway: RunningGateway) -> None:
    """The line `make demo` is ready at read "models loaded: {\"model 'breast-cancer' version '1'\": 'READY', ...};
    server ready: True", a Python dict and bool in a JSON log, with nothing a log query could select on."""
    docs = [json.loads(line) for line in gateway.log_path.read_text(errors="replace").splitlines()
            if line.startswith("{")]
    (loaded,) = [doc for doc in docs if doc.get("event") == "models_loaded"]
    assert loaded["ready"] is True
    states = {(v["model"], v["version"]): v["state"] for v in loaded["versions"]}
    assert states[(MODEL, "1")] == "READY" and states[("breast-cancer-wide", "1")] == "READY"
    assert states[(MODEL, TAMPERED_VERSION)] == "UNAVAILABLE"
    assert loaded["message"].startswith("models loaded: model 'breast-cancer' version '1' READY, ")
    assert loaded["message"].endswith("; server ready")
    assert f"version '{TAMPERED_VERSION}' UNAVAILABLE" in loaded["message"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_matches_onnxruntime(client: httpclient.InferenceServerClient, dataset: np.ndarray,
                                   reference_outputs: dict[str, dict[str, np.ndarray]], binary: bool) -> None:
    rows = dataset[100:164]
    result = _infer(client, rows, binary=binary, request_id="req-42")
    response = result.get_response()
    assert response["model_name"] == MODEL
    assert response["model_version"] == "1"
    assert response["id"] == "req-42"
    expected = reference_outputs["1"]
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"][100:164])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"][100:164], atol=1e-6)


def test_pinned_version_answers_and_says_so(client: httpclient.InferenceServerClient, dataset: np.ndarray,
                                            reference_outputs: dict[str, dict[str, np.ndarray]]) -> None:
    result = _infer(client, dataset[:10], binary=False, version="2")
    assert result.get_response()["model_version"] == "2"
    np.testing.assert_array_equal(result.as_numpy("label"), reference_outputs["2"]["label"][:10])
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference_outputs["2"]["probabilities"][:10],
                               atol=1e-6)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_requested_outputs_are_honoured(client: httpclient.InferenceServerClient, dataset: np.ndarray,
                                        binary: bool) -> None:
    result = _infer(client, dataset[:3], binary=binary, outputs=["label"])
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names == ["label"]
    assert result.as_numpy("probabilities") is None
    assert result.as_numpy("label").shape == (3,)


def test_tampered_version_is_refused_not_served(client: httpclient.InferenceServerClient,
                                                dataset: np.ndarray) -> None:
    with pytest.raises(httpclient.InferenceServerException) as info:
        _infer(client, dataset[:1], binary=True, version=TAMPERED_VERSION)
    assert info.value.status() == "503"
    assert "SHA-256" in info.value.message() and "model.onnx" in info.value.message()
