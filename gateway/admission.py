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
which is at most a halving. Cuts are paid from an allowance of late answers
that answers in time refill (``LATE_ALLOWANCE``), so a late share within the
objective's over about 2,000 answers never cuts. A limit that no request tests does not grow (an answer
from a deployment holding less than half of it says nothing about it): an idle
spell must not leave a limit so high that the next overload takes many cuts to
bring down. Extending that rule to cuts (only answers to requests
admitted while the deployment held half the limit count, late or not) was
tried and reverted: it cured the wide model's refusals at 10% load, but the
champion's limit starts at 512 rows and the batcher never held 256 while its
backlog built up, so nothing ever cut it; at 1.2x and 1.5x load it refused
nothing and answered 293 and 0 requests/s within the objective
(loadtests/README.md). ``floor_rows`` keeps at least one row per execution
slot, so the deployment never stops serving, and a deployment holding fewer requests
than it has slots admits any request, however large, so the limit can always recover
and a request of more rows than the limit still gets a slot.

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


LATE_ALLOWANCE = 20.0
"""Late answers a deployment may bank, 1% of 2,000 answers in time: a cut needs the late share to exceed the
objective's over about the last 2,000 answers, not one unlucky moment. Without it every late answer with rows
queued behind it cut, while answers in time raise only a limit they test: at low load, where nothing tests the
limit, round-trip stalls (which queue the requests arriving meanwhile) ratchet it down until it is small enough
to be tested, that is until clumps of Poisson arrivals hit it (tests/test_admission.py). That is the likely
cause (inferred, the limit was not traced there) of the refusals on a lent H100: 8 gateway processes at 504
single-row requests/s refused 134-338 requests while p99 was 11-16 ms against a 20 ms objective."""


class AdmissionLimit:
    def __init__(self, objective_s: float, initial_rows: float, min_rows: float, late_share: float = 0.01,
                 halving_late: float = 5.0, late_allowance: float = LATE_ALLOWANCE) -> None:
        self.objective_s = objective_s
        self.min_rows = min_rows
        self.rows = max(min_rows, initial_rows)
        self.late_share = late_share
        self.late_allowance = late_allowance
        self._step = math.log(2.0) / (halving_late * (1.0 - late_share))
        self._credit_per_answer = late_share / (1.0 - late_share)
        self._late_credit = late_allowance
        """Late answers the deployment may still give before a cut: earned by every answer in time, spent by late
        ones, at most ``late_allowance`` (where it starts: nothing is held against a new deployment); negative =
        late answers the next cut is for."""
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

    def admits(self, rows_in_system: int, rows: int, requests_in_system: int) -> bool:
        """Whether ``rows`` more fit. Whatever the limit, a request is admitted while the deployment holds fewer
        requests than it has execution slots (``min_rows``), so one holding nothing admits any request, however
        large.

        In rows alone (holding nothing admitted anything, else the rows had to fit), a limit cut below two large
        requests kept each gateway process to one at a time, and the early shedding (``rows`` = 1, before the
        body is read) refused every request that came while one was running: on a lent H100, 8 gateway
        processes sending 16,384-row requests, answered in 3-4 ms, refused up to 12% of them as ``objective``
        from 14% of the offline peak up, with p99 at 10-15 ms against a 20 ms objective (loadtests/README.md,
        "GPU")."""
        return requests_in_system < self.min_rows or rows_in_system + rows <= self.rows

    def observe(self, answered: int, late: int, rows: int, rows_in_system: int, queued_rows: int,
                now: float) -> None:
        """Fold in one answered batch: how many requests it answered, how many of them after the objective,
        its rows, the rows the deployment held (queued or running, the batch included) when it finished,
        and how many of those were still queued.

        Late answers count only when rows were queued behind them: a late batch with nothing waiting is
        a stall of the round trip (a pause of the replica, of Ray, of this process), which refusing
        would not have shortened, and at low load nothing would test the cut limit back up."""
        self._count_served(rows, now)
        in_time = answered - late
        if rows_in_system >= self.rows / 2:
            self.rows *= math.exp(self._step * self.late_share * in_time)
        credit = min(self.late_allowance, self._late_credit + self._credit_per_answer * in_time)
        if queued_rows:
            credit -= late
        if credit < 0.0 and now >= self._next_cut_at:
            self.rows *= max(0.5, math.exp(self._step * (1.0 - self.late_share) * credit))
            credit = 0.0
            self._next_cut_at = now + self.objective_s
        self._late_credit = credit
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
