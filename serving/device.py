"""Which ONNX Runtime execution providers a replica uses.

The decision is made inside the replica, from the GPUs Ray actually assigned
to it, so a replica scheduled without a GPU never tries CUDA and a GPU replica
never silently runs on the CPU without saying so (``device_of`` reports what
the session really got).
"""

from __future__ import annotations

from typing import Literal

Device = Literal["auto", "cpu", "cuda"]

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def choose_providers(device: Device, gpus_assigned: int, available: list[str]) -> list[str]:
    """Provider list for an ONNX Runtime session, most preferred first; ValueError if CUDA is demanded but absent."""
    wants_cuda = device == "cuda" or (device == "auto" and gpus_assigned > 0)
    if not wants_cuda:
        return [CPU]
    if CUDA not in available or gpus_assigned == 0:
        if device == "cuda":
            raise ValueError(
                f"device 'cuda' requested but the replica has {gpus_assigned} GPU(s) "
                f"and ONNX Runtime offers {available}"
            )
        return [CPU]
    return [CUDA, CPU]


def device_of(session_providers: list[str]) -> str:
    return "cuda" if session_providers and session_providers[0] == CUDA else "cpu"


def gpus_per_replica(device: Device, cluster_gpus: float) -> float:
    """GPUs to reserve for each replica: one when CUDA is wanted and the cluster has any."""
    if device == "cpu":
        return 0.0
    return 1.0 if cluster_gpus >= 1 else 0.0
