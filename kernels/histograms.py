"""Streaming per-feature histograms on the model manifests' bins, one compiled call per batch.

Why one packed array: the gateway updates the histograms of every feature of every
decoded batch inline, on the request path, so the update must be a single call into
compiled code — no Python loop per row or per feature, no allocation beyond a few KiB of scratch for
large batches (``COLUMN_SCAN_MIN_ROWS``).

Binning (the convention of the model manifests, ``serving.demo_models.bin_counts``)
----------------------------------------------------------------------------------
Feature ``f`` has ``n_f`` strictly increasing, finite edges ``e_0 < ... < e_{n_f-1}``
(training deciles, deduplicated, so ``n_f`` varies). A non-NaN value ``x`` goes to

* index 0, underflow: ``x < e_0`` (so ``-inf`` lands here),
* index ``i + 1``, inner bin ``i``: ``e_i <= x < e_{i+1}``,
* index ``n_f``, overflow: ``x >= e_{n_f-1}`` (so ``+inf`` and the training maximum land here),

which is ``np.searchsorted(edges_f, x, side="right")``. NaN is counted separately.

Packed layout
-------------
With ``F`` features and ``K = max(n_f)``:

* ``edges``: float64 ``(F, K)``; row ``f`` holds its ``n_f`` edges, then ``+inf`` padding.
* ``n_edges``: int64 ``(F,)``, the ``n_f``.
* ``counts``: int64 ``(F, K + 2)``; columns ``0..n_f`` of row ``f`` are its
  underflow..overflow counts, columns ``n_f + 1..K`` are padding and stay zero forever,
  and the LAST column (index ``K + 1``) is the NaN count. The padding zeros are on both
  sides of any comparison, so the divergences (``kernels.divergences``) see them as
  empty bins that contribute exactly zero.

Counts merge by addition: arrays from several processes or time slots with the same
edges can simply be summed.

Prediction histograms reuse the same machinery: ``probability_edges(n_classes)`` packs
``PROBABILITY_EDGES`` once per class, so a (rows, classes) probability array is binned
by ``update_counts`` like any feature matrix; ``label_counts`` and ``count_agreement``
cover predicted labels and champion/challenger agreement.

Threads: the compiled functions release the GIL (``nogil=True``), so two threads may
run them at once; callers must not update the *same* counts array from two threads
without a lock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt

__all__ = [
    "PROBABILITY_EDGES",
    "count_agreement",
    "label_counts",
    "new_counts",
    "pack_edges",
    "probability_edges",
    "reference_counts",
    "update_counts",
]

_Fn = TypeVar("_Fn", bound=Callable[..., Any])

FloatArray = npt.NDArray[np.floating[Any]]
IntArray = npt.NDArray[np.integer[Any]]
CountArray = npt.NDArray[np.int64] | npt.NDArray[np.float64]
"""Counts: int64, or float64 for weights (each dtype gets its own compiled specialisation)."""


def _njit(fn: _Fn) -> _Fn:
    """``numba.njit(nogil=True, cache=True)`` with the signature kept for mypy (numba ships no types).

    ``cache=True`` writes the machine code next to the module (``__pycache__``), so a
    fresh process skips the compile that would otherwise stall its first requests.
    """
    return cast(_Fn, numba.njit(nogil=True, cache=True)(fn))


LINEAR_SCAN_MAX_EDGES = 128
"""Up to this many edges per row ``update_counts`` scans linearly instead of a binary search.

A one-off measurement on the 2-core AMD EPYC box while choosing the threshold (not repeated by
``loadtests/bench_kernels.py``, which runs 11 edges), fresh random values each call (64 features x 64 rows):
binary search costs 19-43 ns per value for 8-128 edges (its branches mispredict on real
data: it only looked fast when a benchmark replayed the same batch and the branch
predictor learnt it), the branch-free scan 2.8 ns at 8 edges, 4.3 at 32, 15.8 at 128.
"""

COLUMN_SCAN_MIN_ROWS = 16
"""From this many rows (and up to ``LINEAR_SCAN_MAX_EDGES`` edges) ``update_counts`` counts a column at a time.

Row by row, each value scans its feature's edges and is then counted in its bin: about 4 ns a value on the 2-core
Intel Xeon box with 11 edges, and with large requests the histograms were the largest single cost left in the
gateway (1,024 sampled rows of 30 features, 131 µs a batch; 12,288 rows of 2 class probabilities, 95 µs).
Column by column, a block of one feature's values is compared with one edge at a time and the comparisons summed,
loops the compiler turns into SIMD, and no value is counted one by one: 51 and 34 µs (``timeit``, 2026-11-24).
Counting one by one also cost more when most values fell in one bin (108 µs for values of the wrong scale), as
increments of one counter wait for each other; the sums do not. With few rows the column way's fixed costs
catch up: at 8 rows of 30 features both took 2.1 µs, at 1 row it took 1.5 µs against 1.0; 16 leaves a margin.
"""

COLUMN_BLOCK_ROWS = 256
"""Rows per block of the column-at-a-time count: a block of one feature's values stays in L1 while every edge is
compared with it."""

PROBABILITY_EDGES: npt.NDArray[np.float64] = np.arange(1, 10, dtype=np.float64) / 10.0
"""0.1, 0.2, ..., 0.9: ten probability bins, ``p < 0.1`` up to ``p >= 0.9``."""
PROBABILITY_EDGES.flags.writeable = False


def pack_edges(edge_lists: Sequence[npt.ArrayLike]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Pack per-feature edge lists into ``(edges (F, K) float64, +inf-padded; n_edges (F,) int64)``.

    Validates here, once, what the compiled update relies on and never checks per value:
    every feature has at least one edge, all finite, strictly increasing (the binary
    search and the ``+inf`` padding are only correct then).

    Raises:
        ValueError: naming the offending feature index.
    """
    rows: list[npt.NDArray[np.float64]] = []
    for f, raw in enumerate(edge_lists):
        e = np.asarray(raw, dtype=np.float64)
        if e.ndim != 1:
            raise ValueError(f"feature {f}: edges must be a 1-D sequence, got shape {e.shape}")
        if e.size < 1:
            raise ValueError(f"feature {f}: needs at least one edge")
        if not np.all(np.isfinite(e)):
            raise ValueError(f"feature {f}: edges must be finite, got {e.tolist()}")
        if e.size > 1 and not np.all(np.diff(e) > 0):
            raise ValueError(f"feature {f}: edges must be strictly increasing, got {e.tolist()}")
        rows.append(e)
    if not rows:
        raise ValueError("need at least one feature")
    k = max(e.size for e in rows)
    edges = np.full((len(rows), k), np.inf, dtype=np.float64)
    n_edges = np.empty(len(rows), dtype=np.int64)
    for f, e in enumerate(rows):
        edges[f, : e.size] = e
        n_edges[f] = e.size
    return edges, n_edges


def new_counts(edges: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Zeroed counts ``(F, K + 2)`` int64 for packed ``edges`` ``(F, K)``: K + 1 bins at most, plus NaN."""
    return np.zeros((edges.shape[0], edges.shape[1] + 2), dtype=np.int64)


@_njit
def update_counts(
    counts: CountArray,
    edges: npt.NDArray[np.float64],
    n_edges: npt.NDArray[np.int64],
    x: FloatArray,
    weight: int = 1,
) -> None:
    """Add every value of ``x`` (rows, F), float32 or float64, any layout, into ``counts`` in place.

    Each value counts ``weight`` times: a caller that counts a sample of rows, each drawn with
    probability ``1/weight``, keeps the counts unbiased estimates of what every row would have
    given (the Horvitz-Thompson estimator), so samples of batches of different sizes still add.

    One compiled call per batch whatever its size: the loops over rows and features run
    inside numba, which releases the GIL meanwhile. numba compiles one specialisation per
    dtype, layout and writeability of each argument (C-contiguous or strided ``x``,
    read-only ``x`` from ``np.frombuffer``), each cached on disk.

    The shape checks are inside the kernel, not in a Python wrapper: they cost
    nanoseconds there, where a Python wrapper checking dtypes and shapes took a
    single-row update of 30 features from ~0.45 µs to ~1.1 µs (measured on the 2-core
    box; the budget is 2 µs). They are the
    ones without which numba (which does not bounds-check) would write out of bounds;
    ``n_edges`` is trusted (``pack_edges`` made it) but clamped to ``K``, so a wrong
    value can misbin but never write outside ``counts``. A non-2-D ``x`` fails numba's
    typing (``numba.core.errors.TypingError``) before anything is counted. Other real
    dtypes (a float64 ``counts`` of weights, say) work through their own specialisation.

    Finding the bin: for ``K <= LINEAR_SCAN_MAX_EDGES`` (the manifests have ``K <= 11``)
    the kernel counts the edges ``<= v`` with a branch-free scan of the padded row,
    which relies on the ``+inf`` padding of ``pack_edges``, or from ``COLUMN_SCAN_MIN_ROWS`` rows
    the same comparisons a column of values at a time (``_count_by_columns``); above that, a binary
    search over the feature's own ``n_f`` edges. All give ``searchsorted(side="right")``.
    float32 values are compared with the float64 edges after exact widening, as
    ``np.searchsorted`` does.

    Raises:
        ValueError: if ``x``, ``edges``, ``n_edges`` and ``counts`` disagree in shape.
    """
    n_rows = x.shape[0]
    n_feat = x.shape[1]
    k = edges.shape[1]
    if edges.shape[0] != n_feat or n_edges.shape[0] != n_feat:
        raise ValueError("update_counts: x, edges and n_edges must have the same number of features")
    if counts.shape[0] != n_feat or counts.shape[1] != k + 2:
        raise ValueError("update_counts: counts must have shape (F, K + 2) for edges of shape (F, K)")
    nan_col = k + 1
    linear = k <= LINEAR_SCAN_MAX_EDGES
    if linear and n_rows >= COLUMN_SCAN_MIN_ROWS:
        _count_by_columns(counts, edges, n_edges, x, weight)
        return
    for r in range(n_rows):
        for f in range(n_feat):
            v = x[r, f]
            if np.isnan(v):
                counts[f, nan_col] += weight
                continue
            n = max(min(n_edges[f], k), 0)
            if linear:
                # Count the edges <= v over the whole padded row: branch-free, so SIMD and no
                # mispredictions. +inf padding is never <= a finite v; for v = +inf it is,
                # and the clamp below sends +inf to overflow as it should.
                lo = 0
                for i in range(k):
                    lo += edges[f, i] <= v
                if lo > n:
                    lo = n
            else:
                lo = 0
                hi = n
                while lo < hi:  # lo ends at the number of edges <= v: searchsorted(side="right")
                    mid = (lo + hi) >> 1
                    if edges[f, mid] <= v:
                        lo = mid + 1
                    else:
                        hi = mid
            counts[f, lo] += weight


@_njit
def _count_by_columns(
    counts: CountArray,
    edges: npt.NDArray[np.float64],
    n_edges: npt.NDArray[np.int64],
    x: FloatArray,
    weight: int,
) -> None:
    """``update_counts``' linear scan turned inside out (``COLUMN_SCAN_MIN_ROWS``): how many of a feature's values
    are ``>=`` each of its ``n_f`` edges, summed over blocks copied into a contiguous column; the bins are the
    differences of consecutive sums. NaN compares false with every edge, so it is counted apart and taken off the
    underflow; ``+inf`` is ``>=`` every edge and lands in overflow."""
    n_rows = x.shape[0]
    n_feat = x.shape[1]
    k = edges.shape[1]
    nan_col = k + 1
    column = np.empty(COLUMN_BLOCK_ROWS, dtype=np.float64)
    at_or_above = np.empty(k, dtype=np.int64)
    for f in range(n_feat):
        n = max(min(n_edges[f], k), 0)
        at_or_above[:] = 0
        nans = 0
        for start in range(0, n_rows, COLUMN_BLOCK_ROWS):
            m = min(COLUMN_BLOCK_ROWS, n_rows - start)
            for r in range(m):
                column[r] = x[start + r, f]
            found = 0
            for r in range(m):
                found += column[r] != column[r]  # NaN
            nans += found
            for i in range(n):
                edge = edges[f, i]
                found = 0
                for r in range(m):
                    found += column[r] >= edge
                at_or_above[i] += found
        below = n_rows - nans  # values below the next edge, counting up from underflow
        for i in range(n):
            counts[f, i] += (below - at_or_above[i]) * weight
            below = at_or_above[i]
        counts[f, n] += below * weight
        counts[f, nan_col] += nans * weight


def reference_counts(
    counts_lists: Sequence[Sequence[int]],
    nan_counts: Sequence[int],
    edges: npt.NDArray[np.float64],
) -> npt.NDArray[np.int64]:
    """Build the packed ``(F, K + 2)`` reference counts from a model profile.

    ``counts_lists[f]`` is the manifest's ``counts`` for feature ``f`` (underflow, inner
    bins, overflow: ``n_f + 1`` entries, ``n_f`` read off the finite entries of
    ``edges[f]``) and ``nan_counts[f]`` its NaN count. The result compares directly with
    live counts from ``update_counts``.

    Raises:
        ValueError: on a length mismatch or a negative count, naming the feature.
    """
    n_feat, k = edges.shape
    if len(counts_lists) != n_feat or len(nan_counts) != n_feat:
        raise ValueError(f"edges have {n_feat} features, counts {len(counts_lists)}, nan counts {len(nan_counts)}")
    out = np.zeros((n_feat, k + 2), dtype=np.int64)
    for f in range(n_feat):
        n_f = int(np.count_nonzero(np.isfinite(edges[f])))
        row = np.asarray(counts_lists[f], dtype=np.int64)
        if row.shape != (n_f + 1,):
            raise ValueError(f"feature {f}: {n_f} edges need {n_f + 1} counts, got {row.size}")
        if row.min() < 0 or nan_counts[f] < 0:
            raise ValueError(f"feature {f}: counts must be non-negative")
        out[f, : n_f + 1] = row
        out[f, k + 1] = nan_counts[f]
    return out


def probability_edges(n_classes: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """``PROBABILITY_EDGES`` packed once per class: (edges (n_classes, 9), n_edges).

    So a (rows, n_classes) float32 array of class probabilities bins with ``update_counts``
    into ten bins per class, like any feature matrix.
    """
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    return pack_edges([PROBABILITY_EDGES] * n_classes)


@_njit
def label_counts(counts: npt.NDArray[np.int64], labels: IntArray) -> None:
    """Add predicted ``labels`` (1-D ints) into ``counts`` (n_classes + 1,) in place.

    Labels outside ``[0, n_classes)`` go to the last slot, so a model that emits an
    unexpected class shows up as drift instead of an index error on the request path.
    """
    n_classes = counts.shape[0] - 1
    for i in range(labels.shape[0]):
        v = labels[i]
        if 0 <= v < n_classes:
            counts[v] += 1
        else:
            counts[n_classes] += 1


@_njit
def count_agreement(a: IntArray, b: IntArray) -> int:
    """Number of positions where two equally long 1-D int arrays agree (champion vs shadow labels)."""
    if a.shape[0] != b.shape[0]:
        raise ValueError("count_agreement: arrays differ in length")
    same = 0
    for i in range(a.shape[0]):
        if a[i] == b[i]:
            same += 1
    return same
