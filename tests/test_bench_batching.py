"""The batching benchmark's own arithmetic: medians over repeats and its rate options (no servers run)."""

from __future__ import annotations

import math

import pytest

from loadtests.bench_batching import Point, levels, medians, parse_args


def _point(policy: str, goodput: float, p99_ms: float, repeat: int, load_pct: int = 10) -> Point:
    return Point("breast-cancer", "poisson", load_pct, policy, 100.0, 99.0, goodput, 5.0, p99_ms, 1, 0, 2.0, 50.0,
                 math.nan, repeat=repeat)


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
