"""Batching and deadlines end to end: the real gateway, a real local Ray, ONNX Runtime, real HTTP clients.

Tolerance the design states (docs/architecture.md, "Deadlines"): the gateway
answers or cuts off a request by its deadline; the test allows
``CLIENT_TOLERANCE_S`` on top for the client's own work on a shared 2-core
machine, where it competes for the CPU with the gateway and Ray. (Retry-After
on 429 is checked in test_http_errors.py; this client reads status and body.)
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import statistics
import time
from collections import Counter
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadtests.httpclient import FutureSink, HttpConnection, build_request
from tests.conftest import RunningGateway

MODEL, VERSION = "breast-cancer", "2"
INFER = f"/v2/models/{MODEL}/versions/{VERSION}/infer"
CLIENT_TOLERANCE_S = 0.03
BURSTS = [(40, 16, (30, 200)), (60, 16, (30, 200)), (300, 64, (10, 10)), (40, 16, (30, 200))]
"""(requests, most rows per request, range of timeouts in ms) of each burst, in order."""
BIG_BURST = 2


def _body(rows: np.ndarray, timeout_us: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "features", "datatype": "FP32", "shape": list(rows.shape),
                                        "data": rows.ravel().tolist()}]}
    if timeout_us is not None:
        body["parameters"] = {"timeout": timeout_us}
    return body


def _scrape(gateway: RunningGateway, version: str = VERSION) -> dict[str, float]:
    text = httpx.get(f"http://{gateway.http_url}/metrics").text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels == {"model": MODEL, "version": version}:  # per-version series only, no reasons
                values[sample.name] = sample.value
    return values


def test_a_lone_request_pays_no_batching_wait(gateway: RunningGateway, dataset: np.ndarray) -> None:
    """Latency of a lone request vs its own parts, measured in this run: the model call (the batch
    execution the gateway timed for exactly these requests) and the gateway's fixed HTTP cost (a
    metadata request, which never reaches a model)."""
    base = f"http://{gateway.http_url}"
    with httpx.Client(base_url=base, timeout=10) as client:
        payload = _body(dataset[:1])
        client.post(INFER, json=payload).raise_for_status()
        before = _scrape(gateway)
        infer_s, metadata_s = [], []
        for _ in range(25):
            time.sleep(0.02)  # idle in between: each request arrives alone
            started = time.perf_counter()
            client.get(f"/v2/models/{MODEL}/versions/{VERSION}").raise_for_status()
            metadata_s.append(time.perf_counter() - started)
            time.sleep(0.02)
            started = time.perf_counter()
            client.post(INFER, json=payload).raise_for_status()
            infer_s.append(time.perf_counter() - started)
        after = _scrape(gateway)
    batches = after["mlgate_batch_rows_count"] - before["mlgate_batch_rows_count"]
    assert batches == 25  # each request went as its own batch
    execution_s = (after["mlgate_batch_execution_seconds_sum"] - before["mlgate_batch_execution_seconds_sum"]) / 25
    queue_wait_s = (after["mlgate_queue_wait_seconds_sum"] - before["mlgate_queue_wait_seconds_sum"]) / 25
    assert queue_wait_s < 0.0005, f"lone requests waited {queue_wait_s * 1e3:.2f} ms in the batcher"
    bound_s = execution_s + statistics.median(metadata_s) + 0.002
    assert statistics.median(infer_s) <= bound_s, (
        f"lone request median {statistics.median(infer_s) * 1e3:.2f} ms > model call {execution_s * 1e3:.2f} ms "
        f"+ gateway fixed cost {statistics.median(metadata_s) * 1e3:.2f} ms + 2 ms")


class TimedSink(FutureSink):
    """Notes when each connection's answer arrived, before its future wakes anyone: awaiting the answers in
    order would charge a quick one with the wait for a slower one sent before it (a longer timeout)."""

    def __init__(self) -> None:
        super().__init__()
        self.answered_at: dict[HttpConnection, float] = {}

    def on_response(self, conn: HttpConnection, status: int, body: bytes) -> None:
        self.answered_at[conn] = time.perf_counter()
        super().on_response(conn, status, body)


async def _bursts(host: str, port: int,
                  dataset: np.ndarray) -> list[tuple[int, int, int, int, float, int, bytes]]:
    """Quiet gaps, then bursts: small ones the gateway can absorb, and one far beyond what it can
    answer in time (300 requests of 64 rows, 10 ms each), so that refusals must happen."""
    rng = random.Random(11)
    loop = asyncio.get_running_loop()
    sink = TimedSink()
    connections = [(await loop.create_connection(lambda: HttpConnection(sink), host, port))[1] for _ in range(300)]
    results = []
    try:
        for burst, (count, max_rows, timeouts_ms) in enumerate(BURSTS):
            requests = []  # encoded before any is sent, so that no request's clock runs while others encode
            for _ in range(count):
                rows = rng.randint(1, max_rows)
                start = rng.randint(0, len(dataset) - rows)
                timeout_us = 1000 * rng.randint(*timeouts_ms)
                body = json.dumps(_body(dataset[start:start + rows], timeout_us)).encode()
                request = build_request("POST", f"{host}:{port}", INFER, body, {"Content-Type": "application/json"})
                requests.append((request, start, rows, timeout_us))
            futures, sent = [], []
            for conn, (request, *_) in zip(connections, requests, strict=False):
                sink.pending[conn] = future = loop.create_future()
                conn.send(request)
                # Each request's clock starts once it is written: writing 300 requests of 64 rows takes the
                # client itself a while, and a deadline cannot run before its request is sent.
                sent.append(time.perf_counter())
                futures.append(future)
            for conn, future, sent_at, (_, start, rows, timeout_us) in zip(connections, futures, sent, requests,
                                                                           strict=False):
                status, body = await future
                results.append((burst, start, rows, timeout_us, sink.answered_at.pop(conn) - sent_at, status, body))
            await asyncio.sleep(0.3)
    finally:
        for conn in connections:
            conn.close()
    return results


def test_bursts_get_their_own_rows_in_time_or_a_clear_refusal(
    gateway: RunningGateway, dataset: np.ndarray, reference_outputs: dict[str, dict[str, np.ndarray]]
) -> None:
    host, port = gateway.http_url.split(":")
    gc.collect()
    gc.freeze()  # a full collection over this process's heap (sklearn, ONNX, Ray...) would stall the client
    try:
        results = asyncio.run(_bursts(host, int(port), dataset))
    finally:
        gc.unfreeze()
    expected = reference_outputs[VERSION]
    outcomes: Counter[tuple[int, int]] = Counter()  # (burst, status)
    small_burst_errors = []
    for burst, start, rows, timeout_us, latency_s, status, body in results:
        outcomes[burst, status] += 1
        answer = json.loads(body)
        if status != 200 and burst != BIG_BURST:
            small_burst_errors.append(answer["error"])
        if status == 200:
            outputs = {o["name"]: o for o in answer["outputs"]}
            assert outputs["label"]["shape"] == [rows]
            np.testing.assert_array_equal(outputs["label"]["data"], expected["label"][start:start + rows])
            assert latency_s <= timeout_us / 1e6 + CLIENT_TOLERANCE_S, (
                f"answered after {latency_s * 1e3:.1f} ms, deadline {timeout_us / 1e3:.0f} ms")
        elif status == 429:
            assert "cannot answer within" in answer["error"]
        else:
            assert status == 504, body
            assert "deadline" in answer["error"]
    assert not small_burst_errors, (dict(outcomes), small_burst_errors[:5])  # the small bursts were all served
    assert outcomes[BIG_BURST, 429] + outcomes[BIG_BURST, 504] > 0, dict(outcomes)  # the big one could not all be


@pytest.mark.parametrize("as_json", [False, True])
def test_status_command_shows_what_the_metrics_say(gateway: RunningGateway, as_json: bool) -> None:
    import subprocess
    import sys

    command = [sys.executable, "-m", "mlgate.cli", "status", "--url", f"http://{gateway.http_url}"]
    output = subprocess.run(command + (["--json"] if as_json else []), capture_output=True, text=True,
                            timeout=60, check=True).stdout
    metrics = _scrape(gateway)  # version 2: the tests above sent it traffic
    if as_json:
        row = next(s for s in json.loads(output) if s["model"] == MODEL and s["version"] == VERSION)
        assert row["state"] == "READY"
        assert row["batches"] == metrics["mlgate_batch_rows_count"] > 0
        assert row["rows"] == metrics["mlgate_batch_rows_sum"]
        # every executed batch went one way, here over the direct channel to the replica on this node
        assert row["transports"]["direct"] == row["batches"] == sum(row["transports"].values())
    else:
        traffic, batching = output.split("\n\n")
        assert next(ln for ln in traffic.splitlines() if ln.split()[:2] == [MODEL, "1"]).split()[3] == "champion"
        line = next(ln for ln in batching.splitlines() if ln.split()[:2] == [MODEL, VERSION])
        assert int(line.split()[2]) == metrics["mlgate_batch_rows_count"]
        assert line.split()[-1] == f"direct={int(metrics['mlgate_batch_rows_count'])}"
        assert "UNAVAILABLE" in traffic  # the tampered version is listed with its state
