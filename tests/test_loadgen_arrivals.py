"""The load generator's arrival processes: the rate they promise, and bursts that do not depend on it."""

from __future__ import annotations

import pytest

from loadtests.loadgen import _gap_stream

NS = 1e9


def _arrivals_per_second(rate: float, seed: int, start_s: float, end_s: float) -> float:
    """Arrivals per second between ``start_s`` and ``end_s`` of the bursty stream at ``rate``."""
    t = 0.0
    count = 0
    for gap in _gap_stream("bursty", rate, seed):
        t += gap / NS
        if t >= end_s:
            return count / (end_s - start_s)
        count += t >= start_s
    raise AssertionError("unreachable: the stream is endless")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bursty_levels_differ_in_rate_only(seed: int) -> None:
    # bench_batching's window: 3 s measured after 1 s. A window may catch more or fewer bursts than the mean,
    # but the same ones at every rate, so doubling the rate doubles what the window holds (Poisson noise aside).
    low = _arrivals_per_second(1_500.0, seed, 1.0, 4.0)
    high = _arrivals_per_second(3_000.0, seed, 1.0, 4.0)
    assert 1.85 < high / low < 2.15, (low, high)


def test_bursty_long_run_mean_is_the_rate() -> None:
    # about 2,000 burst-and-calm cycles: the share of time spent bursting averages out to within a few percent
    assert _arrivals_per_second(500.0, 0, 0.0, 2_000.0) == pytest.approx(500.0, rel=0.05)
