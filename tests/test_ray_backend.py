"""The serving backend on a real local Ray: large batches travel both ways.

Batches go to replicas by value over Serve's replica gRPC channel, which Serve
caps at 4 MiB by default; a batch of a few image-sized rows exceeds that. This
test would fail with RESOURCE_EXHAUSTED ("Received message larger than max")
without the limit the backend sets.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from serving.manifest import Manifest, TensorSpec, write_manifest
from serving.ray_backend import RayServeBackend, ReplicaSettings
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


def test_batches_larger_than_serves_grpc_default_travel_both_ways(tmp_path: Path) -> None:
    entries = scan_repository(_identity_repository(tmp_path))
    assert [e.error for e in entries] == [None]
    backend = RayServeBackend(address=None, num_cpus=1, object_store_bytes=128 * 1024 * 1024)
    backend.start()
    try:
        backend.deploy(entries, {("echo", "1"): ReplicaSettings(replicas=1, num_cpus=0.5, device="cpu",
                                                                  max_ongoing_requests=2)})

        async def roundtrip() -> tuple[np.ndarray, str]:
            try:
                deployed = await backend.wait_ready("echo", "1", timeout_s=120)
                batch = np.random.default_rng(1).random((2, WIDTH), dtype=np.float32)  # 12 MB each way
                outputs = await deployed.execute({"x": batch})
                np.testing.assert_array_equal(outputs["y"], batch)
                return outputs["y"], deployed.device
            finally:
                await backend.stop_serve()

        echoed, device = asyncio.run(roundtrip())
        assert echoed.shape == (2, WIDTH)
        assert device == "cpu"
    finally:
        backend.stop_ray()
