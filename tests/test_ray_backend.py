"""The serving backend on a real local Ray: large batches travel both ways, all three ways a batch can go.

Large batches go to a replica on the same node through shared memory
(``serving.shared_batch``); without it, small batches go by value over Serve's
replica gRPC channel, which Serve caps at 4 MiB by default, and batches from
``BY_REFERENCE_BYTES`` up through Ray's object store, where the replica
receives read-only arrays. The by-value round trip below forces a 12 MB batch
over the channel: it would fail with RESOURCE_EXHAUSTED ("Received message
larger than max") without the limit the backend sets.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from serving import ray_backend, shared_batch
from serving.manifest import Manifest, TensorSpec, write_manifest
from serving.ray_backend import RayServeBackend, ReplicaSettings, sends_by_reference
from serving.repository import scan_repository, sha256_file

WIDTH = 1_500_000  # one FP32 row = 6 MB


def _identity_repository(root: Path) -> Path:
    version_dir = root / "echo" / "1"
    version_dir.mkdir(parents=True)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "echo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, WIDTH])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (version_dir / "model.onnx").write_bytes(model.SerializeToString())
    spec = (-1, WIDTH)
    write_manifest(Manifest(
        name="echo", version="1", sha256=sha256_file(version_dir / "model.onnx"),
        inputs=(TensorSpec(name="x", datatype="FP32", shape=spec),),
        outputs=(TensorSpec(name="y", datatype="FP32", shape=spec),),
    ), version_dir / "manifest.json")
    return root


def _segments() -> list[str]:
    """This process's shared-memory segments."""
    return sorted(p.name for p in shared_batch.SHM_DIR.glob(shared_batch.segment_prefix(os.getpid()) + "*"))


def test_batches_go_by_reference_from_the_threshold_up() -> None:
    assert not sends_by_reference(ray_backend.BY_REFERENCE_BYTES - 1)
    assert sends_by_reference(ray_backend.BY_REFERENCE_BYTES)


def test_large_batches_travel_both_ways_by_value_and_by_reference(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    entries = scan_repository(_identity_repository(tmp_path))
    assert [e.error for e in entries] == [None]
    backend = RayServeBackend(address=None, num_cpus=1, object_store_bytes=128 * 1024 * 1024)
    backend.start()
    try:
        backend.deploy(entries, {("echo", "1"): ReplicaSettings(replicas=1, num_cpus=0.5, device="cpu",
                                                                  max_ongoing_requests=2)})

        batch = np.random.default_rng(1).random((2, WIDTH), dtype=np.float32)  # 12 MB each way
        assert batch.nbytes >= ray_backend.SHARED_MEMORY_BYTES and sends_by_reference(batch.nbytes)

        async def roundtrips() -> tuple[dict[str, np.ndarray], list[str], str]:
            try:
                deployed = await backend.wait_ready("echo", "1", timeout_s=120)
                echoed = {"shared memory": (await deployed.execute({"x": batch}))["y"]}
                segments = _segments()  # the pool keeps its segment for the next batch
                echoed["shared memory, reused"] = (await deployed.execute({"x": batch[::-1].copy()}))["y"][::-1]
                assert _segments() == segments
                monkeypatch.setattr(ray_backend, "SHARED_MEMORY_BYTES", 2 * batch.nbytes)
                echoed["by reference"] = (await deployed.execute({"x": batch}))["y"]
                monkeypatch.setattr(ray_backend, "BY_REFERENCE_BYTES", 2 * batch.nbytes)
                echoed["by value"] = (await deployed.execute({"x": batch}))["y"]
                return echoed, segments, deployed.device
            finally:
                await backend.stop_serve()

        echoed, segments, device = asyncio.run(roundtrips())
        for way, outputs in echoed.items():
            np.testing.assert_array_equal(outputs, batch, err_msg=way)
        assert len(segments) == 1
        assert _segments() == []  # stopping unlinks them
        assert device == "cpu"
    finally:
        backend.stop_ray()
