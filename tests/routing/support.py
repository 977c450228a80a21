"""Shared by the routing and admin end-to-end tests: a gateway with five versions of one model, tokens
of every role, and helpers to change its routing and drive requests at it.

Versions: 1 (champion), 2, 3 (the deliberately bad one), 4 (a copy of 1 made slow: every batch
takes 60 ms more) and 5 (a copy of 1 that fails every request), the last two through the
config's ``version_faults``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth import digest, new_token
from loadtests.httpclient import FutureSink, HttpConnection, build_request
from tests.conftest import RunningGateway

MODEL = "breast-cancer"
INFER = f"/v2/models/{MODEL}/infer"
SLOW, FAILING = "4", "5"
SLOW_DELAY_MS = 60


class Tokens:
    admin, operator, viewer = new_token(), new_token(), new_token()


def routing_config(repository: Path, state: Path, http_port: int, grpc_port: int, extra: str = "") -> str:
    return f"""
server: {{host: 127.0.0.1, http_port: {http_port}, grpc_port: {grpc_port}}}
ray: {{num_cpus: 2}}
deployment: {{num_cpus: 0.25}}  # five versions' replicas fit into Ray's two CPUs
repository: {repository}
state: {{path: {state}}}
auth:
  tokens:
    - {{name: ada, role: admin, sha256: {digest(Tokens.admin)}}}
    - {{name: otto, role: operator, sha256: {digest(Tokens.operator)}}}
    - {{name: vera, role: viewer, sha256: {digest(Tokens.viewer)}}}
{extra}
models:
  {MODEL}:
    routing: {{champion: "1", weights: {{"1": 70, "2": 20, "3": 10}}}}
    version_faults:
      "{SLOW}": {{delay_ms: {SLOW_DELAY_MS}}}
      "{FAILING}": {{error_rate: 1.0}}
"""


# --------------------------------------------------------------------------- helpers


def admin(gateway: RunningGateway, token: str = Tokens.admin) -> httpx.Client:
    return httpx.Client(base_url=f"http://{gateway.http_url}/admin/v1", timeout=10,
                        headers={"Authorization": f"Bearer {token}"})


def set_routing(gateway: RunningGateway, reason: str = "test", **routing: Any) -> dict[str, Any]:
    """Replace the routing (champion 1 unless given) through the admin API, based on the current revision."""
    with admin(gateway, Tokens.operator) as client:
        revision = client.get(f"/models/{MODEL}/routing").json()["revision"]
        response = client.put(f"/models/{MODEL}/routing", json={
            "revision": revision, "routing": {"champion": "1", **routing}, "reason": reason})
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


def body(rows: np.ndarray, routing_key: str | None = None) -> bytes:
    doc: dict[str, Any] = {"inputs": [{"name": "features", "datatype": "FP32", "shape": list(rows.shape),
                                       "data": rows.ravel().tolist()}]}
    if routing_key is not None:
        doc["parameters"] = {"routing_key": routing_key}
    return json.dumps(doc).encode()


def fire(gateway: RunningGateway, requests: list[tuple[bytes, dict[str, str]]],
         connections: int = 16) -> list[tuple[int, dict[str, Any]]]:
    """Send every (body, headers) request over ``connections`` keep-alive connections; (status, JSON) in order.

    The load generator's lean client: 20,000 requests through httpx would cost more CPU than the gateway.
    """
    host, port = gateway.http_url.split(":")

    async def run() -> list[tuple[int, dict[str, Any]]]:
        loop = asyncio.get_running_loop()
        sink = FutureSink()
        results: list[tuple[int, dict[str, Any]] | None] = [None] * len(requests)
        queue = iter(enumerate(requests))

        async def worker() -> None:
            conn = (await loop.create_connection(lambda: HttpConnection(sink), host, int(port)))[1]
            try:
                for index, (payload, headers) in queue:
                    sink.pending[conn] = future = loop.create_future()
                    conn.send(build_request("POST", gateway.http_url, INFER, payload,
                                            {"Content-Type": "application/json", **headers}))
                    status, answer = await future
                    results[index] = (status, json.loads(answer))
            finally:
                conn.close()

        await asyncio.gather(*(worker() for _ in range(connections)))
        return [r for r in results if r is not None]

    return asyncio.run(run())


def metric(gateway: RunningGateway, name: str, **labels: str) -> float:
    text = httpx.get(f"http://{gateway.http_url}/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def wait_for_metric(gateway: RunningGateway, name: str, at_least: float, timeout_s: float = 30,
                    **labels: str) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        value = metric(gateway, name, **labels)
        if value >= at_least or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def versions_of(results: list[tuple[int, dict[str, Any]]]) -> Counter[str]:
    assert all(status == 200 for status, _ in results), Counter(status for status, _ in results)
    return Counter(doc["model_version"] for _, doc in results)
