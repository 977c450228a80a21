"""The warm-up seeds a latency model that predicts large batches, against a real Ray replica running ONNX Runtime.

The unit tests (test_latency_model.py) show the fit converges on synthetic timings; this one shows the warm-up
gives it the timings it needs on a real deployment, through the transports traffic takes. A sweep that stopped
at 256 rows, timed over the channel's inline frames where traffic's large batches go through shared memory, left
the champion's per-row cost at 0: it predicted 0.22 ms for a 16,384-row batch that took 2.35 ms (0.09x).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import pytest

from gateway.batcher import Batcher, BatchPolicy
from gateway.tensors import placeholder_inputs
from loadtests.bench_gpu import build_repository
from serving.batch_inputs import Arrays
from serving.direct_channel import DirectReplicas
from serving.ray_backend import RayServeBackend, ReplicaSettings
from serving.repository import scan_repository
from serving.shared_batch import Layout

LARGEST = 16384
HELD_OUT = (2000, 10000)
"""Batch sizes the sweep (powers of 4, then the largest) never runs."""
WITHIN = 2.5
"""The stated bound: each prediction within a factor of 2.5 of the median of 15 timed batches, either way. Three
timed batches per size on a 2-core box shared with Ray's own processes give a close fit, not a 5% one: 0.99-1.65x
of the medians in three runs of this test. Without the sweep to the largest batch this test found 3.2x at 2,000
rows, and the script in loadtests/README.md ("The latency model after warm-up") 0.09-0.56x at 4,096-16,384."""


def test_after_warm_up_the_model_predicts_held_out_batch_sizes_within_the_stated_bound(
        demo_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """And its large batches go as traffic's do, as shared-memory layouts over the direct channel."""
    layouts: list[bool] = []
    call_shared = DirectReplicas.call_shared

    async def counted(channel: DirectReplicas, layout: Layout, warm_up: bool = False) -> Arrays | None:
        layouts.append(warm_up)
        return await call_shared(channel, layout, warm_up)

    monkeypatch.setattr(DirectReplicas, "call_shared", counted)
    build_repository(demo_repository, tmp_path / "models", LARGEST, ("breast-cancer",))
    (entry,) = scan_repository(tmp_path / "models")
    assert entry.manifest is not None and entry.error is None
    manifest = entry.manifest
    backend = RayServeBackend(address=None, num_cpus=2, object_store_bytes=128 * 1024 * 1024)
    backend.start()
    try:
        backend.deploy([entry], {(entry.model, entry.version): ReplicaSettings(
            replicas=1, num_cpus=1, device="cpu", max_ongoing_requests=3)})

        async def predicted_and_measured() -> list[tuple[int, float, float]]:
            try:
                deployed = await backend.wait_ready(entry.model, entry.version, timeout_s=120)
                batcher = Batcher(entry.model, deployed.execute,
                                  BatchPolicy(max_batch_rows=LARGEST, max_wait_s=0.0, max_inflight=2))
                await batcher.warm_up(lambda rows: placeholder_inputs(manifest.inputs, rows), execute=deployed.warm_up)
                assert layouts == [True] * 10, layouts  # 4,096 and 16,384 rows (from 192 KiB): 2 untimed + 3 timed each
                found = []
                for rows in HELD_OUT:
                    inputs = [placeholder_inputs(manifest.inputs, rows)]
                    await deployed.execute(inputs)  # this size's first batch: not what the model is for
                    took = []
                    for _ in range(15):
                        started = time.monotonic()
                        await deployed.execute(inputs)
                        took.append(time.monotonic() - started)
                    found.append((rows, batcher.latency.mean(rows), statistics.median(took)))
                return found
            finally:
                await backend.stop_serve()

        for rows, predicted, measured in asyncio.run(predicted_and_measured()):
            assert 1 / WITHIN <= predicted / measured <= WITHIN, (rows, predicted, measured)
    finally:
        backend.stop_ray()

