"""How many rows a deployment may hold at once so that what it admits is answered within its objective.

Admission by prediction alone (latency model x queue length) is unstable when
the gateway itself is the bottleneck: every batch's round trip then includes
the gateway's own backlog (event-loop queue, GIL convoys with Ray's threads),
the model learns that the deployment is slow, predicts everyone late and
refuses everything — and because refusing costs CPU too, the backlog never
clears (measured: 6,000 req/s offered to a gateway that serves 6,000 req/s, 25
ms objective: 6 ok/s, everything else refused). Admission therefore follows
what requests actually experience: an additive-increase, multiplicative-
decrease limit on rows in the system (queued + executing), as Clipper does for
batch sizes and TCP for windows. The objective is a p99 target, so the limit
is cut (by ``cut``) when more than 1% of the rows answered in a decision window
were late; a window is at least one objective long (the time a cut needs to
show) and at least ``window_rows`` rows (so that "1%" means something). Every
batch answered entirely in time raises it by about one row per limit's worth
of rows served. The floor of one row per execution slot means the deployment
never stops serving, so the limit can always recover.
"""

from __future__ import annotations


class AdmissionLimit:
    def __init__(self, objective_s: float, initial_rows: float, floor_rows: float, cut: float = 0.8,
                 late_fraction: float = 0.01, window_rows: int = 100) -> None:
        self.objective_s = objective_s
        self.floor_rows = floor_rows
        self.rows = max(floor_rows, initial_rows)
        self._cut = cut
        self._late_fraction = late_fraction
        self._window_rows = window_rows
        self._window_ends = 0.0
        self._seen = 0
        self._late = 0

    def admits(self, rows_in_system: int, rows: int) -> bool:
        """Whether ``rows`` more fit; a deployment holding nothing admits any request, however large."""
        return rows_in_system == 0 or rows_in_system + rows <= self.rows

    def observe(self, batch_rows: int, late_rows: int, now: float) -> None:
        """Fold in one answered batch: its rows, and how many of them spent longer than the objective."""
        self._seen += batch_rows
        self._late += late_rows
        if late_rows == 0:
            self.rows += batch_rows / self.rows
        if now < self._window_ends or self._seen < self._window_rows:
            return
        if self._late > self._late_fraction * self._seen:
            self.rows = max(self.floor_rows, self.rows * self._cut)
        self._seen = self._late = 0
        self._window_ends = now + self.objective_s
