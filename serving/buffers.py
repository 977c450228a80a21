"""Arrays laid out in a byte buffer, as both of the gateway's copy-saving transports lay them: the direct channel
in a frame's payload (``direct_channel``), shared memory in a segment (``shared_batch``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ALIGN = 64
"""Each array starts at a multiple of this many bytes: a cache line, and a multiple of every dtype's alignment."""


def aligned(offset: int) -> int:
    """The first offset from ``offset`` on where an array may start."""
    return -(-offset // ALIGN) * ALIGN


def array_at(buffer: Any, dtype: np.dtype[Any] | str, shape: tuple[int, ...] | list[int], offset: int) -> np.ndarray:
    """The array of ``dtype`` and ``shape`` at ``offset`` in ``buffer``: a view, no copy (read-only where the
    buffer is)."""
    count = math.prod(shape)  # not np.prod: 3.5 µs a call, a few per batch (py-spy: 3% of a busy gateway)
    return np.frombuffer(buffer, dtype=dtype, count=count, offset=offset).reshape(shape)
