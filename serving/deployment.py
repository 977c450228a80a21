"""The Ray Serve deployment that runs one model version with ONNX Runtime.

A replica receives a whole batch (named numpy arrays) per call and returns
named numpy arrays: the gateway has already decoded and grouped requests, so
the replica does nothing but verify, load once and run. It re-checks the model
file's SHA-256 itself, because the file it opens may not be the file the
gateway checked (another node, or a file swapped in between).

On a GPU the batch runs through ONNX Runtime's IOBinding: inputs are copied to
the device once, outputs are allocated there by ORT and copied back once, and
no intermediate host buffers are made per call. The same path runs on the CPU
(where binding to "cpu" is a no-copy pass-through) so that it is tested on
every machine, not only on one with a GPU.

Batches bypass Ray altogether where every replica of the version shares the
gateway's node: the replica listens on a Unix socket (``serving.direct_channel``)
and runs them on that channel's threads. Large batches from a gateway on the same
node arrive as a shared-memory layout (see ``serving.shared_batch``), over that
channel or else through Ray (``infer_shared``): the replica reads its inputs from
the segment and writes its outputs into it, and only the layout travels.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from serving.device import Device, choose_providers, device_of
from serving.direct_channel import ReplicaListener
from serving.repository import verify_model_file
from serving.shared_batch import Layout, Mappings, RowSpec, write_outputs

# ONNX tensor element types (as ORT names them) that a shared-memory segment can hold as numpy arrays
_NUMPY_OF_ONNX = {
    "tensor(float)": "<f4", "tensor(double)": "<f8", "tensor(float16)": "<f2", "tensor(int64)": "<i8",
    "tensor(int32)": "<i4", "tensor(int16)": "<i2", "tensor(int8)": "|i1", "tensor(uint8)": "|u1",
    "tensor(uint16)": "<u2", "tensor(uint32)": "<u4", "tensor(uint64)": "<u8", "tensor(bool)": "|b1",
}


class OnnxModel:
    """One replica: an ONNX Runtime session sized to the CPUs Ray gave it."""

    def __init__(self, model_path: str, sha256: str, device: Device, num_cpus: float,
                 inject_delay_s: float = 0.0, inject_error_rate: float = 0.0,
                 direct_directory: str | None = None) -> None:
        import ray

        verify_model_file(Path(model_path), sha256)
        gpus = len(ray.get_gpu_ids()) if ray.is_initialized() else 0
        providers = choose_providers(device, gpus, ort.get_available_providers())
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, math.floor(num_cpus))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(model_path, sess_options=options, providers=providers)
        self._output_names = [o.name for o in self._session.get_outputs()]
        self._device = device_of(self._session.get_providers())
        self._pid = os.getpid()
        self._node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        self._mappings = Mappings()
        self._bind = io_binding_runner(self._session, self._output_names, self._device)
        self._inject_delay_s = inject_delay_s
        self._inject_error_rate = inject_error_rate
        self._direct: ReplicaListener | None = None
        numeric = all(t.type in _NUMPY_OF_ONNX for t in [*self._session.get_inputs(), *self._session.get_outputs()])
        if direct_directory is not None and numeric:  # the channel carries raw numeric bytes only
            listener = ReplicaListener(Path(direct_directory), self._run_direct, self._run_shared_direct)
            self._direct = listener if listener.start() else None

    async def infer(self, inputs: dict[str, np.ndarray], warm_up: bool = False) -> dict[str, np.ndarray]:
        """Run one batch sent through Ray. Async on purpose: Serve runs sync methods through a thread
        pool, a hop that costs more than a small model's whole execution; ORT releases the GIL while it
        computes.

        Injected faults (``FaultConfig``) make a version slow or failing on demand. Warm-up calls
        get the delay (the latency model must learn it) but not the errors: the version has to
        become ready before it can fail real traffic."""
        if self._inject_delay_s > 0:
            await asyncio.sleep(self._inject_delay_s)
        return self._run(inputs, warm_up)

    def _run_direct(self, inputs: dict[str, np.ndarray], warm_up: bool) -> dict[str, np.ndarray]:
        """Run one batch sent over the direct channel, on that connection's thread."""
        if self._inject_delay_s > 0:
            time.sleep(self._inject_delay_s)
        return self._run(inputs, warm_up)

    def _run(self, inputs: dict[str, np.ndarray], warm_up: bool) -> dict[str, np.ndarray]:
        if not warm_up and self._inject_error_rate > 0 and random.random() < self._inject_error_rate:
            raise RuntimeError("injected failure (version_faults.error_rate in the config)")
        if self._bind is not None:
            return self._bind(inputs)
        outputs = self._session.run(self._output_names, inputs)
        return dict(zip(self._output_names, outputs, strict=True))

    async def infer_shared(self, layout: Layout, warm_up: bool = False) -> dict[str, np.ndarray] | None:
        """Run one batch laid out in a shared-memory segment. None: the segment is on another node (the
        gateway then sends the batch through Ray); {}: the outputs are in the segment; otherwise the outputs
        themselves, when they do not fit the room left for them (a model whose outputs are not one row per
        input row)."""
        views = self._segment_views(layout)
        if views is None:
            return None
        outputs = await self.infer(views[0], warm_up)
        return {} if write_outputs(outputs, views[1]) else outputs

    def _run_shared_direct(self, layout: Layout, warm_up: bool) -> dict[str, np.ndarray] | None:
        """``infer_shared`` for a layout sent over the direct channel, on that connection's thread."""
        views = self._segment_views(layout)
        if views is None:
            return None
        outputs = self._run_direct(views[0], warm_up)
        return {} if write_outputs(outputs, views[1]) else outputs

    def _segment_views(self, layout: Layout) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
        """(inputs, room for outputs) in the layout's segment; None if this replica cannot see it."""
        if layout.node_id != self._node_id:
            return None
        try:
            return self._mappings.views(layout)
        except FileNotFoundError:  # same Ray node, different /dev/shm (another container)
            return None

    def describe(self) -> dict[str, Any]:
        return {"device": self._device, "providers": self._session.get_providers(), "pid": self._pid,
                "node_id": self._node_id, "output_rows": output_row_specs(self._session),
                "direct": self._direct is not None}

    def __del__(self) -> None:
        """Serve calls this when it stops the replica: the socket goes with it (a killed replica's
        stays behind, and the gateway that finds it refusing removes it)."""
        direct: ReplicaListener | None = getattr(self, "_direct", None)
        if direct is not None:
            direct.close()


def output_row_specs(session: ort.InferenceSession) -> dict[str, RowSpec] | None:
    """Each output's dtype and row shape, if every output has one row per input row (a dynamic first
    dimension, fixed others) of a type numpy holds; None otherwise (outputs then travel through Ray)."""
    specs: dict[str, RowSpec] = {}
    for output in session.get_outputs():
        shape, dtype = list(output.shape), _NUMPY_OF_ONNX.get(output.type)
        if dtype is None or not shape or isinstance(shape[0], int) or not all(isinstance(d, int) for d in shape[1:]):
            return None
        specs[output.name] = (dtype, tuple(shape[1:]))
    return specs


def io_binding_runner(session: ort.InferenceSession, output_names: list[str], device: str,
                      force: bool = False) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None:
    """A function running one batch through IOBinding on ``device`` ("cuda" or "cpu"); None on the CPU
    unless ``force``d, because there plain ``run`` is as fast and needs no binding object per call."""
    if device != "cuda" and not force:
        return None
    device_type = "cuda" if device == "cuda" else "cpu"

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        binding = session.io_binding()
        for name, array in inputs.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))  # one host-to-device copy per input
        for name in output_names:
            binding.bind_output(name, device_type)  # ORT allocates it on the device, sized by the batch
        session.run_with_iobinding(binding)
        return dict(zip(output_names, binding.copy_outputs_to_cpu(), strict=True))

    return run
