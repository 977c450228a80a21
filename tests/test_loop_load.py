"""The event-loop lateness monitor: pressure rises while the loop runs late and vanishes when it is on time."""

from __future__ import annotations

import asyncio
import time

from gateway.loop_load import LoopLoad


async def _watch(load: LoopLoad, seconds: float, block_s: float) -> float:
    """Run the loop for ``seconds``, blocking it ``block_s`` at a time (0 = idle); the highest pressure seen."""
    highest = 0.0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        if block_s:
            time.sleep(block_s)  # a callback hogging the loop, as a CPU-starved gateway's work does
        await asyncio.sleep(0.001)
        highest = max(highest, load.pressure)
    return highest


def test_pressure_rises_while_the_loop_runs_late_and_falls_back_to_zero_when_it_is_on_time() -> None:
    async def main() -> tuple[float, float, float, float]:
        load = LoopLoad.of(asyncio.get_running_loop())
        assert LoopLoad.of(asyncio.get_running_loop()) is load  # one monitor per loop
        idle = await _watch(load, 0.2, 0.0)
        busy = await _watch(load, 0.3, 0.006)
        lag_when_busy = load.lag_s
        await _watch(load, 0.6, 0.0)
        return idle, busy, lag_when_busy, load.pressure

    idle, busy, lag_when_busy, after = asyncio.run(main())
    # (bounds, not zeros: on a 2-core box shared with Ray, an idle loop may still run a tick or two late)
    assert idle < 0.1  # an on-time loop does not ask anyone to hold
    assert lag_when_busy > 0.002
    assert busy == 1.0  # 300 ms of a loop blocked 6 ms at a time: full pressure
    assert after < 0.1  # and 600 ms on time again take it back
