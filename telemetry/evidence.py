"""Windowed, mergeable evidence about every model version: inputs, predictions, outcomes, latencies.

Each gateway process counts what its versions did into one-second slots
(``kernels.windows.WindowRing``): per-feature input histograms on the bins of
the version's reference profile, class-probability and label histograms of its
outputs, requests, errors, a latency histogram, and the rows compared with the
champion. Everything is a count, so evidence from several processes, and from
consecutive slots, merges by plain addition: the rollout controller and
``mlgate drift`` sum the slots of a window across every process
(``telemetry.evidence_store``) and compute divergences on the sum.

The counts of one version live in one flat int64 vector laid out by
``CountsLayout`` (derived from the manifest alone, so every process serving a
version agrees on it), which makes a slot one array to update, copy, publish
and add.

Cost on the request path: one ``WindowRing.current`` lookup and a handful of
compiled kernel calls per *batch*, after the batch's callers have their
answers; no Python loop over rows or features. The input-feature histograms
count a uniform sample of at most ``FEATURE_ROWS_PER_BATCH`` rows of each batch
(``sampled_rows``), each sampled row weighing as many rows as it stands for, so
that their cost per batch is bounded however large the requests are.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import numpy as np

from kernels.histograms import label_counts, pack_edges, probability_edges, reference_counts, update_counts
from kernels.windows import WindowRing
from serving.manifest import Manifest

SLOT_S = 1.0
"""Width of one evidence slot: the resolution of every window the controller and ``mlgate drift`` read."""

LOCAL_SLOTS = 8
"""Slots a process keeps before publishing them: published every second, so a few are plenty."""

LATENCY_EDGES = np.geomspace(1e-4, 30.0, 57)
"""Request latency bin edges, 100 µs to 30 s, 25 % apart: p99 estimates are good to one bin."""

MAX_PROBABILITY_CLASSES = 64
"""Outputs with more columns than this are not histogrammed (bounded memory and metric labels)."""

LATENCY_COLUMNS = len(LATENCY_EDGES) + 2  # underflow, bins, overflow, NaN (never: latencies are finite)

FEATURE_ROWS_PER_BATCH = 1024
"""Most rows of one batch that the input-feature histograms count, by default (``monitoring.feature_rows_per_batch``;
the config states the same number, a test holds them equal). Counting every row costs a few ns per value:
with requests of 4,096 rows of 30 features at 709 a second (2.9M rows/s) it was a third of the gateway's CPU
(py-spy, 2-core box; loadtests/README.md, "Drift histograms on a sample of rows"). Drift is a comparison of
proportions, which a uniform sample of a thousand rows per batch estimates well; each sampled row is counted
``step`` times (the rows it stands for), so a histogram still adds up to about the rows seen, and rows from
large and small batches weigh the same however their distributions differ. The rollout controller's row
minimums count every row (``ROWS``). Why not fewer: a window holding one large batch then rests on one sample, and
the PSI of sampling noise alone is about (bins - 1) / rows, 0.01 for 1,024 rows over the demo's 12 bins, 0.04 for
256, against a warning level of 0.1."""

REQUESTS, ERRORS, ROWS, COMPARED_ROWS, AGREEING_ROWS = range(5)
_SCALARS = 5


@dataclass(frozen=True)
class CountsLayout:
    """Where each count of one version lives in its flat vector; equal for every process serving the version.

    The vector is: 5 scalars (requests, errors, rows, compared rows, agreeing rows), the latency
    histogram, the input-feature histograms (``features`` x ``feature_columns``, the packed layout of
    ``kernels.histograms``), the class-probability histograms (``classes`` x ``probability_columns``)
    and the label counts (``labels`` + 1, the last one for labels out of range).
    """

    features: tuple[str, ...] = ()
    feature_columns: int = 0
    input_name: str | None = None
    probability_output: str | None = None
    classes: int = 0
    probability_columns: int = 0
    label_output: str | None = None
    labels: int = 0

    @cached_property
    def _offsets(self) -> tuple[int, int, int, int, int]:
        """Start of the latency, feature, probability and label counts, and the size (computed once)."""
        latency_at = _SCALARS
        features_at = latency_at + LATENCY_COLUMNS
        probabilities_at = features_at + len(self.features) * self.feature_columns
        labels_at = probabilities_at + self.classes * self.probability_columns
        return latency_at, features_at, probabilities_at, labels_at, labels_at + (self.labels + 1 if self.labels else 0)

    @property
    def size(self) -> int:
        return self._offsets[4]

    @cached_property
    def signature(self) -> str:
        """A short string two processes compare before adding their vectors."""
        return (f"v1/lat{LATENCY_COLUMNS}/f{len(self.features)}x{self.feature_columns}"
                f"/p{self.classes}x{self.probability_columns}/l{self.labels}")

    def latency(self, vector: np.ndarray) -> np.ndarray:
        latency_at, features_at, *_ = self._offsets
        return vector[latency_at:features_at]

    def feature_counts(self, vector: np.ndarray) -> np.ndarray:
        _, features_at, probabilities_at, _, _ = self._offsets
        return vector[features_at:probabilities_at].reshape(len(self.features), self.feature_columns)

    def probability_counts(self, vector: np.ndarray) -> np.ndarray:
        _, _, probabilities_at, labels_at, _ = self._offsets
        return vector[probabilities_at:labels_at].reshape(self.classes, self.probability_columns)

    def label_counts(self, vector: np.ndarray) -> np.ndarray:
        *_, labels_at, size = self._offsets
        return vector[labels_at:size]


@dataclass(frozen=True)
class Bins:
    """Packed bin edges (``kernels.histograms.pack_edges``): (rows x K) edges and each row's edge count."""

    edges: np.ndarray
    n_edges: np.ndarray

    @classmethod
    def pack(cls, edge_lists: Sequence[Sequence[float] | np.ndarray]) -> Bins:
        return cls(*pack_edges(edge_lists))


_LATENCY_BINS = Bins.pack([LATENCY_EDGES])


@dataclass(frozen=True)
class VersionShape:
    """What a version's monitor needs from its manifest: the layout plus the bin edges to count with."""

    layout: CountsLayout
    feature_bins: Bins | None
    probability_bins: Bins | None
    reference: np.ndarray | None
    """The training inputs' counts in the feature layout: what live inputs are compared with."""

    @classmethod
    def of(cls, manifest: Manifest) -> VersionShape:
        features: tuple[str, ...] = ()
        feature_bins = None
        input_name = None
        profile = manifest.reference_profile  # fits a 2-D float input: the manifest refuses any other
        reference = None
        if profile is not None:
            feature_bins = Bins.pack([f.bin_edges for f in profile.features])
            features = tuple(f.name for f in profile.features)
            input_name = profile.input
            reference = reference_counts([f.counts for f in profile.features], [f.nan_count for f in profile.features],
                                         feature_bins.edges)
        probability_output, classes = _probability_output(manifest)
        probability_bins = Bins(*probability_edges(classes)) if probability_output is not None else None
        label_output = next((s.name for s in manifest.outputs
                             if s.datatype.startswith(("INT", "UINT")) and len(s.shape) == 1), None)
        labels = 0
        if label_output is not None:
            names = manifest.training_data.label_names if manifest.training_data is not None else []
            labels = len(names) or classes
            if not labels:
                label_output = None
        layout = CountsLayout(
            features=features,
            feature_columns=feature_bins.edges.shape[1] + 2 if feature_bins is not None else 0,
            input_name=input_name,
            probability_output=probability_output,
            classes=classes,
            probability_columns=probability_bins.edges.shape[1] + 2 if probability_bins is not None else 0,
            label_output=label_output,
            labels=labels,
        )
        return cls(layout, feature_bins, probability_bins, reference)


def _probability_output(manifest: Manifest) -> tuple[str | None, int]:
    """The first float output shaped (rows, classes): class probabilities or scores, histogrammed on [0, 1]."""
    for spec in manifest.outputs:
        if spec.datatype.startswith("FP") and len(spec.shape) == 2 and 1 <= spec.shape[1] <= MAX_PROBABILITY_CLASSES:
            return spec.name, spec.shape[1]
    return None, 0


def _zeros(datatype: str, shape: tuple[int, ...], contiguous: bool, read_only: bool = False) -> np.ndarray:
    """One row of an OIP tensor's type; ``contiguous`` False: a strided view, as slicing gives."""
    kind = {"FP": "float", "IN": "int", "UI": "uint"}.get(datatype[:2])
    dtype = np.dtype(f"{kind}{datatype.lstrip('FPUINT')}") if kind else np.dtype(np.bool_)
    dims = [max(d, 1) for d in shape[1:]]
    if contiguous or not dims:
        array = np.zeros((1, *dims), dtype=dtype)
    else:
        array = np.zeros((1, *dims[:-1], dims[-1] * 2), dtype=dtype)[..., ::2]
    array.flags.writeable = not read_only
    return array


class _SlotViews(NamedTuple):
    """One ring slot and its per-part views, made once: ``batch`` picks them instead of slicing each time."""

    vector: np.ndarray
    latency: np.ndarray
    features: np.ndarray
    probabilities: np.ndarray
    labels: np.ndarray

    @classmethod
    def of(cls, layout: CountsLayout, vector: np.ndarray) -> _SlotViews:
        return cls(vector, layout.latency(vector).reshape(1, -1), layout.feature_counts(vector),
                   layout.probability_counts(vector), layout.label_counts(vector))


def sampled_rows(parts: Sequence[np.ndarray], limit: int = FEATURE_ROWS_PER_BATCH) -> tuple[np.ndarray, int]:
    """(sample, step) of the rows of ``parts`` taken as one batch (each request's rows, in order): every row and 1
    up to ``limit`` rows, or when ``limit`` is 0; beyond, every ``step``-th row of the batch from a random start
    below ``step``, ``step`` the smallest that leaves at most ``limit``.

    Every row is in the sample with the same probability, ``1/step``, so counting each sampled row ``step`` times is
    unbiased, whatever the order of the rows (a fixed start would see only the even rows of a batch of two
    interleaved kinds). One part's sample is a view of it; several parts' is a new array of the sampled rows
    only: a batch over the limit is never joined, which would copy every row (with ``limit`` 0 every row is the
    sample, and several parts are joined)."""
    rows = sum(len(part) for part in parts)
    if rows <= limit or limit == 0:
        return (parts[0] if len(parts) == 1 else np.concatenate(parts)), 1
    step = -(-rows // limit)
    start = random.randrange(step)
    if len(parts) == 1:
        return parts[0][start::step], step
    pieces, offset = [], 0
    for part in parts:
        pieces.append(part[(start - offset) % step::step])  # the part's first row at a multiple of step from start
        offset += len(part)
    return np.concatenate(pieces), step


def _floats(array: np.ndarray | None) -> np.ndarray | None:
    """float32/float64 as they are; float16 widened (the kernels compile for 32 and 64 bits); others None."""
    if array is None or array.dtype.kind != "f":
        return None
    return array if array.dtype.itemsize >= 4 else array.astype(np.float32)


def _slot(now: float) -> int:
    return int(now // SLOT_S)


@dataclass
class VersionMonitor:
    """Counts one version's evidence into one-second slots; the gateway's batcher and shadows feed it."""

    model: str
    version: str
    shape: VersionShape
    feature_rows_per_batch: int = FEATURE_ROWS_PER_BATCH
    """At most this many rows of a batch go into the input-feature histograms (0: every row)."""
    ring: WindowRing = field(init=False)
    published_slot: int = field(init=False)
    _views: list[_SlotViews] = field(init=False)

    def __post_init__(self) -> None:
        self.ring = WindowRing(n_slots=LOCAL_SLOTS, slot_s=SLOT_S, shape=(self.shape.layout.size,))
        self.published_slot = _slot(time.time()) - 1
        self._views = [_SlotViews.of(self.layout, v) for v in self.ring.slots]

    def warm_up(self, manifest: Manifest) -> None:
        """Compile (or load from numba's cache) every kernel specialisation ``batch`` will need, on scratch
        counts: a first compile takes a second or more, and must not land on the first requests' batches."""
        layout, scratch = self.layout, np.zeros(self.layout.size, dtype=np.int64)
        saved = self._views
        self._views = [_SlotViews.of(layout, scratch)] * LOCAL_SLOTS
        try:
            # whole batches, and column views of wider arrays or row samples; each writable, and read-only as
            # np.frombuffer decodes binary tensors (numba compiles the two apart)
            for contiguous, read_only in itertools.product((True, False), repeat=2):
                inputs = {s.name: _zeros(s.datatype, s.shape, contiguous, read_only) for s in manifest.inputs}
                outputs = {s.name: _zeros(s.datatype, s.shape, contiguous, read_only) for s in manifest.outputs}
                self.batch([inputs], outputs, 1, np.zeros(1))
        finally:
            self._views = saved

    @property
    def layout(self) -> CountsLayout:
        return self.shape.layout

    def batch(self, inputs: Sequence[Mapping[str, np.ndarray]], outputs: Mapping[str, np.ndarray], rows: int,
              latencies_s: np.ndarray) -> None:
        """One executed batch: its input rows (each request's arrays), its outputs, and each answered request's
        time in the gateway."""
        views = self._views[self.ring.position(time.time())]
        layout, shape = self.layout, self.shape
        vector = views.vector
        vector[REQUESTS] += latencies_s.shape[0]
        vector[ROWS] += rows
        update_counts(views.latency, _LATENCY_BINS.edges, _LATENCY_BINS.n_edges, latencies_s.reshape(-1, 1))
        if layout.input_name is not None and (features := shape.feature_bins) is not None:
            x = inputs[0].get(layout.input_name)  # the batch's requests have the same inputs and trailing shapes
            if x is not None and x.ndim == 2 and x.shape[1] == len(layout.features):
                xs = [part[layout.input_name] for part in inputs]
                sample, step = sampled_rows(xs, self.feature_rows_per_batch)
                floats = _floats(sample)
                if floats is not None:
                    update_counts(views.features, features.edges, features.n_edges, floats, step)
        if layout.probability_output is not None and (classes := shape.probability_bins) is not None:
            p = _floats(outputs.get(layout.probability_output))
            if p is not None and p.ndim == 2 and p.shape[1] == layout.classes:
                update_counts(views.probabilities, classes.edges, classes.n_edges, p)
        if layout.label_output is not None:
            labels = outputs.get(layout.label_output)
            if labels is not None and labels.ndim == 1 and labels.dtype.kind in "iu":
                label_counts(views.labels, labels)

    def failed(self, requests: int) -> None:
        vector = self.ring.current(time.time())
        vector[REQUESTS] += requests
        vector[ERRORS] += requests

    def compared(self, rows: int, agreeing_rows: int) -> None:
        """Rows this version answered for requests the champion answered too (shadow mirroring)."""
        vector = self.ring.current(time.time())
        vector[COMPARED_ROWS] += rows
        vector[AGREEING_ROWS] += agreeing_rows

    def completed_slots(self, now: float) -> list[tuple[int, np.ndarray]]:
        """Slots that ended since the last call and saw any traffic, as (slot id, copy of its counts)."""
        current = _slot(now)
        first = max(self.published_slot + 1, current - LOCAL_SLOTS + 1)
        done = []
        for slot in range(first, current):
            counts = self.ring.slot_copy(slot)
            if counts is not None and counts.any():
                done.append((slot, counts))
        self.published_slot = current - 1
        return done


class DriftMonitor:
    """Every version's monitor in this process; the thin object the gateway calls."""

    def __init__(self, feature_rows_per_batch: int = FEATURE_ROWS_PER_BATCH) -> None:
        self._versions: dict[tuple[str, str], VersionMonitor] = {}
        self._feature_rows_per_batch = feature_rows_per_batch

    def add(self, model: str, version: str, manifest: Manifest) -> VersionMonitor:
        monitor = VersionMonitor(model, version, VersionShape.of(manifest), self._feature_rows_per_batch)
        monitor.warm_up(manifest)
        self._versions[(model, version)] = monitor
        return monitor

    def get(self, model: str, version: str) -> VersionMonitor | None:
        return self._versions.get((model, version))

    def all(self) -> Sequence[VersionMonitor]:
        return list(self._versions.values())
