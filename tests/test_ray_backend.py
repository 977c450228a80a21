"""The serving backend on a real local Ray: large batches travel both ways, all four ways a batch can go.

Large batches go to a replica on the same node through shared memory
(``serving.shared_batch``), their layout over the direct channel
(``serving.direct_channel``) or through Ray, and smaller ones stream over that
channel; without either, small batches go by value over Serve's
replica gRPC channel, which Serve caps at 4 MiB by default, and batches from
``BY_REFERENCE_BYTES`` up through Ray's object store, where the replica
receives read-only arrays. The by-value round trip below forces a 12 MB batch
over the channel: it would fail with RESOURCE_EXHAUSTED ("Received message
larger than max") without the limit the backend sets.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper

from serving import ray_backend, shared_batch
from serving.direct_channel import ChannelDown, DirectReplicas, channel_directory
from serving.manifest import Manifest, TensorSpec, write_manifest
from serving.ray_backend import RayServeBackend, ReplicaSettings, sends_by_reference
from serving.repository import scan_repository, sha256_file

WIDTH = 1_500_000  # one FP32 row = 6 MB


def _identity_repository(root: Path, width: int = WIDTH) -> Path:
    version_dir = root / "echo" / "1"
    version_dir.mkdir(parents=True)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "echo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (version_dir / "model.onnx").write_bytes(model.SerializeToString())
    spec = (-1, width)
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


async def _channel_down(channel: DirectReplicas, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
    raise ChannelDown("the replica's socket refused the connection")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """How each batch the backend handed the direct channel ended (the real calls run): "call: answered" when
    the replica answered a batch sent over the channel, "call_shared: answered" one whose layout was sent over it,
    else the method and the exception's name (the batch then went through Ray)."""
    made: list[str] = []

    def counted(method: str) -> Callable[..., Awaitable[Any]]:
        direct_call = getattr(DirectReplicas, method)

        async def call(channel: DirectReplicas, *args: Any, **kwargs: Any) -> Any:
            try:
                outputs = await direct_call(channel, *args, **kwargs)
            except Exception as exc:
                made.append(f"{method}: {type(exc).__name__}")
                raise
            made.append(f"{method}: answered")
            return outputs

        return call

    for method in ("call", "call_shared"):
        monkeypatch.setattr(DirectReplicas, method, counted(method))
    return made


def test_large_batches_travel_both_ways_by_value_and_by_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  calls: list[str]) -> None:
    entries = scan_repository(_identity_repository(tmp_path))
    assert [e.error for e in entries] == [None]
    backend = RayServeBackend(address=None, num_cpus=1, object_store_bytes=128 * 1024 * 1024)
    backend.start()
    try:
        backend.deploy(entries, {("echo", "1"): ReplicaSettings(replicas=1, num_cpus=0.5, device="cpu",
                                                                  max_ongoing_requests=2)})

        batch = np.random.default_rng(1).random((2, WIDTH), dtype=np.float32)  # 12 MB each way
        assert batch.nbytes >= ray_backend.SHARED_MEMORY_BYTES and sends_by_reference(batch.nbytes)

        took: list[str] = []
        halves = [{"x": batch[:1]}, {"x": batch[1:]}]  # two requests' rows: every way joins them in order

        async def roundtrips() -> tuple[dict[str, np.ndarray], list[str], str]:
            try:
                deployed = await backend.wait_ready("echo", "1", timeout_s=120, took=took.append)
                echoed = {"shared memory": (await deployed.execute(halves))["y"]}
                segments = _segments()  # the pool keeps its segment for the next batch
                echoed["shared memory, reused"] = (await deployed.execute(halves[::-1]))["y"][::-1]
                assert _segments() == segments
                # the layouts went over the direct channel, the bytes through the segment
                assert calls == ["call_shared: answered"] * 2
                monkeypatch.setattr(ray_backend, "SHARED_OVER_CHANNEL_BYTES", 2 * batch.nbytes)
                monkeypatch.setattr(ray_backend, "DIRECT_MAX_BYTES", 2 * batch.nbytes)
                echoed["direct channel"] = (await deployed.execute(halves))["y"]
                assert calls[2:] == ["call: answered"]  # by the replica, over the channel, not by Ray after a failure
                # As when the replica died mid-call: the channel gives up on the layout, its segment is dropped (the
                # replica might still write into it), and the layout of a fresh one goes through Ray.
                monkeypatch.setattr(DirectReplicas, "call_shared", _channel_down)
                monkeypatch.setattr(ray_backend, "SHARED_OVER_CHANNEL_BYTES", 0)
                echoed["shared memory, layout through Ray"] = (await deployed.execute(halves))["y"]
                assert len(_segments()) == 1 and _segments() != segments
                # The channel gives up on the batch itself, and Ray carries it.
                monkeypatch.setattr(DirectReplicas, "call", _channel_down)
                monkeypatch.setattr(ray_backend, "SHARED_OVER_CHANNEL_BYTES", 2 * batch.nbytes)
                monkeypatch.setattr(ray_backend, "SHARED_MEMORY_BYTES", 2 * batch.nbytes)
                echoed["by reference"] = (await deployed.execute(halves))["y"]
                monkeypatch.setattr(ray_backend, "BY_REFERENCE_BYTES", 2 * batch.nbytes)
                echoed["by value"] = (await deployed.execute(halves))["y"]
                return echoed, segments, deployed.device
            finally:
                await backend.stop_serve()

        echoed, segments, device = asyncio.run(roundtrips())
        for way, outputs in echoed.items():
            np.testing.assert_array_equal(outputs, batch, err_msg=way)
        assert took == ["shared_direct", "shared_direct", "direct", "shared_ray", "by_reference", "by_value"]
        assert len(segments) == 1
        assert _segments() == []  # stopping unlinks them
        assert device == "cpu"
    finally:
        backend.stop_ray()


def test_a_killed_replica_is_replaced_and_the_direct_channel_finds_the_new_one(tmp_path: Path,
                                                                              calls: list[str]) -> None:
    """SIGKILL leaves the replica's socket behind and breaks the gateway's connection: the batch in hand goes
    through Ray (failing until Serve has replaced the replica, as it would without the channel), the dead
    socket is removed, and batches go over the channel again to the replacement."""
    entries = scan_repository(_identity_repository(tmp_path, width=4))
    backend = RayServeBackend(address=None, num_cpus=1, object_store_bytes=128 * 1024 * 1024)
    backend.start()
    batch = {"x": np.arange(8, dtype=np.float32).reshape(2, 4)}
    try:
        backend.deploy(entries, {("echo", "1"): ReplicaSettings(replicas=1, num_cpus=0.5, device="cpu",
                                                                  max_ongoing_requests=2)})

        async def scenario() -> tuple[Path, list[Path], int]:
            try:
                deployed = await backend.wait_ready("echo", "1", timeout_s=120)
                np.testing.assert_array_equal((await deployed.execute([batch]))["y"], batch["x"])
                assert calls == ["call: answered"], calls
                directory = channel_directory(backend.gcs_address(), ray_backend.app_name("echo", "1"))
                (killed,) = directory.glob("*.sock")
                os.kill(int(killed.stem), signal.SIGKILL)  # sockets are named after their replica's pid
                failures, deadline = 0, time.monotonic() + 120
                while True:
                    assert time.monotonic() < deadline, f"no direct answer from a replacement ({failures} failures)"
                    before = len(calls)
                    try:
                        outputs = await asyncio.wait_for(deployed.execute([batch]), 30)
                    except Exception:  # the replica is dead and not replaced yet
                        failures += 1
                        await asyncio.sleep(0.5)
                        continue
                    np.testing.assert_array_equal(outputs["y"], batch["x"])
                    sockets = sorted(directory.glob("*.sock"))
                    if "call: answered" in calls[before:] and killed not in sockets and sockets:
                        return killed, sockets, failures
                    await asyncio.sleep(0.5)
            finally:
                await backend.stop_serve()

        killed, sockets, _ = asyncio.run(scenario())
        assert [s.name for s in sockets] != [killed.name] and len(sockets) == 1
    finally:
        backend.stop_ray()


def test_a_replica_no_node_can_hold_is_refused_at_once_with_the_reason(tmp_path: Path) -> None:
    """Ray keeps such a replica pending forever: the version was "not ready after 120 s", with no reason why."""
    entries = scan_repository(_identity_repository(tmp_path, width=4))
    backend = RayServeBackend(address=None, num_cpus=1, object_store_bytes=128 * 1024 * 1024)
    backend.start()
    try:
        backend.deploy(entries, {("echo", "1"): ReplicaSettings(replicas=1, num_cpus=4, device="cpu",
                                                                  max_ongoing_requests=2)})

        async def wait() -> float:
            started = time.monotonic()
            with pytest.raises(RuntimeError) as refused:
                await backend.wait_ready("echo", "1", timeout_s=60)
            assert str(refused.value) == ("a replica needs 4 CPU (deployment num_cpus) but no node of the Ray "
                                          "cluster has more than 1")
            return time.monotonic() - started

        assert asyncio.run(wait()) < 5
        assert ray_backend.app_name("echo", "1") not in ray_backend.serve.status().applications  # never deployed
    finally:
        backend.stop_ray()
