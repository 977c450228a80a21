"""kernels.divergences against reference implementations computed here, plus their defining properties.

References: numpy formulas for PSI, KL and KS on the same proportions and epsilon,
``scipy.spatial.distance.jensenshannon`` for JS and ``scipy.stats.wasserstein_distance``
for W1 with each bin's mass at its left edge. Properties (hypothesis): zero for
identical distributions, symmetry, NaN for an empty side, and growth under a growing
shift of a fixed large sample.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon  # type: ignore[import-untyped]
from scipy.stats import wasserstein_distance  # type: ignore[import-untyped]

from kernels.divergences import EPSILON, js, kl, ks, psi, wasserstein1
from kernels.histograms import new_counts, pack_edges, update_counts

Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

RTOL = 1e-9
ATOL = 1e-12


# --- references, one feature (one row of the packed layout) at a time ---------------------------------------


def ref_psi(a: IntArray, e: IntArray) -> float:
    p = np.maximum(a / a.sum(), EPSILON)
    q = np.maximum(e / e.sum(), EPSILON)
    return float(np.sum((p - q) * np.log(p / q)))


def ref_kl(a: IntArray, e: IntArray) -> float:
    p = np.maximum(a / a.sum(), EPSILON)
    q = np.maximum(e / e.sum(), EPSILON)
    return float(np.sum(p * np.log(p / q)))


def ref_js(a: IntArray, e: IntArray) -> float:
    return float(jensenshannon(a.astype(np.float64), e.astype(np.float64), base=2) ** 2)


def ref_ks(a: IntArray, e: IntArray) -> float:
    a, e = a[:-1], e[:-1]  # NaN column excluded
    return float(np.max(np.abs(np.cumsum(a) / a.sum() - np.cumsum(e) / e.sum())))


def ref_w1(a: IntArray, e: IntArray, edges: Array, n: int) -> float:
    own = edges[:n]
    positions = np.concatenate([own[:1], own])  # underflow at e_0, inner bin i at e_i, overflow at e_last
    return float(wasserstein_distance(positions, positions, a[: n + 1], e[: n + 1]))


Pair = tuple[IntArray, IntArray, Array, IntArray]


@st.composite
def packed_pairs(draw: st.DrawFn) -> Pair:
    """Two count arrays in the packed layout (zero padding, NaN last) with their edges; every side non-empty."""
    n_features = draw(st.integers(1, 5))
    edge_lists = []
    for _ in range(n_features):
        e = draw(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=11, unique=True))
        edge_lists.append(np.array(sorted(e)))
    edges, n_edges = pack_edges(edge_lists)
    sides = []
    for _ in range(2):
        counts = new_counts(edges)
        for f, n in enumerate(n_edges.tolist()):
            counts[f, : n + 1] = draw(st.lists(st.integers(0, 1000), min_size=n + 1, max_size=n + 1))
            counts[f, -1] = draw(st.integers(0, 50))
            if counts[f, :-1].sum() == 0:
                counts[f, draw(st.integers(0, n))] = 1  # at least one non-NaN value, so KS and W1 are defined
        sides.append(counts)
    return sides[0], sides[1], edges, n_edges


def all_measures(a: IntArray, e: IntArray, edges: Array, n_edges: IntArray) -> dict[str, Array]:
    return {"psi": psi(a, e), "kl": kl(a, e), "js": js(a, e), "ks": ks(a, e), "w1": wasserstein1(a, e, edges, n_edges)}


def check_against_references(a: IntArray, e: IntArray, edges: Array, n_edges: IntArray) -> None:
    got = all_measures(a, e, edges, n_edges)
    refs: dict[str, Callable[[IntArray, IntArray], float]] = {
        "psi": ref_psi, "kl": ref_kl, "js": ref_js, "ks": ref_ks,
    }
    for name, ref in refs.items():
        expected = [ref(a[f], e[f]) for f in range(a.shape[0])]
        np.testing.assert_allclose(got[name], expected, rtol=RTOL, atol=ATOL, err_msg=name)
    expected_w1 = [ref_w1(a[f], e[f], edges[f], int(n_edges[f])) for f in range(a.shape[0])]
    np.testing.assert_allclose(got["w1"], expected_w1, rtol=RTOL, atol=ATOL * np.abs(edges[np.isfinite(edges)]).max(),
                               err_msg="w1")
    for name, values in got.items():
        assert values.dtype == np.float64 and values.shape == (a.shape[0],), name


# --- agreement with the references ---------------------------------------------------------------------------


def test_fixed_example_by_hand() -> None:
    edges, n_edges = pack_edges([[0.0, 1.0, 3.0]])
    a = np.array([[0, 2, 2, 0, 0]], dtype=np.int64)  # half in [0,1), half in [1,3)
    e = np.array([[0, 4, 0, 0, 0]], dtype=np.int64)  # all in [0,1)
    assert ks(a, e).tolist() == [0.5]
    # CDFs: after [0,1) 0.5 vs 1, after [1,3) 1 vs 1: |0.5| * (1 - 0) + 0 * (3 - 1)
    assert wasserstein1(a, e, edges, n_edges).tolist() == [0.5]
    assert js(a, e)[0] == pytest.approx(0.5 * (0.5 * np.log2(0.5 / 0.75) + 1.0 * np.log2(1 / 0.75))
                                        + 0.5 * 0.5 * np.log2(0.5 / 0.25), rel=1e-12)
    assert psi(a, e)[0] == pytest.approx((0.5 - 1) * np.log(0.5) + (0.5 - EPSILON) * np.log(0.5 / EPSILON), rel=1e-12)


def test_random_histograms_match_references() -> None:
    rng = np.random.default_rng(0)
    edge_lists = [np.unique(rng.normal(size=int(rng.integers(1, 12)))) for _ in range(40)]
    edges, n_edges = pack_edges(edge_lists)
    a, e = new_counts(edges), new_counts(edges)
    update_counts(a, edges, n_edges, rng.normal(0.0, 1.0, size=(3000, 40)))
    x = rng.normal(0.3, 1.2, size=(2000, 40))
    x[rng.random(x.shape) < 0.02] = np.nan
    update_counts(e, edges, n_edges, x)
    check_against_references(a, e, edges, n_edges)
    check_against_references(e, a, edges, n_edges)


@settings(max_examples=50, deadline=None)
@given(packed_pairs())
def test_matches_references_property(pair: Pair) -> None:
    check_against_references(*pair)


def test_float64_counts_give_the_same_values() -> None:
    """A float64 ring (weights) goes through its own specialisation; whole-number weights must agree."""
    rng = np.random.default_rng(2)
    edges, n_edges = pack_edges([np.sort(rng.normal(size=9)) for _ in range(6)])
    a, e = new_counts(edges), new_counts(edges)
    update_counts(a, edges, n_edges, rng.normal(size=(500, 6)))
    update_counts(e, edges, n_edges, rng.normal(0.5, 1.0, size=(500, 6)))
    as_int = all_measures(a, e, edges, n_edges)
    as_float = all_measures(a.astype(np.float64), e.astype(np.float64), edges, n_edges)
    for name in as_int:
        np.testing.assert_allclose(as_float[name], as_int[name], rtol=1e-12, atol=0, err_msg=name)


def test_one_dimensional_use_as_a_single_row() -> None:
    """A prediction histogram of one output is a (1, B) array."""
    a = np.array([[5, 10, 20, 10, 5, 0]])
    e = np.array([[10, 10, 10, 10, 10, 0]])
    edges, n_edges = pack_edges([[0.2, 0.4, 0.6, 0.8]])
    check_against_references(a, e, edges, n_edges)


# --- properties -------------------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(packed_pairs(), st.integers(1, 7))
def test_identical_distributions_give_zero(pair: Pair, scale: int) -> None:
    a, _, edges, n_edges = pair
    for name, values in all_measures(a, a, edges, n_edges).items():
        assert np.all(values == 0.0), name
    for name, values in all_measures(a, a * scale, edges, n_edges).items():  # same proportions, other totals
        np.testing.assert_allclose(values, 0.0, atol=1e-12, err_msg=name)


@settings(max_examples=50, deadline=None)
@given(packed_pairs())
def test_symmetric_measures(pair: Pair) -> None:
    a, e, edges, n_edges = pair
    forward = all_measures(a, e, edges, n_edges)
    backward = all_measures(e, a, edges, n_edges)
    for name in ("psi", "js", "ks", "w1"):
        np.testing.assert_allclose(forward[name], backward[name], rtol=1e-12, atol=1e-15, err_msg=name)
    assert np.all(forward["js"] >= 0) and np.all(forward["js"] <= 1)
    assert np.all(forward["ks"] >= 0) and np.all(forward["ks"] <= 1)
    assert np.all(forward["psi"] >= 0) and np.all(forward["w1"] >= 0)


@settings(max_examples=50, deadline=None)
@given(packed_pairs(), st.data())
def test_empty_side_gives_nan_and_leaves_other_features_alone(pair: Pair, data: st.DataObject) -> None:
    a, e, edges, n_edges = pair
    f = data.draw(st.integers(0, a.shape[0] - 1))
    before = all_measures(a, e, edges, n_edges)
    empty = e.copy()
    empty[f] = 0
    for args in ((a, empty), (empty, a), (empty, empty)):
        after = all_measures(*args, edges, n_edges)
        others = np.arange(a.shape[0]) != f
        for name, values in after.items():
            assert np.isnan(values[f]), name
            assert not np.any(np.isnan(values[others])), name
            if args[0] is a:
                np.testing.assert_array_equal(values[others], before[name][others])


def test_nan_only_side() -> None:
    """Only NaNs: PSI, KL and JS see a (huge) difference in the NaN bin; KS and W1 have no values to order: NaN."""
    edges, n_edges = pack_edges([[0.0, 1.0]])
    a = np.array([[1, 2, 1, 0]])
    e = np.array([[0, 0, 0, 7]])
    got = all_measures(a, e, edges, n_edges)
    assert got["js"].tolist() == [1.0]
    assert got["psi"][0] > 5 and got["kl"][0] > 5
    assert np.isnan(got["ks"][0]) and np.isnan(got["w1"][0])


def test_shape_checks() -> None:
    edges, n_edges = pack_edges([[0.0, 1.0]])
    a = np.zeros((1, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="same shape"):
        psi(a, np.zeros((1, 5), dtype=np.int64))
    with pytest.raises(ValueError, match="same shape"):
        js(a[0], a[0])
    with pytest.raises(ValueError, match="at least one bin"):
        ks(a[:, :1], a[:, :1])
    with pytest.raises(ValueError, match="need edges"):
        wasserstein1(a, a, edges[:, :1], n_edges)


# --- growth under a growing shift of one fixed large sample -------------------------------------------------

SHIFT_GRID = tuple(np.round(np.arange(0.0, 3.01, 0.25), 2).tolist())


@functools.lru_cache(maxsize=1)
def shifted_measures() -> dict[float, dict[str, Array]]:
    """Three differently shaped features, 200,000 rows, binned on their own deciles, shifted by k std.

    The actual sample is the reference sample plus ``k * std``, so the only thing that
    varies is the shift (no resampling noise between shifts).
    """
    rng = np.random.default_rng(20261122)
    n = 200_000
    base = np.column_stack([rng.normal(0.0, 1.0, n), rng.lognormal(0.0, 0.5, n), rng.uniform(-2.0, 2.0, n)])
    edges, n_edges = pack_edges([np.unique(np.quantile(base[:, f], np.linspace(0, 1, 11))) for f in range(3)])
    reference = new_counts(edges)
    update_counts(reference, edges, n_edges, base)
    out = {}
    for k in SHIFT_GRID:
        actual = new_counts(edges)
        update_counts(actual, edges, n_edges, base + k * base.std(axis=0))
        out[k] = all_measures(actual, reference, edges, n_edges)
    return out


def test_measures_grow_with_the_shift() -> None:
    measures = shifted_measures()
    for name in ("psi", "kl", "js", "ks", "w1"):
        series = np.array([measures[k][name] for k in (0.0, 0.5, 1.0, 2.0)])  # (shifts, features)
        assert np.all(series[0] == 0.0), name
        assert np.all(np.diff(series, axis=0) > 0), (name, series)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(SHIFT_GRID), min_size=2, max_size=2, unique=True))
def test_measures_are_monotone_in_the_shift(shifts: list[float]) -> None:
    small, large = sorted(shifts)
    measures = shifted_measures()
    for name in ("psi", "kl", "js", "ks", "w1"):
        assert np.all(measures[small][name] <= measures[large][name]), (name, small, large)
