"""The online latency model converges to the truth and bounds its tail."""

from __future__ import annotations

import numpy as np

from gateway.latency_model import LatencyModel


def _noisy(rng: np.random.Generator, rows: int, fixed: float = 1.5e-3, per_row: float = 20e-6) -> float:
    return fixed + per_row * rows + float(rng.gamma(2.0, 0.1e-3))  # right-skewed noise, like real latency


def _observe_random(model: LatencyModel, rng: np.random.Generator, batches: int, max_rows: int,
                    fixed: float = 1.5e-3) -> None:
    for _ in range(batches):
        rows = int(rng.integers(1, max_rows))
        model.observe(rows, _noisy(rng, rows, fixed=fixed))


def test_converges_within_5_percent_on_held_out_batch_sizes() -> None:
    rng = np.random.default_rng(3)
    model = LatencyModel()
    for _ in range(400):
        rows = int(rng.choice([1, 2, 4, 8, 32, 128]))
        model.observe(rows, _noisy(rng, rows))
    for held_out in (3, 16, 64, 100, 256):
        truth = float(np.mean([_noisy(rng, held_out) for _ in range(2000)]))
        assert abs(model.mean(held_out) - truth) / truth < 0.05, (held_out, model.mean(held_out), truth)


def test_bound_covers_the_tail_it_claims() -> None:
    rng = np.random.default_rng(4)
    model = LatencyModel(tail_quantile=0.99)
    _observe_random(model, rng, 600, 128)
    samples = [(_noisy(rng, 50), model.bound(50)) for _ in range(5000)]
    covered = np.mean([observed <= bound for observed, bound in samples])
    assert 0.97 <= covered <= 0.999, covered
    assert model.bound(50) > model.mean(50)


def test_follows_a_change_in_the_machine() -> None:
    rng = np.random.default_rng(5)
    model = LatencyModel(half_life_batches=50)
    _observe_random(model, rng, 300, 64)
    _observe_random(model, rng, 400, 64, fixed=3e-3)  # a noisy neighbour doubles the fixed cost
    intercept, slope = model.coefficients()
    assert abs(intercept - (3e-3 + 0.2e-3)) < 0.3e-3  # gamma(2, 0.1 ms) has mean 0.2 ms
    assert abs(slope - 20e-6) < 4e-6


def test_rows_within_inverts_bound() -> None:
    model = LatencyModel()
    for rows in (1, 10, 100) * 20:
        model.observe(rows, 1e-3 + 1e-5 * rows)
    assert model.rows_within(1e-3 + 1e-5 * 50 + 1e-9, cap=1000) == 50
    assert model.rows_within(0.5e-3, cap=1000) == 0
    assert model.rows_within(10.0, cap=256) == 256


def test_a_single_batch_size_gives_a_flat_model() -> None:
    model = LatencyModel()
    for _ in range(10):
        model.observe(8, 2e-3)
    intercept, slope = model.coefficients()
    assert slope == 0.0
    assert abs(intercept - 2e-3) < 1e-12
    assert abs(model.mean(1000) - 2e-3) < 1e-12


def test_a_burst_of_bad_luck_inflates_the_margin_only_for_a_while() -> None:
    model = LatencyModel(residual_max_age_s=30.0)
    for i in range(100):
        model.observe(10, 2e-3, now=float(i) * 0.01)
    for i in range(20):  # a stalled event loop: 300 ms batches for a moment
        model.observe(10, 0.3, now=1.0 + i * 0.01)
    assert model.bound(10) > 0.1
    for i in range(64):  # a minute later, business as usual
        model.observe(10, 2e-3, now=61.0 + i * 0.01)
    assert model.bound(10) < 0.05
