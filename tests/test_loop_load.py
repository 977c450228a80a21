"""The event-loop lateness monitor: pressure rises while the loop runs late and vanishes when it is on time."""

from __future__ import annotations

import asyncio
import time

from gateway.loop_load import LoopLoad


async def _busy(load: LoopLoad, seconds: float, block_s: float) -> float:
    """Run the loop for ``seconds``, blocking it ``block_s`` at a time; the highest pressure seen."""
    highest = 0.0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        time.sleep(block_s)  # a callback hogging the loop, as a CPU-starved gateway's work does
        await asyncio.sleep(0.001)
        highest = max(highest, load.pressure)
    return highest


async def _until_relaxed(load: LoopLoad, within_s: float) -> float | None:
    """Seconds until the pressure is back to zero on an unblocked loop, None if not within ``within_s``.

    (A deadline, not a fixed wait: on a 2-core box shared with Ray, the loop of an idle test can still
    run late for a while when Ray's processes are busy.)"""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if load.pressure == 0.0:
            return time.monotonic() - started
        await asyncio.sleep(0.005)
    return None


def test_pressure_rises_while_the_loop_runs_late_and_falls_back_to_zero_when_it_is_on_time() -> None:
    async def main() -> tuple[float | None, float, float, float | None]:
        load = LoopLoad.of(asyncio.get_running_loop())
        assert LoopLoad.of(asyncio.get_running_loop()) is load  # one monitor per loop
        await asyncio.sleep(0.05)
        calm = await _until_relaxed(load, 5.0)
        busy = await _busy(load, 0.3, 0.006)
        lag_when_busy = load.lag_s
        relaxed = await _until_relaxed(load, 5.0)
        return calm, busy, lag_when_busy, relaxed

    calm, busy, lag_when_busy, relaxed = asyncio.run(main())
    assert calm is not None  # an on-time loop does not ask anyone to hold
    assert lag_when_busy > 0.002
    assert busy == 1.0  # 300 ms of a loop blocked 6 ms at a time: full pressure
    assert relaxed is not None and relaxed > 0.1  # on time again, it decays (42 ticks from full), not at once


def test_the_late_clock_counts_how_long_the_loop_kept_callbacks_waiting() -> None:
    async def main() -> tuple[float, float]:
        load = LoopLoad.of(asyncio.get_running_loop())
        await asyncio.sleep(0.02)
        before = load.late_clock()
        await asyncio.sleep(0.1)  # on time: only the timer's own resolution
        on_time = load.late_clock() - before
        before = load.late_clock()
        time.sleep(0.1)  # a callback hogging the loop: read straight after, before any tick could run
        return on_time, load.late_clock() - before

    on_time, blocked = asyncio.run(main())
    assert blocked >= 0.09  # the tick overdue right now counts, not only ticks that already ran
    assert on_time < blocked / 2


def test_busy_share_follows_the_loop_threads_cpu_time_not_its_lateness() -> None:
    """Spinning on the CPU makes the thread busy; blocking without CPU (a sleep, as when a neighbour takes the
    core) makes the loop late but not busy; idle, the share decays."""

    async def spin(seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            chunk = time.monotonic() + 0.001
            while time.monotonic() < chunk:
                pass
            await asyncio.sleep(0)

    async def main() -> tuple[float, float, float, float]:
        load = LoopLoad.of(asyncio.get_running_loop())
        await asyncio.sleep(0.6)
        idle = load.busy_share
        await spin(1.0)
        spinning = load.busy_share
        await _busy(load, 0.6, 0.006)  # blocked in sleeps: late, not on the CPU
        blocked_lag, blocked = load.lag_s, load.busy_share
        return idle, spinning, blocked, blocked_lag

    idle, spinning, blocked, blocked_lag = asyncio.run(main())
    assert idle < 0.2
    assert spinning > 0.5  # a 2-core box shared with Ray: the thread gets most, not all, of a core
    assert blocked < 0.3 and blocked_lag > 0.002
