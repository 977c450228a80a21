"""How many rows a deployment may hold at once so that what it admits is answered within its objective.

Admission by prediction alone (latency model x queue length) is unstable when
the gateway itself is the bottleneck: every batch's round trip then includes
the gateway's own backlog (event-loop queue, GIL convoys with Ray's threads),
the model learns that the deployment is slow, predicts everyone late and
refuses everything — and because refusing costs CPU too, the backlog never
clears (measured on the champion, 25 ms objective, Poisson: at 6,000 req/s
offered, 155 answers/s within it; at 12,000, every request refused; and
afterwards, idle, a lone request was still refused: the model said 25.7 ms). Admission therefore follows
what requests actually experience: an additive-increase, multiplicative-
decrease limit on rows in the system (queued + executing), as Clipper does for
batch sizes and TCP for windows. A batch whose oldest request spent longer than
the objective in the gateway cuts the limit by ``cut`` (at most once per
objective, the time a cut needs to show); every other batch raises it by about
one row per limit's worth of rows served. The floor of one row per execution
slot means the deployment never stops serving, so the limit can always recover.

Two gentler variants were measured and lost under 2x overload (docs and
loadtests/README.md): cutting only when over 1% of a window's rows were late,
and counting only rows that were late *because they queued*. Both let the
backlog, and with it the gateway's CPU load, grow before reacting; on a gateway
whose own CPU is the bottleneck, keeping little in flight is what keeps the
admitted requests fast.
"""

from __future__ import annotations


class AdmissionLimit:
    def __init__(self, objective_s: float, initial_rows: float, floor_rows: float, cut: float = 0.8) -> None:
        self.objective_s = objective_s
        self.floor_rows = floor_rows
        self.rows = max(floor_rows, initial_rows)
        self._cut = cut
        self._next_cut_at = 0.0

    def admits(self, rows_in_system: int, rows: int) -> bool:
        """Whether ``rows`` more fit; a deployment holding nothing admits any request, however large."""
        return rows_in_system == 0 or rows_in_system + rows <= self.rows

    def observe(self, oldest_sojourn_s: float, batch_rows: int, now: float) -> None:
        """Fold in one answered batch: how long its oldest request spent in the gateway, and its size."""
        if oldest_sojourn_s > self.objective_s:
            if now >= self._next_cut_at:
                self.rows = max(self.floor_rows, self.rows * self._cut)
                self._next_cut_at = now + self.objective_s
        else:
            self.rows += batch_rows / self.rows
