"""kernels.histograms against numpy: the compiled binning must equal ``searchsorted(side="right")`` exactly.

The manifests' reference counts were made with that numpy rule (``serving.demo_models.bin_counts``),
so any disagreement — on an edge, at ±inf, for float32 input — would show up as drift that is not there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.histograms import (
    COLUMN_BLOCK_ROWS,
    COLUMN_SCAN_MIN_ROWS,
    LINEAR_SCAN_MAX_EDGES,
    PROBABILITY_EDGES,
    count_agreement,
    label_counts,
    new_counts,
    pack_edges,
    probability_edges,
    reference_counts,
    update_counts,
)

Edges = list[npt.NDArray[np.float64]]


def numpy_counts(edge_lists: Sequence[npt.NDArray[np.float64]], x: npt.NDArray[np.floating]) -> npt.NDArray[np.int64]:
    """The reference: searchsorted + bincount per feature, NaN in the last column, padding zero."""
    k = max(e.size for e in edge_lists)
    out = np.zeros((len(edge_lists), k + 2), dtype=np.int64)
    for f, e in enumerate(edge_lists):
        col = x[:, f]
        finite = col[~np.isnan(col)]
        out[f, : e.size + 1] = np.bincount(np.searchsorted(e, finite, side="right"), minlength=e.size + 1)
        out[f, -1] = int(np.isnan(col).sum())
    return out


def random_edges(rng: np.random.Generator, n_features: int, float32_exact: bool) -> Edges:
    """Deduplicated sorted edges, 1 to 11 per feature, optionally float32-representable."""
    out = []
    for _ in range(n_features):
        e = rng.normal(size=int(rng.integers(1, 12))) * rng.uniform(0.1, 100)
        if float32_exact:
            e = e.astype(np.float32).astype(np.float64)
        out.append(np.unique(e))
    return out


def tricky_values(
    rng: np.random.Generator, edge_lists: Edges, rows: int, dtype: type[np.floating]
) -> npt.NDArray[np.floating]:
    """Random values with a quarter exactly on edges and a sprinkling of ±inf and NaN."""
    x = rng.normal(size=(rows, len(edge_lists))) * 50
    for f, e in enumerate(edge_lists):
        on_edge = rng.random(rows) < 0.25
        x[on_edge, f] = rng.choice(e, size=int(on_edge.sum()))
    special = rng.random(x.shape)
    x[special < 0.03] = np.nan
    x[(special >= 0.03) & (special < 0.05)] = np.inf
    x[(special >= 0.05) & (special < 0.07)] = -np.inf
    return x.astype(dtype)


@pytest.mark.parametrize("search", ["linear", "binary"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [0, 1, 7, COLUMN_SCAN_MIN_ROWS - 1, COLUMN_SCAN_MIN_ROWS, COLUMN_BLOCK_ROWS,
                                  COLUMN_BLOCK_ROWS + 1, 1000])
def test_counts_equal_searchsorted(dtype: type[np.floating], rows: int, search: str) -> None:
    rng = np.random.default_rng(rows)
    edge_lists = random_edges(rng, 13, float32_exact=dtype is np.float32)
    if search == "binary":  # one feature with more edges than the linear scan takes: K > LINEAR_SCAN_MAX_EDGES
        many = rng.normal(size=LINEAR_SCAN_MAX_EDGES + 20) * 30
        edge_lists[4] = np.unique(many.astype(np.float32).astype(np.float64))
    edges, n_edges = pack_edges(edge_lists)
    assert (edges.shape[1] > LINEAR_SCAN_MAX_EDGES) == (search == "binary")
    x = tricky_values(rng, edge_lists, rows, dtype)
    counts = new_counts(edges)
    update_counts(counts, edges, n_edges, x)
    np.testing.assert_array_equal(counts, numpy_counts(edge_lists, x))
    assert counts.sum() == x.size


def test_both_searches_agree_on_the_same_edges() -> None:
    """The same edges padded past the linear-scan limit (binary search) bin exactly as unpadded (linear scan)."""
    rng = np.random.default_rng(21)
    edge_lists = random_edges(rng, 9, float32_exact=False)
    edges, n_edges = pack_edges(edge_lists)
    wide = np.full((edges.shape[0], LINEAR_SCAN_MAX_EDGES + 1), np.inf)
    wide[:, : edges.shape[1]] = edges
    x = tricky_values(rng, edge_lists, 2000, np.float64)
    narrow_counts, wide_counts = new_counts(edges), new_counts(wide)
    update_counts(narrow_counts, edges, n_edges, x)
    update_counts(wide_counts, wide, n_edges, x)
    k = edges.shape[1]
    np.testing.assert_array_equal(wide_counts[:, : k + 1], narrow_counts[:, : k + 1])
    np.testing.assert_array_equal(wide_counts[:, -1], narrow_counts[:, -1])
    assert wide_counts[:, k + 1 : -1].sum() == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_contiguous_input_and_accumulation(dtype: type[np.floating]) -> None:
    rng = np.random.default_rng(7)
    edge_lists = random_edges(rng, 5, float32_exact=True)
    edges, n_edges = pack_edges(edge_lists)
    wide = tricky_values(rng, edge_lists * 2, 300, dtype)
    strided = wide[::3, ::2]  # every other column: not C-contiguous
    fortran = np.asfortranarray(wide[:, :5])
    assert not strided.flags.c_contiguous and not fortran.flags.c_contiguous
    counts = new_counts(edges)
    update_counts(counts, edges, n_edges, strided)
    update_counts(counts, edges, n_edges, fortran)
    expected = numpy_counts(edge_lists, strided) + numpy_counts(edge_lists, fortran)
    np.testing.assert_array_equal(counts, expected)


def test_fixed_example_matches_the_manifest_rule() -> None:
    edges, n_edges = pack_edges([[0.0, 1.0, 2.0], [5.0]])
    x = np.array([[-np.inf, 5.0], [0.0, 4.9], [0.5, np.nan], [1.0, np.inf], [2.0, -np.inf], [np.inf, 5.0],
                  [np.nan, 6.0]])
    counts = new_counts(edges)
    update_counts(counts, edges, n_edges, x)
    # K = 3: feature 0 is under, [0,1), [1,2), over, NaN; feature 1 is under, over, pad, pad, NaN
    assert counts.tolist() == [[1, 2, 1, 2, 1], [2, 4, 0, 0, 1]]


finite_floats = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=50, deadline=None)
@given(
    edge_sets=st.lists(st.lists(finite_floats, min_size=1, max_size=11, unique=True), min_size=1, max_size=6),
    data=st.data(),
)
def test_counts_equal_searchsorted_property(edge_sets: list[list[float]], data: st.DataObject) -> None:
    edge_lists = [np.array(sorted(e)) for e in edge_sets]
    edges, n_edges = pack_edges(edge_lists)
    pool = [*sorted({v for e in edge_sets for v in e}), np.inf, -np.inf, np.nan]
    value = st.one_of(st.sampled_from(pool), finite_floats)
    rows = data.draw(st.integers(0, 20))
    x = np.array(data.draw(st.lists(st.lists(value, min_size=len(edge_lists), max_size=len(edge_lists)),
                                    min_size=rows, max_size=rows)), dtype=np.float64).reshape(rows, len(edge_lists))
    counts = new_counts(edges)
    update_counts(counts, edges, n_edges, x)
    np.testing.assert_array_equal(counts, numpy_counts(edge_lists, x))


def test_pack_edges_pads_with_inf() -> None:
    edges, n_edges = pack_edges([[1.0, 2.0, 3.0], np.array([0.5]), (7.0, 8.0)])
    assert edges.dtype == np.float64 and n_edges.dtype == np.int64
    assert n_edges.tolist() == [3, 1, 2]
    np.testing.assert_array_equal(edges, [[1, 2, 3], [0.5, np.inf, np.inf], [7, 8, np.inf]])
    assert new_counts(edges).shape == (3, 5) and new_counts(edges).dtype == np.int64


@pytest.mark.parametrize(
    ("edge_lists", "message"),
    [
        ([[1.0, 2.0], []], "feature 1: needs at least one edge"),
        ([[1.0, 1.0]], "feature 0: edges must be strictly increasing"),
        ([[0.0], [2.0, 1.0]], "feature 1: edges must be strictly increasing"),
        ([[0.0], [1.0], [np.nan, 1.0]], "feature 2: edges must be finite"),
        ([[0.0, np.inf]], "feature 0: edges must be finite"),
        ([[[0.0, 1.0]]], "feature 0: edges must be a 1-D"),
        ([], "at least one feature"),
    ],
)
def test_pack_edges_rejects(edge_lists: list[list[float]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pack_edges(edge_lists)


def test_update_counts_checks_shapes_inside_the_kernel() -> None:
    edges, n_edges = pack_edges([[0.0, 1.0], [2.0]])
    counts = new_counts(edges)
    with pytest.raises(ValueError, match="same number of features"):
        update_counts(counts, edges, n_edges, np.zeros((1, 3)))
    with pytest.raises(ValueError, match="same number of features"):
        update_counts(counts, edges, n_edges[:1], np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"counts must have shape \(F, K \+ 2\)"):
        update_counts(np.zeros((2, 3), dtype=np.int64), edges, n_edges, np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"counts must have shape \(F, K \+ 2\)"):
        update_counts(np.zeros((3, 4), dtype=np.int64), edges, n_edges, np.zeros((1, 2)))
    with pytest.raises(numba.core.errors.TypingError):
        update_counts(counts, edges, n_edges, np.zeros(2))
    assert counts.sum() == 0, "nothing counted by a refused call"


def test_n_edges_is_clamped_so_nothing_is_written_past_the_bins() -> None:
    edges, _ = pack_edges([np.array([0.0, 1.0, 2.0]), np.array([0.0])])
    x = np.array([[-1.0, -1.0], [0.5, 0.5], [5.0, 5.0]], dtype=np.float32)
    counts = new_counts(edges)
    update_counts(counts, edges, np.array([99, 99], dtype=np.int64), x)
    assert counts[:, -1].sum() == 0 and counts.sum() == x.size


def test_read_only_input_and_float_counts() -> None:
    """Binary tensors decode with np.frombuffer (read-only); a float64 counts array holds weights."""
    rng = np.random.default_rng(9)
    edge_lists = random_edges(rng, 4, float32_exact=True)
    edges, n_edges = pack_edges(edge_lists)
    values = tricky_values(rng, edge_lists, COLUMN_SCAN_MIN_ROWS + 10, np.float32)  # binned a column at a time
    x = np.frombuffer(values.tobytes(), dtype=np.float32).reshape(values.shape)
    assert not x.flags.writeable
    counts = new_counts(edges)
    update_counts(counts, edges, n_edges, x)
    np.testing.assert_array_equal(counts, numpy_counts(edge_lists, values))
    weights = np.zeros(counts.shape, dtype=np.float64)
    update_counts(weights, edges, n_edges, x)
    np.testing.assert_array_equal(weights, counts.astype(np.float64))


def test_a_weight_counts_each_value_that_many_times_nans_included() -> None:
    """What a sample of every ``step``-th row relies on: each sampled value stands for ``step`` rows."""
    rng = np.random.default_rng(5)
    edge_lists = random_edges(rng, 6, float32_exact=True)
    edges, n_edges = pack_edges(edge_lists)
    values = tricky_values(rng, edge_lists, 3 * COLUMN_SCAN_MIN_ROWS, np.float32)  # a sample binned by columns too
    assert np.isnan(values).any()
    once, weighted = new_counts(edges), new_counts(edges)
    update_counts(once, edges, n_edges, values)
    update_counts(weighted, edges, n_edges, values[::3], 3)
    np.testing.assert_array_equal(weighted, 3 * numpy_counts(edge_lists, values[::3]))
    np.testing.assert_array_equal(once, numpy_counts(edge_lists, values))


def test_reference_counts_round_trip() -> None:
    rng = np.random.default_rng(3)
    edge_lists = random_edges(rng, 8, float32_exact=False)
    edges, n_edges = pack_edges(edge_lists)
    x = tricky_values(rng, edge_lists, 500, np.float64)
    live = new_counts(edges)
    update_counts(live, edges, n_edges, x)
    # The manifest's form: per feature the n_f + 1 counts, and a NaN count.
    profile = [live[f, : n + 1].tolist() for f, n in enumerate(n_edges)]
    nans = live[:, -1].tolist()
    np.testing.assert_array_equal(reference_counts(profile, nans, edges), live)


def test_reference_counts_rejects() -> None:
    edges, _ = pack_edges([[0.0, 1.0], [2.0]])
    with pytest.raises(ValueError, match="feature 1: 1 edges need 2 counts, got 3"):
        reference_counts([[1, 2, 3], [1, 2, 3]], [0, 0], edges)
    with pytest.raises(ValueError, match="edges have 2 features"):
        reference_counts([[1, 2, 3]], [0], edges)
    with pytest.raises(ValueError, match="feature 0: counts must be non-negative"):
        reference_counts([[1, -2, 3], [1, 2]], [0, 0], edges)
    with pytest.raises(ValueError, match="feature 1: counts must be non-negative"):
        reference_counts([[1, 2, 3], [1, 2]], [0, -1], edges)


def test_probability_edges_bin_class_probabilities() -> None:
    assert PROBABILITY_EDGES.tolist() == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert not PROBABILITY_EDGES.flags.writeable
    edges, n_edges = probability_edges(3)
    assert edges.shape == (3, 9) and n_edges.tolist() == [9, 9, 9]
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.ones(3), size=400).astype(np.float32)
    probs[:3] = np.float32(0.1), np.float32(0.9), 0.0  # on an edge: float32(0.1) > 0.1, float32(0.9) < 0.9
    counts = new_counts(edges)
    update_counts(counts, edges, n_edges, probs)
    np.testing.assert_array_equal(counts, numpy_counts([PROBABILITY_EDGES] * 3, probs))
    assert counts.shape == (3, 11) and counts[:, :10].sum() == probs.size
    p64 = np.array([[0.0, 0.1, 0.95]])
    c64 = new_counts(edges)
    update_counts(c64, edges, n_edges, p64)
    assert c64[:, :10].argmax(axis=1).tolist() == [0, 1, 9]
    with pytest.raises(ValueError):
        probability_edges(0)


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_label_counts_matches_bincount(dtype: type[np.integer]) -> None:
    rng = np.random.default_rng(11)
    labels = rng.integers(-2, 6, size=1000).astype(dtype)
    counts = np.zeros(5, dtype=np.int64)  # 4 classes + "other"
    label_counts(counts, labels)
    inside = labels[(labels >= 0) & (labels < 4)]
    expected = np.append(np.bincount(inside, minlength=4), labels.size - inside.size)
    np.testing.assert_array_equal(counts, expected)
    label_counts(counts, labels[:0])
    np.testing.assert_array_equal(counts, expected)


def test_count_agreement_matches_numpy() -> None:
    rng = np.random.default_rng(12)
    a = rng.integers(0, 3, size=777)
    b = rng.integers(0, 3, size=777)
    assert count_agreement(a, b) == int(np.sum(a == b))
    assert count_agreement(a, a) == a.size
    assert count_agreement(a[:0], b[:0]) == 0
    with pytest.raises(ValueError):
        count_agreement(a, b[:-1])
