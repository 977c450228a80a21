"""How starved this process's event loop is, as the pressure on batchers to hold partial batches.

Work-conserving dispatch (a free slot takes whatever is queued) is right when
the replica is the bottleneck. When the gateway's own CPU is — every Ray call
costs it about a millisecond of CPU, the model microseconds (docs/architecture.md)
— it is wrong: at 30-90% load on the 2-core bench box, batchers dispatching
3-5 rows per call used 20-30% more gateway CPU than ones holding every batch
10 ms, and had the worse p99 for it (loadtests/README.md). The symptom that
tells the two cases apart is the event loop running late: a timer due every
``TICK_S`` fires late when the loop is busy or the process is short of CPU.

What lateness does not see: a loop that is busy but whose iterations are short.
In bursts at 8,000-9,800 requests/s on the champion, the loop's thread was on a
CPU 0.6-0.93 of the time by the end of a long burst (``busy_share``) while its
timer stayed within 0.2-1.0 ms (smoothed), so the pressure stayed 0 except right
after a stall (loadtests/README.md, "Where a burst's batches come from"); the
bursts' batches grew from the queue alone, to 7-30 rows. Raising the pressure on
a fast busy share as well saved CPU at 90% Poisson load and nothing in bursts,
and was not adopted.

``pressure`` in [0, 1] rises by a factor while the smoothed lateness is above
``HIGH_LAG_S`` and decays while it is below ``LOW_LAG_S``, so it settles at the
least holding that keeps the loop on time; a batcher holds its head request for
up to ``pressure`` times its own hold budget. At low load the loop is on time,
the pressure is zero and a lone request goes at once. The lateness comes from
one timer per loop (200 callbacks a second), not from anything per request.

``busy_share``, the share of wall time the loop's thread spent on a CPU (smoothed), is exported for
operators (``mlgate_event_loop_busy_ratio``): it shows a process whose own work is the bottleneck
while its loop still runs on time (at 1.5x overload on the wide demo model, a median 0.84 of a core
with the timer 0.1-3.6 ms late). Only the thread's own CPU time counts, so a neighbour taking the
core lowers it. It is not a saturation signal for admission or holding: on the 2-core bench box its
median was 0.61-0.72 at 30% load and 0.71-0.90 from 90% load up, so no threshold tells noise from
overload on both demo models (loadtests/README.md).
"""

from __future__ import annotations

import asyncio
import time
import weakref

TICK_S = 0.005
HIGH_LAG_S = 0.002
"""Smoothed lateness above which the pressure rises (uvloop's timers have millisecond resolution)."""
LOW_LAG_S = 0.00075
"""Smoothed lateness below which the pressure decays."""
SMOOTHING = 0.2
"""Weight of each tick's lateness in the moving average (about five ticks, 25 ms, of memory)."""
RISE = 1.25
DECAY = 0.9
START = 0.05
"""Pressure a rise starts from: from zero to full in about 14 ticks (70 ms) of a lagging loop."""
BUSY_WINDOW_S = 0.1
"""The loop thread's CPU time is read over windows this long (20 ticks)..."""
BUSY_SMOOTHING = 0.3
"""...and each window's share weighs this much in the moving average (about 0.3 s of memory)."""


_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopLoad] = weakref.WeakKeyDictionary()


class LoopLoad:
    """The lateness of one event loop and the holding pressure it implies; one per loop (``of``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # no reference to the loop is kept: the registry's weak key would never die (a closed test loop)
        self.lag_s = 0.0
        self.pressure = 0.0
        self._late_total_s = 0.0
        self.busy_share = 0.0
        self._busy_since = time.monotonic()
        self._busy_cpu_since = time.thread_time()  # ``of`` runs on the loop: this is its thread
        self._due = time.monotonic() + TICK_S
        loop.call_later(TICK_S, self._tick)

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> LoopLoad:
        """The monitor of ``loop``, started on first use."""
        load = _BY_LOOP.get(loop)
        if load is None:
            load = _BY_LOOP[loop] = cls(loop)
        return load

    def late_clock(self) -> float:
        """Seconds this loop's timer has run late in all, the tick overdue right now included.

        The difference between two readings is how long the loop kept callbacks waiting in between:
        what a round trip timed on this loop measured of the gateway's own backlog rather than of
        the work it waited for.
        """
        return self._late_total_s + max(0.0, time.monotonic() - self._due)

    def _tick(self) -> None:
        now = time.monotonic()
        late = max(0.0, now - self._due)
        self._late_total_s += late
        self.lag_s += SMOOTHING * (late - self.lag_s)
        if self.lag_s > HIGH_LAG_S:
            self.pressure = min(1.0, max(START, self.pressure * RISE))
        elif self.lag_s < LOW_LAG_S:
            self.pressure = self.pressure * DECAY if self.pressure > START / 4 else 0.0
        if now - self._busy_since >= BUSY_WINDOW_S:
            cpu = time.thread_time()
            share = min(1.0, (cpu - self._busy_cpu_since) / (now - self._busy_since))
            self.busy_share += BUSY_SMOOTHING * (share - self.busy_share)
            self._busy_since, self._busy_cpu_since = now, cpu
        self._due = now + TICK_S
        asyncio.get_running_loop().call_later(TICK_S, self._tick)
