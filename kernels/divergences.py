"""Divergences between binned distributions (PSI, KL, JS, KS, W1), all features in one compiled call.

Inputs are count arrays in the packed layout of ``kernels.histograms``: ``(F, B)``, one
row per feature, ``B = K + 2`` columns — underflow, inner bins, overflow, zero padding,
and the LAST column the NaN count. Counts may be int64 or float64 (a float64
``WindowRing`` of weights, say); they need not be normalised: each row is divided by its
own total. For a single 1-D histogram (one model output) pass a ``(1, B)`` array.
Every function returns float64 ``(F,)``; a feature whose total is zero on either side
gives NaN (there is nothing to compare), never an error.

Why compiled loops rather than numpy expressions: the rollout controller evaluates
every feature of every variant each few seconds; numpy would allocate a dozen
``(F, B)`` temporaries per measure, numba loops over features and bins once (see
``loadtests/bench_kernels.py``).

Conventions, precisely:

* Proportions ``p = count / total`` where, for PSI, KL and JS, ``total`` includes the
  NaN column and the NaN column is a bin like any other (a rise in missing values is
  drift).
* ``EPSILON = 1e-4``: for the log-based PSI and KL each proportion is floored at
  ``EPSILON`` before use (usual PSI practice: an empty bin would give an infinite
  value). A bin empty on both sides — always so for padding — gives
  ``(eps - eps) * ln(1) = 0`` exactly, so padding never contributes.
* KS and W1 are about the ordered values, so they EXCLUDE the NaN column and normalise
  by the non-NaN totals (a side with only NaNs gives NaN).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["EPSILON", "js", "kl", "ks", "psi", "wasserstein1"]

EPSILON = 1e-4
"""Floor applied to each proportion before the logarithms of PSI and KL."""

_LN2 = math.log(2.0)

_Fn = TypeVar("_Fn", bound=Callable[..., Any])
Counts = npt.NDArray[Any]
"""An (F, B) int64 or float64 count array in the packed layout."""
Result = npt.NDArray[np.float64]


def _njit(fn: _Fn) -> _Fn:
    """``numba.njit(nogil=True, cache=True)`` with the signature kept for mypy (numba ships no types)."""
    return cast(_Fn, numba.njit(nogil=True, cache=True)(fn))


def _check_pair(a: Counts, b: Counts) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"need two (F, B) count arrays of the same shape, got {a.shape} and {b.shape}")
    if a.shape[1] < 2:
        raise ValueError(f"need at least one bin plus the NaN column, got {a.shape[1]} columns")


# --- PSI and KL: epsilon-floored proportions, NaN column included -----------------------------------------


@_njit
def _floored(a: Counts, e: Counts, symmetric: bool) -> Result:
    """PSI (``symmetric``: ``sum (a_j - e_j) ln(a_j / e_j)``) or KL (``sum a_j ln(a_j / e_j)``) per feature: the
    same walk over epsilon-floored proportions, differing only in each bin's weight."""
    n_feat, n_bins = a.shape
    out = np.empty(n_feat, dtype=np.float64)
    for f in range(n_feat):
        ta = 0.0
        te = 0.0
        for j in range(n_bins):
            ta += a[f, j]
            te += e[f, j]
        if ta <= 0.0 or te <= 0.0:
            out[f] = np.nan
            continue
        s = 0.0
        for j in range(n_bins):
            pa = max(a[f, j] / ta, EPSILON)
            pe = max(e[f, j] / te, EPSILON)
            if pa != pe:  # equal proportions (padding included) contribute exactly 0: skip the log
                s += (pa - pe if symmetric else pa) * math.log(pa / pe)
        out[f] = s
    return out


def psi(actual: Counts, expected: Counts) -> Result:
    """Population stability index per feature: ``sum_j (a_j - e_j) * ln(a_j / e_j)``.

    Over all bins including NaN, on epsilon-floored proportions. Symmetric in its two
    arguments; 0 for identical distributions; by common reading < 0.1 stable, 0.1-0.25
    moderate shift, > 0.25 major shift (decile bins).
    """
    _check_pair(actual, expected)
    return _floored(actual, expected, True)


def kl(p: Counts, q: Counts) -> Result:
    """Kullback-Leibler divergence ``KL(p || q) = sum_j p_j * ln(p_j / q_j)`` per feature, in nats.

    Over all bins including NaN, on epsilon-floored proportions (the floor keeps it
    finite where ``q`` has an empty bin). Not symmetric: ``p`` is usually the live
    traffic and ``q`` the reference.
    """
    _check_pair(p, q)
    return _floored(p, q, False)


# --- JS: raw proportions, 0 * log 0 = 0, NaN column included --------------------------------------------------


@_njit
def _js(p: Counts, q: Counts) -> Result:
    n_feat, n_bins = p.shape
    out = np.empty(n_feat, dtype=np.float64)
    for f in range(n_feat):
        tp = 0.0
        tq = 0.0
        for j in range(n_bins):
            tp += p[f, j]
            tq += q[f, j]
        if tp <= 0.0 or tq <= 0.0:
            out[f] = np.nan
            continue
        s = 0.0
        for j in range(n_bins):
            pp = p[f, j] / tp
            pq = q[f, j] / tq
            if pp == pq:
                continue  # both terms are 0 (m equals both), padding included
            m = 0.5 * (pp + pq)
            if pp > 0.0:
                s += pp * math.log(pp / m)
            if pq > 0.0:
                s += pq * math.log(pq / m)
        v = 0.5 * s / _LN2
        out[f] = min(max(v, 0.0), 1.0)  # rounding only can push it outside [0, 1]
    return out


def js(p: Counts, q: Counts) -> Result:
    """Jensen-Shannon divergence per feature, base 2, in ``[0, 1]``: ``(KL(p||m) + KL(q||m)) / 2``, ``m = (p + q) / 2``.

    On raw proportions (no epsilon: ``0 * log 0 = 0``), over all bins including NaN.
    Symmetric and bounded, so one threshold suits every feature. It is the square of
    ``scipy.spatial.distance.jensenshannon(p, q, base=2)``, which is a distance.
    """
    _check_pair(p, q)
    return _js(p, q)


# --- KS and W1: ordered bins only, NaN column excluded ---------------------------------------------------------


@_njit
def _ks(p: Counts, q: Counts) -> Result:
    n_feat, n_cols = p.shape
    n_bins = n_cols - 1  # the last column is NaN
    out = np.empty(n_feat, dtype=np.float64)
    for f in range(n_feat):
        tp = 0.0
        tq = 0.0
        for j in range(n_bins):
            tp += p[f, j]
            tq += q[f, j]
        if tp <= 0.0 or tq <= 0.0:
            out[f] = np.nan
            continue
        cp = 0.0
        cq = 0.0
        gap = 0.0
        for j in range(n_bins):
            cp += p[f, j]
            cq += q[f, j]
            d = abs(cp / tp - cq / tq)
            if d > gap:
                gap = d
        out[f] = gap
    return out


def ks(p: Counts, q: Counts) -> Result:
    """Kolmogorov-Smirnov statistic on the bins per feature: ``max_j |P_j - Q_j|``, in ``[0, 1]``.

    ``P_j`` is the cumulative proportion of bins ``0..j`` (underflow first), NaN column
    excluded and proportions taken of the non-NaN totals. Binning makes it a lower
    bound of the KS statistic of the raw samples (the CDFs are compared at the edges only).
    """
    _check_pair(p, q)
    return _ks(p, q)


@_njit
def _w1(p: Counts, q: Counts, edges: npt.NDArray[np.float64], n_edges: npt.NDArray[np.int64]) -> Result:
    n_feat, n_cols = p.shape
    k = edges.shape[1]
    out = np.empty(n_feat, dtype=np.float64)
    for f in range(n_feat):
        tp = 0.0
        tq = 0.0
        for j in range(n_cols - 1):
            tp += p[f, j]
            tq += q[f, j]
        if tp <= 0.0 or tq <= 0.0:
            out[f] = np.nan
            continue
        n = min(n_edges[f], k)
        cp = p[f, 0] + 0.0  # underflow: its mass sits at e_0 together with inner bin 0
        cq = q[f, 0] + 0.0
        w = 0.0
        for i in range(n - 1):  # between e_i and e_{i+1} the CDF holds underflow + inner bins 0..i
            cp += p[f, i + 1]
            cq += q[f, i + 1]
            w += abs(cp / tp - cq / tq) * (edges[f, i + 1] - edges[f, i])
        out[f] = w
    return out


def wasserstein1(p: Counts, q: Counts, edges: npt.NDArray[np.float64], n_edges: npt.NDArray[np.int64]) -> Result:
    """Wasserstein-1 (earth mover's) distance per feature between the binned distributions, in feature units.

    Each bin's mass is placed at its left edge — underflow at ``e_0``, inner bin ``i``
    (``[e_i, e_{i+1})``) at ``e_i``, overflow at ``e_{n_f-1}`` — so with ``F(i)`` the
    cumulative proportion of underflow and inner bins ``0..i``::

        W1 = sum_{i=0}^{n_f-2} |F_p(i) - F_q(i)| * (e_{i+1} - e_i)

    NaN column excluded, proportions of the non-NaN totals. Mass beyond the outer edges
    is collapsed onto them, so W1 measures movement within the training range and
    is 0 for a feature with a single edge. ``edges``/``n_edges`` are the packed edges
    (``kernels.histograms.pack_edges``) the counts were made with.

    Raises:
        ValueError: if the shapes of the counts and edges disagree.
    """
    _check_pair(p, q)
    n_feat, n_cols = p.shape
    if edges.ndim != 2 or edges.shape != (n_feat, n_cols - 2) or n_edges.shape != (n_feat,):
        raise ValueError(f"counts {p.shape} need edges ({n_feat}, {n_cols - 2}) and n_edges ({n_feat},), "
                         f"got {edges.shape} and {n_edges.shape}")
    return _w1(p, q, edges, n_edges)
