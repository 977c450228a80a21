"""What a window of evidence says about one version: input drift per feature, prediction drift, outcomes.

Input drift compares the version's live inputs with its own training reference
(the profile in its manifest, on the same bins). Prediction drift compares its
class-probability histograms with the champion's over the same window: the
champion is the yardstick a challenger is judged against, and with mirroring
both saw the same inputs. Divergences come from ``kernels.divergences``, one
compiled call over all features.

PSI levels follow common practice: below 0.1 stable, 0.1-0.25 worth a look
(``warn``), above 0.25 a real shift (``act``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from kernels.divergences import js, ks, psi, wasserstein1
from telemetry.evidence import (
    AGREEING_ROWS,
    COMPARED_ROWS,
    ERRORS,
    LATENCY_EDGES,
    REQUESTS,
    ROWS,
    DriftMonitor,
    VersionShape,
)
from telemetry.evidence_store import EvidenceStore

PSI_WARN = 0.1
PSI_ACT = 0.25


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    psi: float
    js: float
    ks: float
    wasserstein: float

    def to_json(self) -> dict[str, Any]:
        return {"feature": self.name, "psi": _finite(self.psi), "js": _finite(self.js), "ks": _finite(self.ks),
                "wasserstein": _finite(self.wasserstein)}


@dataclass(frozen=True)
class DriftReport:
    """One version over one window; ``features`` sorted by PSI, largest first."""

    model: str
    version: str
    window_s: float
    rows: int
    requests: int
    errors: int
    latency_p99_s: float | None
    compared_rows: int
    agreeing_rows: int
    features: list[FeatureDrift]
    prediction_divergence: float | None
    histograms: list[dict[str, Any]] = field(default_factory=list)

    @property
    def max_psi(self) -> float | None:
        values = [f.psi for f in self.features if np.isfinite(f.psi)]
        return max(values) if values else None

    def over(self, level: float) -> int:
        return sum(1 for f in self.features if np.isfinite(f.psi) and f.psi > level)

    @property
    def agreement(self) -> float | None:
        return self.agreeing_rows / self.compared_rows if self.compared_rows else None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "version": self.version, "window_s": self.window_s, "rows": self.rows,
            "requests": self.requests, "errors": self.errors, "error_rate": self.error_rate,
            "latency_p99_s": self.latency_p99_s, "compared_rows": self.compared_rows, "agreement": self.agreement,
            "prediction_divergence": self.prediction_divergence, "max_psi": self.max_psi,
            "features_over_warn": self.over(PSI_WARN), "features_over_act": self.over(PSI_ACT),
            "psi_warn": PSI_WARN, "psi_act": PSI_ACT,
            "features": [f.to_json() for f in self.features],
            **({"histograms": self.histograms} if self.histograms else {}),
        }


def latency_p99(latency_counts: np.ndarray) -> float | None:
    """The upper edge of the latency bin holding the 99th percentile (conservative, good to one bin)."""
    total = int(latency_counts.sum())
    if total == 0:
        return None
    index = int(np.searchsorted(np.cumsum(latency_counts), 0.99 * total, side="left"))
    return float(LATENCY_EDGES[min(index, len(LATENCY_EDGES) - 1)])


def prediction_divergence(shape: VersionShape, counts: np.ndarray, champion_shape: VersionShape,
                          champion_counts: np.ndarray) -> float | None:
    """Largest per-class Jensen-Shannon divergence (base 2, 0-1) between two versions' probability histograms."""
    layout, theirs = shape.layout, champion_shape.layout
    if not layout.classes or layout.signature != theirs.signature:
        return None
    ours, champion = layout.probability_counts(counts), theirs.probability_counts(champion_counts)
    if not ours.any() or not champion.any():
        return None
    values = js(ours, champion)
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else None


def report(model: str, version: str, shape: VersionShape, counts: np.ndarray, window_s: float,
           champion: tuple[VersionShape, np.ndarray] | None) -> DriftReport:
    """Everything a window of counts says about one version (``champion`` None: it is the champion)."""
    features: list[FeatureDrift] = []
    layout = shape.layout
    if shape.reference is not None and (bins := shape.feature_bins) is not None:
        live = layout.feature_counts(counts)
        if live.any():
            reference = shape.reference
            columns = (psi(live, reference), js(live, reference), ks(live, reference),
                       wasserstein1(live, reference, bins.edges, bins.n_edges))
            features = [FeatureDrift(name, *(float(c[i]) for c in columns)) for i, name in enumerate(layout.features)]
            features.sort(key=lambda f: -f.psi if np.isfinite(f.psi) else np.inf)
    divergence = None
    if champion is not None:
        divergence = prediction_divergence(shape, counts, champion[0], champion[1])
    return DriftReport(
        model=model, version=version, window_s=window_s, rows=int(counts[ROWS]), requests=int(counts[REQUESTS]),
        errors=int(counts[ERRORS]), latency_p99_s=latency_p99(layout.latency(counts)),
        compared_rows=int(counts[COMPARED_ROWS]), agreeing_rows=int(counts[AGREEING_ROWS]),
        features=features, prediction_divergence=divergence,
    )


def _compile_divergences() -> None:
    """Compile (or load from numba's cache) the divergences now: a compile holds the GIL for a second or
    more, which in the worker thread of the first drift report would stall the event loop's requests."""
    counts = np.ones((1, 4), dtype=np.int64)
    edges, n_edges = np.array([[0.0, 1.0]]), np.array([2], dtype=np.int64)
    for measure in (psi, js, ks):
        measure(counts, counts)
    wasserstein1(counts, counts, edges, n_edges)


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


class DriftView:
    """Reports over a window of the evidence every gateway process published (``EvidenceStore``)."""

    def __init__(self, monitor: DriftMonitor, store: EvidenceStore) -> None:
        self.monitor = monitor
        self.store = store
        _compile_divergences()

    def reports(self, model: str, versions: Sequence[str], champion: str | None, window_s: float,
                now_s: float, histograms: int = 0) -> list[DriftReport]:
        """``versions`` monitored here over the window, predictions compared with ``champion``'s; each window is
        read once. ``histograms`` = N: also the reference and live bins of each one's N most drifted features."""
        counts = {}
        for version in {*versions, *([champion] if champion is not None else [])}:
            monitor = self.monitor.get(model, version)
            if monitor is not None:  # not deployed here (it failed to load): nothing to report
                counts[version] = (monitor.shape, self.store.window(model, version, monitor.layout, now_s, window_s))
        baseline = counts.get(champion) if champion is not None else None
        out = []
        for version in versions:
            if version not in counts:
                continue
            shape, version_counts = counts[version]
            result = report(model, version, shape, version_counts, window_s,
                            baseline if version != champion else None)
            if histograms:
                result = replace(result, histograms=feature_histograms(
                    shape, version_counts, [f.name for f in result.features[:histograms]]))
            out.append(result)
        return out


def feature_histograms(shape: VersionShape, counts: np.ndarray, features: list[str]) -> list[dict[str, Any]]:
    """Reference and live bin counts of ``features``, with their edges (what ``mlgate drift --plot`` draws). Live
    counts estimate every row's: large batches are sampled, each sampled row counting for the rows it stands for
    (``telemetry.evidence.FEATURE_ROWS_PER_BATCH``)."""
    bins = shape.feature_bins
    if shape.reference is None or bins is None:
        return []
    layout = shape.layout
    live = layout.feature_counts(counts)
    out = []
    for name in features:
        i = layout.features.index(name)
        n_edges = int(bins.n_edges[i])
        columns = n_edges + 1  # underflow, inner bins, overflow; NaN last
        out.append({"feature": name, "edges": [float(e) for e in bins.edges[i, :n_edges]],
                    "live": [int(c) for c in live[i, :columns]], "live_nan": int(live[i, -1]),
                    "reference": [int(c) for c in shape.reference[i, :columns]],
                    "reference_nan": int(shape.reference[i, -1])})
    return out
