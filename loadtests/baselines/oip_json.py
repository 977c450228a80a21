"""The one piece both baselines share: an output tensor in OIP JSON, written the plain way a user would."""

from __future__ import annotations

from typing import Any

import numpy as np

_OIP_DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.float64): "FP64"}


def output_tensor(name: str, value: np.ndarray) -> dict[str, Any]:
    """One OIP output tensor in JSON form."""
    return {
        "name": name,
        "datatype": _OIP_DATATYPES.get(value.dtype, "FP32"),
        "shape": list(value.shape),
        "data": value.reshape(-1).tolist(),
    }
