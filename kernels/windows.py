"""Sliding windows of counts as a ring of sub-window slots, rotated lazily and summed, never subtracted.

Why a ring of slots: drift is judged on "the last minute" of traffic, and the request
path must stay O(1). Each slot holds the counts of one ``slot_s``-second sub-window
(e.g. 12 slots x 5 s = 60 s); the request path writes into the current slot, and a
reader sums the slots that lie in the window it asks for.

Why subtraction-free: a window kept as a running total minus expired slots drifts
forever after one lost or double-counted update, and cannot skip slots that were never
written during a gap in traffic. Summing the live slots on read costs one
``(n_slots, ...)`` reduction per read, and a slot outside the window simply is not part
of the sum. (The gateway keeps only a few one-second slots per version and publishes
each completed one, ``slot_copy``; long windows are summed from what every process
published.)

Time is supplied by the caller (wall-clock seconds in the gateway, so that slots of
different processes line up), so the ring has
no clock of its own and tests drive it. Slot id for time ``t`` is ``floor(t / slot_s)``;
its position in the ring is ``id % n_slots``; each position remembers the id it holds,
so a slot left over from an earlier lap (a gap in traffic) is recognised as stale and
zeroed when ``current`` next reaches it, and never counted by ``total``.

Merging: counts merge by addition. The ``total()`` of several processes' rings (same
shape, same bins) can just be added, and the sum equals the total of the combined stream.

Threads: ``current`` checks-then-zeroes without a lock; use one ring per thread or
event loop (and merge by addition), or guard it with a lock.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["WindowRing"]

# Tolerance when turning a span into a number of slots: 0.3 / 0.1 is 2.9999999999999996,
# 0.30000000000000004 / 0.1 is 3.0000000000000004, and both mean three slots.
_SPAN_TOLERANCE = 1e-9


class WindowRing:
    """A ring of ``n_slots`` count arrays of ``shape``, each covering ``slot_s`` seconds.

    ``current(now)`` returns the slot to add into; ``total(now, span_s)`` the sum over the
    last ``span_s`` seconds (rounded up to whole slots, at most the whole ring).
    """

    __slots__ = ("_ids", "_n_slots", "_slot_s", "_slots", "_views")

    def __init__(
        self,
        n_slots: int,
        slot_s: float,
        shape: int | tuple[int, ...],
        dtype: npt.DTypeLike = np.int64,
    ) -> None:
        """Allocate ``(n_slots, *shape)`` zeros of ``dtype`` (int64 counts by default; float64 for weights).

        Raises:
            ValueError: unless ``n_slots >= 1`` and ``slot_s`` is finite and positive.
        """
        if n_slots < 1:
            raise ValueError(f"n_slots must be >= 1, got {n_slots}")
        if not (math.isfinite(slot_s) and slot_s > 0):
            raise ValueError(f"slot_s must be a positive number of seconds, got {slot_s}")
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        self._n_slots = n_slots
        self._slot_s = float(slot_s)
        self._slots: npt.NDArray[Any] = np.zeros((n_slots, *dims), dtype=dtype)
        # One view per position, made once: current() then costs no allocation.
        self._views: list[npt.NDArray[Any]] = [self._slots[i] for i in range(n_slots)]
        # Slot id held at each position; None: never written.
        self._ids: list[int | None] = [None] * n_slots

    @property
    def n_slots(self) -> int:
        """Number of sub-windows in the ring."""
        return self._n_slots

    @property
    def slot_s(self) -> float:
        """Seconds covered by one sub-window."""
        return self._slot_s

    @property
    def window_s(self) -> float:
        """Seconds covered by the whole ring: the longest span ``total`` can sum."""
        return self._n_slots * self._slot_s

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one slot (and of what ``total`` returns)."""
        return tuple(self._slots.shape[1:])

    def slot_id(self, now: float) -> int:
        """The id of the sub-window that contains time ``now``: ``floor(now / slot_s)``."""
        return math.floor(now / self._slot_s)

    @property
    def slots(self) -> list[npt.NDArray[Any]]:
        """The slot arrays by ring position (views, reused lap after lap): a caller may derive its own
        views of each once and pick them by ``position``, instead of slicing on every update."""
        return self._views

    def current(self, now: float) -> npt.NDArray[Any]:
        """The writable slot array for time ``now``; add counts into it in place."""
        return self._views[self.position(now)]

    def slot_copy(self, sid: int) -> npt.NDArray[Any] | None:
        """A copy of slot ``sid`` if the ring still holds it (None once it was never written or reused)."""
        pos = sid % self._n_slots
        return self._views[pos].copy() if self._ids[pos] == sid else None

    def position(self, now: float) -> int:
        """The ring position of the slot for time ``now``, rotated to it first.

        Rotation happens here, lazily: if the position last held an older slot (one lap
        or more ago) it is zeroed and re-labelled first. A ``now`` older than the slot
        now held at its position (time running backwards by more than the whole ring,
        which a monotonic clock never does) gets that newer slot rather than destroying
        it: those few counts land in a newer slot instead of being lost.
        """
        sid = math.floor(now / self._slot_s)
        pos = sid % self._n_slots
        held = self._ids[pos]
        if held is None or held < sid:
            self._views[pos].fill(0)
            self._ids[pos] = sid
        return pos

    def total(self, now: float, span_s: float | None = None) -> npt.NDArray[Any]:
        """Sum (a new array) of the slots whose id lies in ``(slot(now) - k, slot(now)]``.

        ``k = ceil(span_s / slot_s)`` (default, and at most: ``n_slots``), so the span is
        rounded up to whole slots and the current, partly filled slot is included. Slots
        outside the span — stale ones from an earlier lap, ones never written, ones
        "after" ``now`` — are not counted. Results of several rings can be added.

        Raises:
            ValueError: if ``span_s`` is not a positive number.
        """
        if span_s is None:
            k = self._n_slots
        else:
            if not (span_s > 0):
                raise ValueError(f"span_s must be positive, got {span_s}")
            k = min(self._n_slots, math.ceil(span_s / self._slot_s - _SPAN_TOLERANCE))
        sid = math.floor(now / self._slot_s)
        live = [pos for pos, held in enumerate(self._ids) if held is not None and sid - k < held <= sid]
        chosen = self._slots if len(live) == self._n_slots else self._slots[live]
        out: npt.NDArray[Any] = chosen.sum(axis=0, dtype=self._slots.dtype)
        return out

    def clear(self) -> None:
        """Forget every slot (e.g. after a model version change, when old counts no longer apply)."""
        self._slots.fill(0)
        self._ids = [None] * self._n_slots
