"""Open Inference Protocol datatypes and their numpy equivalents.

Wire formats are little-endian (OIP binary extension, gRPC raw contents), so
every numpy dtype here is explicitly little-endian; BYTES tensors are numpy
object arrays of ``bytes``.
"""

from __future__ import annotations

from typing import Final

import numpy as np

NUMPY_DTYPES: Final[dict[str, np.dtype]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype for an OIP datatype; KeyError for an unknown one."""
    return NUMPY_DTYPES[datatype]


def is_float(datatype: str) -> bool:
    return datatype in ("FP16", "FP32", "FP64")


def serialize_bytes_tensor(array: np.ndarray) -> bytes:
    """Triton's BYTES wire layout: each element as a 4-byte little-endian length, then its bytes."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        raw = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(len(raw).to_bytes(4, "little"))
        parts.append(raw)
    return b"".join(parts)


def deserialize_bytes_tensor(buffer: memoryview | bytes, count: int) -> np.ndarray:
    """Parse ``count`` length-prefixed elements; ValueError if the buffer is short or has bytes left over."""
    view = memoryview(buffer)
    if count > len(view) // 4:  # checked before allocating: the count comes from the client's shape
        raise ValueError(f"{count} BYTES elements need at least {4 * count} bytes (a 4-byte length each), "
                         f"got {len(view)}")
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise ValueError(f"BYTES element {i} has no length prefix ({len(view) - offset} bytes left)")
        size = int.from_bytes(view[offset:offset + 4], "little")
        offset += 4
        if offset + size > len(view):
            raise ValueError(f"BYTES element {i} claims {size} bytes but only {len(view) - offset} remain")
        out[i] = bytes(view[offset:offset + size])
        offset += size
    if offset != len(view):
        raise ValueError(f"{len(view) - offset} bytes left over after {count} BYTES elements")
    return out
