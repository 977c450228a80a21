"""How fast rows are arriving at one deployment, as an exponentially weighted rate.

The batcher needs the arrival rate to decide whether holding a partial batch
back pays (a batch that is too small to keep up with arrivals wastes a slot).
Rows are counted as they come and folded into the rate at most once per
``tick_s``, so the per-request cost is an addition and a comparison; an
interval of silence is folded in as a rate of zero when the rate is read, so
the estimate decays at once when traffic stops rather than at the next arrival.
"""

from __future__ import annotations

import math


class ArrivalRate:
    def __init__(self, time_constant_s: float = 0.1, tick_s: float = 0.01, now: float = 0.0) -> None:
        self._time_constant = time_constant_s
        self._tick = tick_s
        self._since = now
        self._pending = 0
        self._rate = 0.0

    def add(self, rows: int, now: float) -> None:
        self._pending += rows
        if now - self._since >= self._tick:
            self._fold(now)

    def rows_per_second(self, now: float) -> float:
        if now - self._since >= self._tick:
            self._fold(now)
        return self._rate

    def _fold(self, now: float) -> None:
        elapsed = now - self._since
        weight = 1.0 - math.exp(-elapsed / self._time_constant)
        self._rate += weight * (self._pending / elapsed - self._rate)
        self._pending = 0
        self._since = now
