"""How a batch travels from the gateway to a replica: the direct channel (a Unix socket), shared memory (its layout
over that channel or through Ray), by value (Serve's gRPC channel), by reference (Ray's object store), timed side by
side through mlgate's own backend on a real local Ray.

Usage::

    python -m loadtests.bench_transport [--rows 1,64,1024,4096,16384,65536] [--calls 40]

The model is an Identity over 30 FP32 features, so the time is the transport's, not the model's (outputs
are as large as inputs). Each figure is the median round trip of ``--calls`` calls after 5 untimed ones, with
the gateway process's CPU per call beside it; the ways alternate per batch size. Version 1 of the model has
the direct channel, version 2 (the same file) not, so that the ways through Ray can be timed. The thresholds
``SHARED_OVER_CHANNEL_BYTES``, ``SHARED_MEMORY_BYTES``, ``DIRECT_MAX_BYTES`` and ``BY_REFERENCE_BYTES`` in
serving/ray_backend.py are set from these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from serving import ray_backend
from serving.manifest import Manifest, TensorSpec, write_manifest
from serving.ray_backend import DeployedVersion, RayServeBackend, ReplicaSettings
from serving.repository import scan_repository, sha256_file

WIDTH = 30
NEVER = 1 << 62
WAYS = {"direct channel": ("1", NEVER, NEVER, NEVER, NEVER),
        "shared memory, layout over the channel": ("1", 0, NEVER, NEVER, NEVER),
        "shared memory, layout through Ray": ("2", NEVER, 0, NEVER, NEVER),
        "by value": ("2", NEVER, NEVER, NEVER, NEVER),
        "by reference": ("2", NEVER, NEVER, NEVER, 0)}
"""(version, SHARED_OVER_CHANNEL_BYTES, SHARED_MEMORY_BYTES, DIRECT_MAX_BYTES, BY_REFERENCE_BYTES) that force each
way; version 2 has no channel, so the first threshold and the fourth do not apply to it."""


def identity_repository(root: Path, max_rows: int) -> Path:
    for name in ("1", "2"):
        identity_version(root / "echo" / name, max_rows)
    return root


def identity_version(version: Path, max_rows: int) -> None:
    version.mkdir(parents=True)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "echo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, WIDTH])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (version / "model.onnx").write_bytes(model.SerializeToString())
    spec = (TensorSpec(name="x", datatype="FP32", shape=(-1, WIDTH)),)
    write_manifest(Manifest(name="echo", version=version.name, sha256=sha256_file(version / "model.onnx"),
                            inputs=spec, outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, WIDTH)),),
                            max_batch_rows=max_rows), version / "manifest.json")


async def time_ways(versions: dict[str, DeployedVersion], rows_list: list[int], calls: int) -> list[str]:
    lines = ["| rows | KiB | " + " | ".join(f"{way}: ms (CPU ms)" for way in WAYS) + " |",
             "|---:|---:|" + "---:|" * len(WAYS)]
    for rows in rows_list:
        batch = {"x": np.random.default_rng(rows).random((rows, WIDTH), dtype=np.float32)}
        cells = []
        for version, *thresholds in WAYS.values():
            deployed = versions[version]
            (ray_backend.SHARED_OVER_CHANNEL_BYTES, ray_backend.SHARED_MEMORY_BYTES, ray_backend.DIRECT_MAX_BYTES,
             ray_backend.BY_REFERENCE_BYTES) = thresholds
            for _ in range(5):
                np.testing.assert_array_equal((await deployed.execute([batch]))["y"], batch["x"])
            times = []
            cpu = time.process_time()
            for _ in range(calls):
                t0 = time.perf_counter()
                await deployed.execute([batch])
                times.append(time.perf_counter() - t0)
            cpu_ms = 1e3 * (time.process_time() - cpu) / calls
            cells.append(f"{1e3 * float(np.median(times)):.2f} ({cpu_ms:.2f})")
        lines.append(f"| {rows} | {batch['x'].nbytes / 1024:,.1f} | " + " | ".join(cells) + " |")
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_transport", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=lambda s: [int(x) for x in s.split(",")], default=[1, 64, 1024, 4096, 16384, 65536])
    p.add_argument("--calls", type=int, default=40)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mlgate-bench-transport-") as tmp:
        entries = scan_repository(identity_repository(Path(tmp), max(args.rows)))
        backend = RayServeBackend(address=None, num_cpus=2, object_store_bytes=256 << 20)
        backend.start()
        try:
            backend.deploy(entries, {("echo", version): ReplicaSettings(
                replicas=1, num_cpus=0.5, device="cpu", max_ongoing_requests=2, direct_channel=version == "1",
            ) for version in ("1", "2")})

            async def run() -> list[str]:
                try:
                    versions = {v: await backend.wait_ready("echo", v, timeout_s=120) for v in ("1", "2")}
                    return await time_ways(versions, args.rows, args.calls)
                finally:
                    await backend.stop_serve()

            print("\n".join(asyncio.run(run())))
        finally:
            backend.stop_ray()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
