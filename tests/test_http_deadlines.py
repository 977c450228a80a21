"""A request's ``timeout`` counts from when its first bytes arrived, not from when its handler ran.

``OipHttpApp`` is driven over ASGI with the scope uvicorn's stamping protocol
(``gateway.http_protocol``) builds, a real ``Batcher`` and an in-process stand-in
for the deployment (as in test_tracing.py); the stamping itself runs in every
end-to-end test (test_batching_e2e.py's bursts depend on it).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import orjson

from gateway.http_app import OipHttpApp
from gateway.http_protocol import RECEIVED_AT
from serving.batch_inputs import Arrays, Parts
from telemetry.metrics import REGISTRY
from tests.test_tracing import MODEL, Deployment, make_service, post

INFER = f"/v2/models/{MODEL}/infer"


class CountingDeployment(Deployment):
    def __init__(self, delay_s: float) -> None:
        super().__init__(delay_s)
        self.batches = 0

    async def __call__(self, parts: Parts) -> Arrays:
        self.batches += 1
        return await super().__call__(parts)


async def _post(app: OipHttpApp, timeout_us: int, arrived_s_ago: float) -> tuple[int, dict[str, Any]]:
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}],
                         "parameters": {"timeout": timeout_us}})
    status, _, answer = await post(app, INFER, body, extra_scope={RECEIVED_AT: time.monotonic() - arrived_s_ago})
    return status, answer


def test_a_request_whose_budget_went_before_its_handler_ran_is_refused_at_once() -> None:
    deployment = CountingDeployment(delay_s=0.001)
    app = OipHttpApp(make_service(None, deployment), 1 << 20)
    status, body = asyncio.run(_post(app, timeout_us=10_000, arrived_s_ago=0.05))
    assert status == 429
    assert "cannot answer within the request's timeout: none of it was left" in body["error"]
    assert deployment.batches == 0


def test_the_batcher_counts_the_deadline_from_the_arrival() -> None:
    # 40 ms of budget, 20 of them gone: a 30 ms batch is too late for what is left, not for the whole.
    outcomes = []
    for arrived_s_ago in (0.02, 0.0):
        app = OipHttpApp(make_service(None, CountingDeployment(delay_s=0.03)), 1 << 20)
        outcomes.append(asyncio.run(_post(app, timeout_us=40_000, arrived_s_ago=arrived_s_ago)))
    (late_status, late_body), (fresh_status, fresh_body) = outcomes
    assert late_status == 504 and "before it was answered" in late_body["error"], late_body
    assert fresh_status == 200, fresh_body
    np.testing.assert_array_equal(fresh_body["outputs"][0]["data"], [2.0, 4.0, 6.0])


class StallingDeployment(Deployment):
    """Answers, then holds the event loop: the batcher gets its batch back after the caller's deadline, the way
    a gateway whose loop is busy decoding a burst resumes its callers late."""

    def __init__(self, stall_s: float) -> None:
        super().__init__(0.0)
        self.stall_s = stall_s

    async def __call__(self, parts: Parts) -> Arrays:
        outputs = await super().__call__(parts)
        time.sleep(self.stall_s)
        return outputs


def test_an_answer_that_comes_back_after_the_deadline_is_not_sent_as_a_success() -> None:
    """It is counted as an expired refusal too: the 504s callers got and the refusals by reason differed."""
    service = make_service(None, StallingDeployment(stall_s=0.03), metrics=True)
    expired = {"model": MODEL, "version": "1", "reason": "expired"}
    before = REGISTRY.get_sample_value("mlgate_batcher_rejections_total", expired) or 0.0
    status, body = asyncio.run(_post(OipHttpApp(service, 1 << 20), timeout_us=10_000, arrived_s_ago=0.0))
    assert status == 504, body
    assert "deadline passed" in body["error"] and "before its answer could be sent" in body["error"], body
    assert REGISTRY.get_sample_value("mlgate_batcher_rejections_total", expired) == before + 1
