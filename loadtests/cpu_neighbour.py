"""A noisy neighbour: keeps one core busy for BUSY ms in every PERIOD ms, until stopped or timed out.

Reproduces lateness that load does not cause (another tenant taking the CPU now
and then), to see what the gateway's admission does with it at low load
(loadtests/README.md, "refusing and cutting only while saturated").
"""

from __future__ import annotations

import argparse
import time


def run(busy_s: float, period_s: float, duration_s: float) -> None:
    """Spin ``busy_s`` then sleep the rest of each ``period_s``, for ``duration_s`` in all."""
    stop = time.perf_counter() + duration_s
    while time.perf_counter() < stop:
        spin_until = time.perf_counter() + busy_s
        while time.perf_counter() < spin_until:
            pass
        time.sleep(period_s - busy_s)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m loadtests.cpu_neighbour", description=__doc__.split("\n")[0])
    p.add_argument("--busy-ms", type=float, default=30.0)
    p.add_argument("--period-ms", type=float, default=100.0)
    p.add_argument("--duration", type=float, default=8.0, help="seconds")
    args = p.parse_args(argv)
    if not 0 < args.busy_ms < args.period_ms:
        p.error("--busy-ms must be above 0 and below --period-ms")
    run(args.busy_ms / 1e3, args.period_ms / 1e3, args.duration)


if __name__ == "__main__":
    main()
