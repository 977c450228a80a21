"""A batch's inputs as the batcher hands them over: each queued request's arrays, in queue order.

The batcher does not join them. Each way a batch travels joins them where it has to put the bytes anyway:
into a shared-memory segment (``shared_batch.SegmentPool.batch``), into a socket frame
(``direct_channel.encode``), and only for a call through Ray into one new array per input (``joined``).
Joining first and copying the result again cost the gateway a second copy of every batch: with 4,096-row
requests, ``np.concatenate`` alone was 7.6% of a busy gateway's samples (py-spy, 2-core box), 140 µs for
a 16,384-row batch of 30 float32 features.

Every part has the same input names, and each input the same dtype and trailing shape in every part: the
gateway binds each request's tensors to the model's manifest before it queues them, and where the manifest lets
a trailing dimension vary, the batcher batches only requests that agree on it (``BatchPolicy.variable_shapes``).
Parts that could not be one array make the joining raise ValueError, and their batch fail, never garbage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import numpy as np

Arrays = dict[str, np.ndarray]
"""Named arrays, rows first: one request's inputs, or one batch's outputs."""

Parts = Sequence[Arrays]
"""One batch's inputs: each request's arrays, in the order their rows are in the batch (and in its outputs)."""

BatchExecutor = Callable[[Parts], Awaitable[Arrays]]
"""Runs one batch on a model deployment: each request's named input arrays in, in queue order, not joined (the
executor joins them where it copies them anyway); the batch's named output arrays out, rows in that order."""


def joined(parts: Parts) -> Arrays:
    """One array per input, rows in order (the part's own arrays when there is one part: no copy)."""
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def batch_rows(parts: Parts) -> int:
    """Rows in the batch (every input of a part has the same number)."""
    return sum(len(next(iter(part.values()))) for part in parts)


def batch_nbytes(parts: Parts) -> int:
    """Bytes of the batch's inputs, all parts together."""
    return sum(array.nbytes for part in parts for array in part.values())
