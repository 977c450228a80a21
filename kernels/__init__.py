"""Drift-monitoring kernels: streaming histograms, sliding windows and divergences, compiled with numba.

Pure functions over numpy arrays plus one small ring class; this package imports
nothing from the rest of mlgate, so the gateway, the rollout controller and offline
tools can all use it.

* ``histograms``: the packed per-feature bin layout, ``update_counts`` (one compiled
  call per batch), reference counts from a model profile, prediction helpers.
* ``windows``: ``WindowRing``, a lazily rotated ring of sub-window counts, summed on read.
* ``divergences``: PSI, KL, JS, KS and W1 over every feature in one call.

Counts merge by addition everywhere: across batches, slots, processes.
"""

from kernels.divergences import EPSILON, js, kl, ks, psi, wasserstein1
from kernels.histograms import (
    PROBABILITY_EDGES,
    count_agreement,
    label_counts,
    new_counts,
    pack_edges,
    probability_edges,
    reference_counts,
    update_counts,
)
from kernels.windows import WindowRing

__all__ = [
    "EPSILON",
    "PROBABILITY_EDGES",
    "WindowRing",
    "count_agreement",
    "js",
    "kl",
    "ks",
    "label_counts",
    "new_counts",
    "pack_edges",
    "probability_edges",
    "psi",
    "reference_counts",
    "update_counts",
    "wasserstein1",
]
