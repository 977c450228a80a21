"""The A/B tool's own logic: its load points, options and table (no servers run)."""

from __future__ import annotations

import argparse
import math

import pytest

from loadtests.ab_gateway import _per_answer, parse_args, parse_point, render


def test_points_name_a_demo_model_a_positive_rate_and_an_arrival_process() -> None:
    assert parse_point("breast-cancer-wide:1130:poisson") == ("breast-cancer-wide", 1130.0, "poisson")
    assert parse_point("breast-cancer:8:closed") == ("breast-cancer", 8.0, "closed")  # 8 connections
    for bad in ("breast-cancer:1130", "champion:1130:poisson", "breast-cancer:0:poisson", "breast-cancer:nan:poisson",
                "breast-cancer:fast:poisson", "breast-cancer:100:steady"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_point(bad)


def test_options_refuse_what_cannot_run() -> None:
    args = parse_args(["--baseline", "HEAD~1", "--points", "breast-cancer:7000:poisson", "--neighbour", "30/100"])
    assert (args.candidate, args.rounds, args.neighbour) == (".", 2, (30.0, 100.0))
    assert (args.rows, args.max_batch_rows) == (1, None)
    for bad in (["--rounds", "0"], ["--neighbour", "100/30"], ["--neighbour", "30"], ["--neighbour", "0/100"],
                ["--rows", "0"], ["--rows", "4096", "--max-batch-rows", "1024"]):
        with pytest.raises(SystemExit):
            parse_args(["--baseline", "HEAD", "--points", "breast-cancer:7000:poisson", *bad])


def test_the_table_puts_every_round_of_each_side_in_its_cell() -> None:
    args = parse_args(["--baseline", "abc", "--points", "breast-cancer:7000:poisson,breast-cancer-wide:2260:bursty",
                       "--duration", "2"])

    def point(goodput: float, refused: int, p99_ms: float, cpu_us: float = 700.0) -> dict[str, float]:
        return {"goodput": goodput, "refused": refused, "p99_ms": p99_ms, "cpu_us_per_answer": cpu_us}

    rounds = [{"baseline": [point(1880.4, 4000, 105.2, 812.6), point(441, 0, 166)],
               "candidate": [point(2975, 2000, 80.8, 640.2), point(322, 10, 370)]},
              {"candidate": [point(128, 8000, 187, 2500), point(472, 2, 298)],
               "baseline": [point(1276, 6000, 111, 1210), point(627, 4, 197)]}]
    table = render(args, rounds).splitlines()
    goodput = table.index("| model | offered | arrivals | baseline | candidate |") + 2
    assert table[goodput] == ("| breast-cancer | 7,000 | poisson | 1,880 (2,000, 105); 1,276 (3,000, 111) "
                              "| 2,975 (1,000, 81); 128 (4,000, 187) |")
    assert table[goodput + 1] == ("| breast-cancer-wide | 2,260 | bursty | 441 (0, 166); 627 (2, 197) "
                                  "| 322 (5, 370); 472 (1, 298) |")
    assert table[-2] == "| breast-cancer | 7,000 | poisson | 813; 1,210 | 640; 2,500 |"
    assert table[-1] == "| breast-cancer-wide | 2,260 | bursty | 700; 700 | 700; 700 |"


def test_cpu_per_answer_counts_the_warm_up_answers_too() -> None:
    args = parse_args(["--baseline", "abc", "--points", "breast-cancer:7000:poisson", "--duration", "6",
                       "--warmup", "2"])
    # 400 ticks (4 s of CPU) over 6,000 answers in the 6 s measured, so ~8,000 over the 8 s the ticks cover
    assert _per_answer(400, {"ok": 6000}, args) == pytest.approx(4e6 / 8000)
    assert math.isnan(_per_answer(400, {"ok": 0}, args))
