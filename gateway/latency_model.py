"""How long a batch of n rows takes on one deployment, learned online.

Execution time is modelled as ``a + b·rows``: ``a`` is the fixed cost of a
call (for a Ray hop, milliseconds of it), ``b`` the cost per row. The fit is
an exponentially weighted least squares over observed batches, so it follows
drift (a noisy neighbour, a GPU warming up) without a window to tune. The
batcher plans with ``bound(rows)``: the mean plus a margin taken from the
recent residuals' upper quantile, because deadlines are about tail latency,
not the average. Residuals age out after ``residual_max_age_s``, so a burst of
bad luck (a noisy neighbour, a replica's garbage collection) inflates the
margin for seconds, not forever. Round trips the gateway's own event loop
delayed are not fed in at all (``batcher.MAX_LOOP_SHARE``).
"""

from __future__ import annotations

import math
import time
from collections import deque

import numpy as np


class LatencyModel:
    def __init__(self, half_life_batches: float = 200.0, tail_quantile: float = 0.99,
                 residual_window: int = 128, residual_max_age_s: float = 30.0) -> None:
        self._decay = 0.5 ** (1.0 / half_life_batches)
        self._quantile = tail_quantile
        self._max_age = residual_max_age_s
        self._sw = self._sx = self._sy = self._sxx = self._sxy = 0.0
        self._residuals: deque[tuple[float, float]] = deque(maxlen=residual_window)
        self._margin = 0.0
        self._since_margin = 0
        self.observations = 0

    def observe(self, rows: int, seconds: float, now: float | None = None) -> None:
        """Fold in one executed batch: its row count and how long it took, end to end."""
        now = time.monotonic() if now is None else now
        if self.observations >= 2:
            self._residuals.append((now, seconds - self.mean(rows)))
            self._since_margin += 1
            if self._since_margin >= 16 or len(self._residuals) < 16:
                self._refresh_margin(now)
        d = self._decay
        self._sw = self._sw * d + 1.0
        self._sx = self._sx * d + rows
        self._sy = self._sy * d + seconds
        self._sxx = self._sxx * d + rows * rows
        self._sxy = self._sxy * d + rows * seconds
        self.observations += 1

    def _refresh_margin(self, now: float) -> None:
        while self._residuals and now - self._residuals[0][0] > self._max_age:
            self._residuals.popleft()
        recent = [r for _, r in self._residuals]
        self._margin = max(0.0, float(np.quantile(recent, self._quantile))) if recent else 0.0
        self._since_margin = 0

    def coefficients(self) -> tuple[float, float]:
        """(fixed seconds per batch, seconds per row), both clamped at zero."""
        if self._sw == 0.0:
            return 0.0, 0.0
        denominator = self._sw * self._sxx - self._sx * self._sx
        if denominator <= 1e-12 * max(1.0, self._sw * self._sxx):  # one batch size seen so far
            return max(0.0, self._sy / self._sw), 0.0
        slope = max(0.0, (self._sw * self._sxy - self._sx * self._sy) / denominator)
        intercept = max(0.0, (self._sy - slope * self._sx) / self._sw)
        return intercept, slope

    def mean(self, rows: int) -> float:
        intercept, slope = self.coefficients()
        return intercept + slope * rows

    def bound(self, rows: int) -> float:
        """Time within which a batch of ``rows`` finishes at the tail quantile, by recent evidence."""
        return self.mean(rows) + self._margin

    def rows_within(self, seconds: float, cap: int) -> int:
        """The largest batch (at most ``cap``) whose bound fits in ``seconds``; 0 if not even one row."""
        intercept, slope = self.coefficients()
        room = seconds - intercept - self._margin
        if room < slope:
            return 0
        if slope == 0.0:
            return cap
        return min(cap, math.floor(room / slope))
