"""The admission limit (rows in the system, steered to a 1% late share) and the arrival-rate estimate."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.admission import AdmissionLimit
from gateway.arrivals import ArrivalRate


def test_five_late_answers_halve_the_limit_and_cuts_come_once_per_objective() -> None:
    limit = AdmissionLimit(objective_s=0.02, initial_rows=100, min_rows=2, late_allowance=0.0)
    limit.observe(answered=5, late=5, rows=5, rows_in_system=100, queued_rows=1, now=1.0)
    assert limit.rows == pytest.approx(50)
    # the cut has not had time to show yet
    limit.observe(answered=1, late=1, rows=1, rows_in_system=50, queued_rows=1, now=1.01)
    assert limit.rows == pytest.approx(50)
    # both late answers count, in one cut
    limit.observe(answered=1, late=1, rows=1, rows_in_system=50, queued_rows=1, now=1.021)
    assert limit.rows == pytest.approx(50 * 2 ** -0.4)
    # a cut is at most a halving
    limit.observe(answered=40, late=40, rows=40, rows_in_system=50, queued_rows=1, now=1.05)
    assert limit.rows == pytest.approx(50 * 2 ** -1.4)


def test_the_limit_settles_where_one_answer_in_a_hundred_is_late() -> None:
    """A deployment whose late share grows with what it holds: 0 up to 50 rows, then 1% per 5 rows more.

    The limit must settle near 55 rows, where 1% of answers are late, from above and from below.
    """
    rng = np.random.default_rng(7)
    for initial in (20.0, 400.0):
        limit = AdmissionLimit(objective_s=0.02, initial_rows=initial, min_rows=2)
        settled = []
        for step in range(40_000):  # a batch of 10 requests every 10 ms, holding what the limit lets in
            late_share = min(1.0, max(0.0, (limit.rows - 50.0) / 500.0))
            limit.observe(answered=10, late=int(rng.binomial(10, late_share)), rows=10,
                          rows_in_system=int(limit.rows), queued_rows=1, now=step * 0.01)
            if step >= 30_000:
                settled.append(limit.rows)
        assert 50 < float(np.median(settled)) < 60


def test_the_limit_never_falls_below_its_floor() -> None:
    limit = AdmissionLimit(objective_s=0.01, initial_rows=10, min_rows=2)
    for step in range(50):
        limit.observe(answered=4, late=4, rows=4, rows_in_system=10, queued_rows=1, now=float(step))
    assert limit.rows == 2
    assert limit.admits(rows_in_system=1, rows=1, requests_in_system=1)


def test_late_answers_never_cut_below_half_an_objective_of_the_throughput_shown() -> None:
    limit = AdmissionLimit(objective_s=0.02, initial_rows=500, min_rows=2)
    for step in range(200):  # 4,000 rows/s for a second, all late: the cuts stop at 4,000 x 10 ms
        limit.observe(answered=20, late=20, rows=20, rows_in_system=500, queued_rows=1, now=step * 0.005)
    assert limit.floor_rows == pytest.approx(40, rel=0.05)
    assert limit.rows == limit.floor_rows
    for step in range(10):  # idle for a minute, then a few batches: silence is no evidence it became slower
        limit.observe(answered=1, late=1, rows=1, rows_in_system=1, queued_rows=1, now=60.0 + step * 0.03)
    assert limit.rows == pytest.approx(40, rel=0.1)
    for step in range(1_000):  # 50 s of serving 20 rows/s, all late: the peak it showed fades
        limit.observe(answered=1, late=1, rows=1, rows_in_system=1, queued_rows=1, now=61.0 + step * 0.05)
    assert limit.rows == 2


def test_a_late_batch_with_nothing_queued_behind_it_does_not_cut() -> None:
    limit = AdmissionLimit(objective_s=0.02, initial_rows=50, min_rows=2, late_allowance=0.0)
    for step in range(100):  # round-trip stalls at low load: late, but no queue to shorten
        limit.observe(answered=1, late=1, rows=1, rows_in_system=1, queued_rows=0, now=step * 0.1)
    assert limit.rows == 50
    limit.observe(answered=1, late=1, rows=1, rows_in_system=30, queued_rows=29, now=11.0)
    assert limit.rows < 50


def _low_load(limit: AdmissionLimit, late_every: int, answers: int = 20_000) -> None:
    """One answer per batch, with 2 rows held (the limit is never tested), a round-trip stall every
    ``late_every`` answers that makes 4 answers late with requests queued behind them."""
    for step in range(answers):
        late = 1 if step % late_every < 4 else 0
        limit.observe(answered=1, late=late, rows=1, rows_in_system=2, queued_rows=late, now=step * 0.01)


def test_stalls_rarer_than_the_objectives_late_share_do_not_ratchet_an_untested_limit_down() -> None:
    limit = AdmissionLimit(objective_s=0.02, initial_rows=50, min_rows=2)
    _low_load(limit, late_every=800)  # 0.5% late: within a p99 objective
    assert limit.rows == 50
    without_allowance = AdmissionLimit(objective_s=0.02, initial_rows=50, min_rows=2, late_allowance=0.0)
    _low_load(without_allowance, late_every=800)
    assert without_allowance.rows < 5  # down to where the 2 rows held test it


def test_late_answers_are_first_paid_from_the_allowance() -> None:
    limit = AdmissionLimit(objective_s=0.02, initial_rows=100, min_rows=2, late_allowance=20.0)
    limit.observe(answered=20, late=20, rows=20, rows_in_system=100, queued_rows=1, now=1.0)
    assert limit.rows == 100
    limit.observe(answered=5, late=5, rows=5, rows_in_system=100, queued_rows=1, now=1.1)
    assert limit.rows == pytest.approx(50)
    for step in range(990):  # 990 answers in time earn back 10 late answers' worth
        limit.observe(answered=1, late=0, rows=1, rows_in_system=1, queued_rows=0, now=2.0 + step * 0.01)
    limit.observe(answered=10, late=10, rows=10, rows_in_system=1, queued_rows=1, now=20.0)
    assert limit.rows == pytest.approx(50)
    limit.observe(answered=1, late=1, rows=1, rows_in_system=1, queued_rows=1, now=21.0)
    assert limit.rows < 50


def test_a_late_share_above_the_objectives_cuts_even_an_untested_limit() -> None:
    limit = AdmissionLimit(objective_s=0.02, initial_rows=50, min_rows=2)
    _low_load(limit, late_every=200)  # 2% late: down until the 2 rows held test it (and answers in time raise it)
    assert limit.rows < 5


def test_answers_in_time_raise_only_a_limit_they_tested() -> None:
    limit = AdmissionLimit(objective_s=0.02, initial_rows=50, min_rows=2)
    for step in range(100):  # a quiet deployment holding 5 rows of its 50: the limit was never near
        limit.observe(answered=5, late=0, rows=5, rows_in_system=5, queued_rows=1, now=step)
    assert limit.rows == 50
    for step in range(100):  # 1,000 answers in time while holding most of it: about two doublings
        limit.observe(answered=10, late=0, rows=10, rows_in_system=int(limit.rows), queued_rows=1, now=step)
    assert 150 < limit.rows < 250


def test_an_empty_deployment_admits_any_request_and_a_busy_one_only_what_fits() -> None:
    limit = AdmissionLimit(objective_s=0.02, initial_rows=8, min_rows=2)
    assert limit.admits(rows_in_system=0, rows=500, requests_in_system=0)
    assert limit.admits(rows_in_system=5, rows=3, requests_in_system=5)
    assert not limit.admits(rows_in_system=5, rows=4, requests_in_system=5)


def test_a_limit_below_a_requests_size_still_admits_one_request_per_slot() -> None:
    """Two execution slots, a limit cut to 3,000 rows: a second 16,384-row request, or a one-row probe before the
    body is read, is admitted beside the first; a third is not, and small requests still meet the limit in rows."""
    limit = AdmissionLimit(objective_s=0.02, initial_rows=3_000, min_rows=2)
    assert limit.admits(rows_in_system=16_384, rows=16_384, requests_in_system=1)
    assert limit.admits(rows_in_system=16_384, rows=1, requests_in_system=1)
    assert not limit.admits(rows_in_system=2 * 16_384, rows=16_384, requests_in_system=2)
    assert limit.admits(rows_in_system=2_990, rows=10, requests_in_system=299)
    assert not limit.admits(rows_in_system=2_991, rows=10, requests_in_system=300)


def test_arrival_rate_follows_a_steady_stream_and_decays_in_silence() -> None:
    rate = ArrivalRate(time_constant_s=0.1, tick_s=0.01, now=0.0)
    t = 0.0
    for _ in range(1000):  # 1,000 rows/s for a second, one row per millisecond
        t += 0.001
        rate.add(1, t)
    assert rate.rows_per_second(t) == pytest.approx(1000, rel=0.1)
    assert rate.rows_per_second(t + 1.0) < 10  # a second of silence, read without any new arrival
