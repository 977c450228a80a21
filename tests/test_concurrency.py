"""500 concurrent requests with 1-64 rows each, batched together across the Ray hop, each get their own rows back."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import tritonclient.http.aio as aioclient

from tests.conftest import RunningGateway


async def _one(client: aioclient.InferenceServerClient, dataset: np.ndarray, start: int, rows: int,
               version: str, binary: bool) -> tuple[int, int, str, np.ndarray, np.ndarray, str]:
    features = aioclient.InferInput("features", [rows, 30], "FP32")
    features.set_data_from_numpy(dataset[start:start + rows], binary_data=binary)
    outputs = [aioclient.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "label")]
    result = await client.infer("breast-cancer", [features], model_version=version, outputs=outputs)
    return (start, rows, version, result.as_numpy("label"), result.as_numpy("probabilities"),
            result.get_response()["model_version"])


async def _fire(url: str, dataset: np.ndarray, count: int) -> list[tuple[int, int, str, np.ndarray, np.ndarray, str]]:
    rng = random.Random(7)
    client = aioclient.InferenceServerClient(url, conn_limit=count)
    try:
        jobs = []
        for i in range(count):
            rows = rng.randint(1, 64)
            start = rng.randint(0, len(dataset) - rows)
            jobs.append(_one(client, dataset, start, rows, rng.choice(["", "2"]), binary=i % 2 == 0))
        return await asyncio.gather(*jobs)
    finally:
        await client.close()


def test_500_concurrent_mixed_requests_get_their_own_rows(
    gateway: RunningGateway, dataset: np.ndarray, reference_outputs: dict[str, dict[str, np.ndarray]]
) -> None:
    results = asyncio.run(_fire(gateway.http_url, dataset, 500))
    assert len(results) == 500
    for start, rows, version, labels, probabilities, answered_by in results:
        expected = reference_outputs[version or "1"]
        assert answered_by == (version or "1")
        assert labels.shape == (rows,)
        np.testing.assert_array_equal(labels, expected["label"][start:start + rows])
        np.testing.assert_allclose(probabilities, expected["probabilities"][start:start + rows], atol=1e-6)
