"""The batching benchmark's own arithmetic: medians over repeats and its rate options (no servers run)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from loadtests.bench_batching import (
    Point,
    highest_sustained,
    levels,
    medians,
    parse_args,
    rotated,
    run_summary,
    sustains,
)
from loadtests.report import Report


def _point(policy: str, goodput: float, p99_ms: float, repeat: int, load_pct: int = 10) -> Point:
    return Point("breast-cancer", "poisson", load_pct, policy, 100.0, 99.0, 297, goodput, 5.0, p99_ms, 1, 0, 2.0,
                 50.0, math.nan, repeat=repeat)


def test_a_load_run_summary_fills_a_point() -> None:
    """The sweep builds each point from ``run_summary``'s keys: one added there and not here (``ok``, for
    ab_gateway) stopped ``make bench-batching`` at its first point with a TypeError."""
    report = Report(mode="open", url="http://127.0.0.1:1", model="breast-cancer", payload="json", rows=1,
                    duration_s=3.0, warmup_s=1.0, ok=297, errors={"http_429": 3, "http_503": 1}, throughput=99.0,
                    latency_ms={"p50": 5.0, "p99": 20.0}, goodput=95.0)
    point = Point("breast-cancer", "poisson", 10, "adaptive", 100.0, **run_summary(report), rows_per_batch=2.0,
                  gateway_cpu_pct=50.0, admission_limit_rows=64.0)
    assert (point.ok, point.ok_rps, point.goodput, point.p99_ms) == (297, 99.0, 95.0, 20.0)
    assert (point.refused, point.failed) == (3, 1)


def test_each_point_is_the_median_of_its_repeats_figure_by_figure() -> None:
    points = [_point("adaptive", g, p99, i) for i, (g, p99) in enumerate([(90.0, 20.0), (99.0, 30.0), (10.0, 100.0)])]
    points += [_point("adaptive", 50.0, 12.0, 0, load_pct=30), _point("fixed-8-1ms", 70.0, 15.0, 0)]
    by_key = {(p.policy, p.load_pct): p for p in medians(points)}
    assert len(by_key) == 3  # one per (model, trace, load, policy)
    adaptive = by_key[("adaptive", 10)]
    assert (adaptive.goodput, adaptive.p99_ms) == (90.0, 30.0)  # medians of each column, not one run's row
    assert math.isnan(adaptive.admission_limit_rows)
    assert by_key[("fixed-8-1ms", 10)].goodput == 70.0


def test_repeats_interleave_every_level_and_capacities_name_known_models() -> None:
    args = parse_args(["--repeats", "2", "--loads", "10,30",
                       "--capacity", "breast-cancer=3600,breast-cancer-wide=3750"])
    assert levels(args) == [(0, 10), (0, 30), (1, 10), (1, 30)]
    assert args.capacity == {"breast-cancer": 3600.0, "breast-cancer-wide": 3750.0}
    for bad in (["--capacity", "champion=3600"], ["--capacity", "breast-cancer=0"],
                ["--capacity", "breast-cancer=nan"], ["--repeats", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_capacity_is_the_highest_rate_seen_sustained_below_the_closed_loop_figure() -> None:
    tried: list[float] = []

    def knee_at(knee: float) -> Callable[[float], bool]:  # a server that keeps up with anything up to ``knee``
        def probe(rate: float) -> bool:
            tried.append(rate)
            return rate <= knee
        return probe

    found = highest_sustained(knee_at(5200.0), 8000.0, steps=6)
    assert tried[0] == 8000.0 and len(tried) == 7
    assert 5200.0 - 8000.0 / 64 <= found <= 5200.0  # within the last bracket, and a rate that passed
    assert found in tried
    tried.clear()
    assert highest_sustained(knee_at(9000.0), 8000.0) == 8000.0 and tried == [8000.0]
    assert highest_sustained(knee_at(0.0), 8000.0, steps=3) == 0.0  # nothing sustained: nothing claimed


def test_a_run_is_sustained_only_if_it_kept_up_and_met_the_slo() -> None:
    assert sustains({"ok_rps": 990.0, "p99_ms": 24.0}, 1000.0, 25.0)
    assert not sustains({"ok_rps": 970.0, "p99_ms": 10.0}, 1000.0, 25.0)  # fell behind (or refused)
    assert not sustains({"ok_rps": 1000.0, "p99_ms": 26.0}, 1000.0, 25.0)
    assert not sustains({"ok_rps": 1000.0, "p99_ms": math.nan}, 1000.0, 25.0)  # nothing answered


def test_every_policy_runs_first_in_turn_and_each_level_runs_every_policy_once() -> None:
    policies = ["adaptive", "nobatch", "fixed-8-1ms"]
    orders = [rotated(policies, step) for step in range(6)]
    assert all(sorted(order) == sorted(policies) for order in orders)
    assert [order[0] for order in orders] == policies * 2
