"""The admission limit (AIMD on rows in the system) and the arrival-rate estimate the batcher plans with."""

from __future__ import annotations

import pytest

from gateway.admission import AdmissionLimit
from gateway.arrivals import ArrivalRate


def test_a_late_batch_cuts_the_limit_once_per_objective() -> None:
    limit = AdmissionLimit(objective_s=0.02, initial_rows=100, floor_rows=2)
    limit.observe(0.05, batch_rows=10, now=1.0)
    assert limit.rows == pytest.approx(80)
    limit.observe(0.05, batch_rows=10, now=1.01)  # the cut has not had time to show yet
    assert limit.rows == pytest.approx(80)
    limit.observe(0.05, batch_rows=10, now=1.021)
    assert limit.rows == pytest.approx(64)


def test_the_limit_never_falls_below_its_floor() -> None:
    limit = AdmissionLimit(objective_s=0.01, initial_rows=10, floor_rows=2)
    for step in range(50):
        limit.observe(1.0, batch_rows=1, now=float(step))
    assert limit.rows == 2
    assert limit.admits(rows_in_system=1, rows=1)


def test_batches_within_the_objective_raise_the_limit_by_about_a_row_per_window() -> None:
    limit = AdmissionLimit(objective_s=0.02, initial_rows=50, floor_rows=2)
    for step in range(50):  # 50 batches of 10 rows = ten windows of 50 rows
        limit.observe(0.005, batch_rows=10, now=step * 0.001)
    assert 58 < limit.rows < 60


def test_an_empty_deployment_admits_any_request_and_a_busy_one_only_what_fits() -> None:
    limit = AdmissionLimit(objective_s=0.02, initial_rows=8, floor_rows=2)
    assert limit.admits(rows_in_system=0, rows=500)
    assert limit.admits(rows_in_system=5, rows=3)
    assert not limit.admits(rows_in_system=5, rows=4)


def test_arrival_rate_follows_a_steady_stream_and_decays_in_silence() -> None:
    rate = ArrivalRate(time_constant_s=0.1, tick_s=0.01, now=0.0)
    t = 0.0
    for _ in range(1000):  # 1,000 rows/s for a second, one row per millisecond
        t += 0.001
        rate.add(1, t)
    assert rate.rows_per_second(t) == pytest.approx(1000, rel=0.1)
    assert rate.rows_per_second(t + 1.0) < 10  # a second of silence, read without any new arrival
