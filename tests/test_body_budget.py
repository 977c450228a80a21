"""The per-process budget on request bytes held at once, and gRPC messages held against it.

The HTTP side is tested over a real socket in test_http_protocol.py; here the budget itself and a real gRPC
server in this process, whose stand-in deployment holds each request a while.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import numpy as np
import pytest

from gateway.body_budget import HELD, BodyBudget
from gateway.errors import Overloaded
from gateway.grpc_server import build_grpc_server
from gateway.proto import grpc_service_pb2 as pb
from gateway.proto import grpc_service_pb2_grpc as pb_grpc
from tests.test_tracing import MODEL, Deployment, make_service


def test_charges_add_up_per_request_and_a_refusal_counts_nothing() -> None:
    budget = BodyBudget(100)
    first: dict[str, Any] = {}
    second: dict[str, Any] = {}
    budget.charge(first, 60)
    budget.charge(first, 30)  # a chunk more, and its decompressed size: one request's total
    assert (budget.held, first[HELD]) == (90, 90)
    with pytest.raises(Overloaded, match=r"holding 90 bytes .* limit of 100 \(server.max_inflight_body_bytes\)"):
        budget.charge(second, 11)
    assert budget.held == 90 and HELD not in second
    budget.charge(second, 10)
    budget.release(first)
    budget.release(first)  # released once, however often asked
    budget.release({})  # a request whose body was never read
    assert budget.held == 10


def test_grpc_messages_past_the_budget_are_refused_until_the_held_one_is_answered() -> None:
    service = make_service(None, Deployment(delay_s=0.3))
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="x", datatype="FP32", shape=[64, 3])
    x = np.arange(192, dtype="<f4").reshape(64, 3)
    request.raw_input_contents.append(x.tobytes())
    size = request.ByteSize()
    budget = BodyBudget(size + size // 2)

    async def main() -> None:
        server, port = build_grpc_server(service, "127.0.0.1", 0, 1 << 20, budget=budget)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer  # type: ignore[no-untyped-call]
                first = asyncio.ensure_future(infer(request))
                deadline = time.monotonic() + 5
                while budget.held != size:
                    assert time.monotonic() < deadline, "the first message was never charged"
                    await asyncio.sleep(0.005)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await infer(request)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "max_inflight_body_bytes" in (refused.value.details() or "")
                assert dict(refused.value.trailing_metadata() or ())["retry-after"] == "1"
                answered = await first
                assert budget.held == 0
                again = await infer(request)
            for response in (answered, again):
                y = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(64, 3)
                np.testing.assert_array_equal(y, x * 2)
        finally:
            await server.stop(0)

    asyncio.run(main())
