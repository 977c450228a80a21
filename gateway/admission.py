"""How many rows a deployment may hold at once so that what it admits is answered within its objective.

Admission by prediction alone (latency model x queue length) is unstable when
the gateway itself is the bottleneck: every batch's round trip then includes
the gateway's own backlog (event-loop queue, GIL convoys with Ray's threads),
the model learns that the deployment is slow, predicts everyone late and
refuses everything — and because refusing costs CPU too, the backlog never
clears (measured on the champion, 25 ms objective, Poisson: at 6,000 req/s
offered, 155 answers/s within it; at 12,000, every request refused; and
afterwards, idle, a lone request was still refused: the model said 25.7 ms).
Admission therefore follows what requests actually experience: a limit on rows
in the system (queued + executing) that every answered request moves.

The objective is a p99, so the limit is steered to the size at which 1% of
answers are late, as a stochastic-approximation quantile controller does: each
request answered within the objective raises the limit by a factor ``exp(η·q)``,
each late one cuts it by ``exp(-η·(1-q))`` with ``q = late_share``, so the limit
stops moving exactly where a share ``q`` of answers is late. ``η`` is set by how
many late answers halve the limit (``halving_late`` = 5: about 500 answers in
time double it). Slower steps (20 and 2,000) left the limit steadier but, at
1.5x overload on the champion, answered 1,497 requests/s in time against 2,724:
one run each, on a box where two runs of the same code at that load differed
by up to 4x (loadtests/README.md), so the choice is weakly supported. A cut
needs time to show (what is already queued is late anyway), so cuts come at
most once per objective: late answers in between add up into the next cut,
which is at most a halving. Only answers that tested the limit move it: those
to requests admitted while the deployment held at least half of it. An answer
from a deployment far below its limit says nothing about the limit either way:
in time, it must not leave a limit so high after an idle spell that the next
overload takes many cuts to bring down; late, it is a stall of the round trip
(a pause of the replica, of Ray, of this process) that refusing would not have
shortened. The late ones matter most: in the issue-3 benchmark the wide model,
idle for minutes before its turn, ended its 10%-load point with a limit of 6-7
rows and had refused 131 of 1,126 requests; late answers while it held little,
each cutting a limit that nothing at that load tested back up, are the likely
cause (loadtests/README.md). ``floor_rows`` keeps at least one row per execution slot,
so the deployment never stops serving, and a deployment holding nothing admits
any request, so the limit can always recover.

The first version cut by 20% on any late batch (at most once per objective) and
grew by a row per limit's worth of rows: its equilibrium sat far below a 1% late
share. At 60% and 90% of capacity on the 2-core bench box it answered 1,762 and
2,613 requests/s in time where the best fixed setting answered 2,333 and 3,736
(same run), refusing the rest (loadtests/README.md).
"""

from __future__ import annotations

import math

PEAK_WINDOW_S = 0.1
"""Answered rows are counted over windows this long to measure the throughput the deployment has shown."""
PEAK_MEMORY_S = 10.0
"""Time constant over which that peak throughput is forgotten (the deployment may have become slower), counted
in time the deployment was serving: an idle spell is no evidence that it became slower. When idle time aged it
too, a deployment coming back from an idle spell (the other eight policies' turns at a load level in the
benchmark) had lost its floor, and a limit cut to a few rows at the end of an overload stayed there: the
champion ran on limits of 11-36 rows, 1.6-3.2 rows per batch, through the whole bursty sweep that followed
its 150% Poisson point (limit 27)."""


class AdmissionLimit:
    def __init__(self, objective_s: float, initial_rows: float, min_rows: float, late_share: float = 0.01,
                 halving_late: float = 5.0) -> None:
        self.objective_s = objective_s
        self.min_rows = min_rows
        self.rows = max(min_rows, initial_rows)
        self.late_share = late_share
        self._step = math.log(2.0) / (halving_late * (1.0 - late_share))
        self._late_uncut = 0
        self._next_cut_at = -math.inf
        self.peak_rows_per_s = 0.0
        self._window_rows = 0
        self._window_start = -math.inf

    @property
    def floor_rows(self) -> float:
        """Never less than half an objective's worth of the peak throughput the deployment has shown.

        With fewer rows in the system than that, batches shrink, every row costs more of the gateway's
        CPU, the deployment answers fewer rows, and more are late: a limit steered by lateness alone
        spirals down to one row per slot and stays there (measured on the champion at 90% load: 170
        answers/s, one row per batch, where fixed batching answered 4,351/s with 69 rows per batch).
        """
        return max(self.min_rows, self.peak_rows_per_s * self.objective_s / 2)

    def admits(self, rows_in_system: int, rows: int) -> bool:
        """Whether ``rows`` more fit; a deployment holding nothing admits any request, however large."""
        return rows_in_system == 0 or rows_in_system + rows <= self.rows

    def tested_by(self, rows_in_system: int) -> bool:
        """Whether the answer to a request admitted into a deployment holding ``rows_in_system`` rows (its
        own included) will say anything about the limit: only if the limit was at least half used."""
        return rows_in_system >= self.rows / 2

    def observe(self, in_time: int, late: int, rows: int, now: float) -> None:
        """Fold in one answered batch: how many of its answers that tested the limit (``tested_by``)
        came within the objective and how many after it, and its rows (all of them: the throughput shown)."""
        self._count_served(rows, now)
        self.rows *= math.exp(self._step * self.late_share * in_time)
        self._late_uncut += late
        if self._late_uncut and now >= self._next_cut_at:
            cut = max(0.5, math.exp(-self._step * (1.0 - self.late_share) * self._late_uncut))
            self.rows *= cut
            self._late_uncut = 0
            self._next_cut_at = now + self.objective_s
        self.rows = max(self.floor_rows, self.rows)

    def _count_served(self, rows: int, now: float) -> None:
        elapsed = now - self._window_start
        if elapsed >= PEAK_WINDOW_S:
            if elapsed < 2 * PEAK_WINDOW_S:  # a window that ended long ago is an idle spell: neither measured nor aged
                self.peak_rows_per_s *= math.exp(-elapsed / PEAK_MEMORY_S)
                self.peak_rows_per_s = max(self.peak_rows_per_s, self._window_rows / elapsed)
            self._window_rows = 0
            self._window_start = now
        self._window_rows += rows
