"""Evidence counting, publishing, merging across processes and the drift report built from it.

The monitor runs on the demo champion's real manifest (reference profile of
the training data); the numbers it reports are checked against numpy on the
same rows.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serving.manifest import Manifest, read_manifest
from telemetry.drift import PSI_ACT, PSI_WARN, DriftView, latency_p99, report
from telemetry.evidence import (
    AGREEING_ROWS,
    COMPARED_ROWS,
    ERRORS,
    FEATURE_ROWS_PER_BATCH,
    LATENCY_EDGES,
    REQUESTS,
    ROWS,
    SLOT_S,
    DriftMonitor,
    VersionMonitor,
    VersionShape,
    sampled_rows,
)
from telemetry.evidence_store import EvidenceStore, evidence_path


@pytest.fixture(scope="module")
def manifest(demo_repository: Path) -> Manifest:
    return read_manifest(demo_repository / "breast-cancer" / "1" / "manifest.json")


def _training_like(manifest: Manifest, rows: int, seed: int) -> np.ndarray:
    """Rows drawn from the reference profile's own bins: live traffic that looks like the training data."""
    profile = manifest.reference_profile
    assert profile is not None
    rng = np.random.default_rng(seed)
    columns = []
    for feature in profile.features:
        edges = np.asarray(feature.bin_edges)
        inner = np.asarray(feature.counts[1:-1], dtype=float)
        bins = rng.choice(len(inner), size=rows, p=inner / inner.sum())
        columns.append(rng.uniform(edges[bins], edges[bins + 1]))
    return np.stack(columns, axis=1).astype(np.float32)


def _outputs(x: np.ndarray) -> dict[str, np.ndarray]:
    p1 = 1.0 / (1.0 + np.exp(-(x[:, 0] - 14.0)))
    probabilities = np.stack([1 - p1, p1], axis=1).astype(np.float32)
    return {"probabilities": probabilities, "label": (p1 > 0.5).astype(np.int64)}


def _at(monkeypatch: pytest.MonkeyPatch, now: float) -> None:
    monkeypatch.setattr("telemetry.evidence.time.time", lambda: now)


def test_layout_follows_the_manifest(manifest: Manifest) -> None:
    shape = VersionShape.of(manifest)
    layout = shape.layout
    assert layout.input_name == "features" and len(layout.features) == 30
    assert layout.probability_output == "probabilities" and layout.classes == 2
    assert layout.label_output == "label" and layout.labels == 2
    assert shape.reference is not None and shape.reference.shape == (30, layout.feature_columns)
    assert int(shape.reference[:, :-1].sum(axis=1)[0]) == manifest.reference_profile.rows  # type: ignore[union-attr]


def test_batch_counts_match_numpy(manifest: Manifest, monkeypatch: pytest.MonkeyPatch) -> None:
    _at(monkeypatch, 1000.2)
    monitor = VersionMonitor("breast-cancer", "1", VersionShape.of(manifest))
    x = _training_like(manifest, 300, seed=1)
    outputs = _outputs(x)
    latencies = np.array([0.0004, 0.003, 0.003, 0.2])
    monitor.batch([{"features": x}], outputs, 300, latencies)
    monitor.failed(2)
    monitor.compared(10, 7)
    _at(monkeypatch, 1001.5)
    [(slot, counts)] = monitor.completed_slots(1001.5)
    assert slot == 1000
    layout = monitor.layout
    assert counts[REQUESTS] == 6 and counts[ERRORS] == 2 and counts[ROWS] == 300
    assert counts[COMPARED_ROWS] == 10 and counts[AGREEING_ROWS] == 7
    expected_latency = np.bincount(np.searchsorted(LATENCY_EDGES, latencies, side="right"),
                                   minlength=len(LATENCY_EDGES) + 1)
    assert np.array_equal(layout.latency(counts)[:-1], expected_latency)
    profile = manifest.reference_profile
    assert profile is not None
    for j in (0, 7, 29):
        edges = np.asarray(profile.features[j].bin_edges)
        expected = np.bincount(np.searchsorted(edges, x[:, j].astype(np.float64), side="right"),
                               minlength=len(edges) + 1)
        assert np.array_equal(layout.feature_counts(counts)[j, :len(edges) + 1], expected)
    assert np.array_equal(layout.label_counts(counts)[:2], np.bincount(outputs["label"], minlength=2))
    for k in range(2):
        expected_p = np.bincount(np.searchsorted(np.linspace(0.1, 0.9, 9), outputs["probabilities"][:, k]
                                                 .astype(np.float64), side="right"), minlength=10)
        assert np.array_equal(layout.probability_counts(counts)[k, :10], expected_p)
    assert monitor.completed_slots(1001.9) == []  # published once only


def test_large_batches_count_a_sample_of_their_rows_and_every_row_as_a_row(manifest: Manifest,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _at(monkeypatch, 2000.2)
    monitor = VersionMonitor("breast-cancer", "1", VersionShape.of(manifest))
    for second, (rows, step) in enumerate(((4 * FEATURE_ROWS_PER_BATCH, 4), (5000, 5))):
        _at(monkeypatch, 2000.2 + 10 * second)
        x = _training_like(manifest, rows, seed=rows)
        monitor.batch([{"features": x}], _outputs(x), rows, np.full(1, 0.002))
        _at(monkeypatch, 2001.5 + 10 * second)
        [(_, counts)] = monitor.completed_slots(2001.5 + 10 * second)
        features = monitor.layout.feature_counts(counts)
        assert counts[ROWS] == rows and monitor.layout.label_counts(counts).sum() == rows  # rows, outputs: every row
        # a sample of every step-th row, each counted step times: every bin a multiple of step (counting every row
        # would leave most of the 30 features' bins at other counts), adding up to the rows seen
        assert not np.any(features % step), step
        assert set(features.sum(axis=1)) == {rows}


def test_the_row_limit_is_the_configs_default_and_zero_counts_every_row(manifest: Manifest,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from mlgate.config import MonitoringConfig

    assert MonitoringConfig().feature_rows_per_batch == FEATURE_ROWS_PER_BATCH
    _at(monkeypatch, 4000.2)
    drift = DriftMonitor(feature_rows_per_batch=0)
    monitor = drift.add("m", "1", manifest)
    x = _training_like(manifest, 3 * FEATURE_ROWS_PER_BATCH + 1, seed=5)
    monitor.batch([{"features": x}], _outputs(x), len(x), np.full(1, 0.002))
    _at(monkeypatch, 4001.5)
    [(_, counts)] = monitor.completed_slots(4001.5)
    profile = manifest.reference_profile
    assert profile is not None
    edges = np.asarray(profile.features[7].bin_edges)
    expected = np.bincount(np.searchsorted(edges, x[:, 7].astype(np.float64), side="right"), minlength=len(edges) + 1)
    assert np.array_equal(monitor.layout.feature_counts(counts)[7, :len(edges) + 1], expected)  # exactly, every row


def test_samples_of_large_and_small_batches_add_up_to_the_traffic_they_stand_for(
        manifest: Manifest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large batches of one kind of input, small ones of another, as many rows of each: a plain sample would
    count the small batches' rows many times more often than the large ones'; weighted, both halves weigh alike."""
    _at(monkeypatch, 3000.2)
    monitor = VersionMonitor("breast-cancer", "1", VersionShape.of(manifest))
    x = _training_like(manifest, 8 * FEATURE_ROWS_PER_BATCH, seed=4)
    profile = manifest.reference_profile
    assert profile is not None
    low, high = x.copy(), x.copy()
    low[:, 0] = profile.features[0].bin_edges[0] - 1.0  # underflow
    high[:, 0] = profile.features[0].bin_edges[-1] + 1.0  # overflow
    monitor.batch([{"features": high}], _outputs(high), len(high), np.full(1, 0.002))  # one batch, 1 row in 8 counted
    for part in np.split(low, 64):  # 64 batches of 128 rows, every row counted
        monitor.batch([{"features": part}], _outputs(part), len(part), np.full(1, 0.002))
    _at(monkeypatch, 3001.5)
    [(_, counts)] = monitor.completed_slots(3001.5)
    feature0 = monitor.layout.feature_counts(counts)[0]
    n_edges = len(profile.features[0].bin_edges)
    assert feature0[0] == feature0[n_edges] == 8 * FEATURE_ROWS_PER_BATCH  # underflow and overflow alike


def test_the_row_sample_is_unbiased_whatever_the_order_of_the_rows() -> None:
    """Rows of two kinds interleaved: every other row is a 1. A sample of every 2nd row from a fixed start would be
    all 0s or all 1s every time; from a random start each batch's sample is one kind or the other, evenly."""
    interleaved = (np.arange(2 * FEATURE_ROWS_PER_BATCH) % 2).reshape(-1, 1)
    samples = [sampled_rows([interleaved]) for _ in range(400)]
    assert all(len(sample) == FEATURE_ROWS_PER_BATCH and np.ptp(sample) == 0 and step == 2
               for sample, step in samples)
    assert 0.35 < np.mean([sample[0, 0] for sample, _ in samples]) < 0.65
    small = interleaved[:FEATURE_ROWS_PER_BATCH]
    whole, step = sampled_rows([small])
    assert whole is small and step == 1  # up to the limit, every row
    odd = np.arange(1000).reshape(-1, 1)
    assert {len(sampled_rows([odd], limit=300)[0]) for _ in range(50)} == {250}  # step 4: 1,000 / 4 from any start
    assert {int(sampled_rows([odd], limit=300)[0][0, 0]) for _ in range(200)} == {0, 1, 2, 3}


def test_a_batch_of_several_requests_is_sampled_as_one_without_joining_it() -> None:
    """The batcher hands the monitor each request's rows apart. Their sample is the batch's: every ``step``-th row
    counted across request boundaries from one random start, so every row is in it with probability ``1/step``
    (rows of a part shorter than ``step`` too), and the counts stay unbiased."""
    sizes = [1, 700, 3, 1500, 2, 900]  # 3,106 rows: step 4, where three parts are shorter than a step
    ids = np.arange(sum(sizes)).reshape(-1, 1)
    parts = np.split(ids, np.cumsum(sizes)[:-1])
    starts = set()
    for _ in range(200):
        sample, step = sampled_rows(parts)
        assert step == 4
        start = int(sample[0, 0])
        # exactly the batch's rows from a start below the step, every step-th, across the request boundaries
        np.testing.assert_array_equal(sample[:, 0], np.arange(start, len(ids), step))
        starts.add(start)
    assert starts == {0, 1, 2, 3}  # a random start: each row in the sample 1 time in 4
    whole, step = sampled_rows(parts[:3])  # 704 rows: all of them, in order
    assert step == 1 and np.array_equal(whole, ids[:704])


def test_a_batch_counts_the_same_whether_its_requests_come_apart_or_joined(manifest: Manifest,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _at(monkeypatch, 6000.2)
    x = _training_like(manifest, 600, seed=9)
    apart, joined = (VersionMonitor("m", "1", VersionShape.of(manifest)) for _ in range(2))
    apart.batch([{"features": x[:1]}, {"features": x[1:250]}, {"features": x[250:]}], _outputs(x), 600,
                np.full(3, 0.002))
    joined.batch([{"features": x}], _outputs(x), 600, np.full(3, 0.002))
    [(_, counts_apart)] = apart.completed_slots(6001.5)
    [(_, counts_joined)] = joined.completed_slots(6001.5)
    assert counts_apart[ROWS] == 600 and np.array_equal(counts_apart, counts_joined)


def test_evidence_from_two_processes_adds_up(manifest: Manifest, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store = EvidenceStore(evidence_path(tmp_path / "state.db"))
    assert store.path.name == "state.evidence.db"
    _at(monkeypatch, 2000.0)
    monitors = [VersionMonitor("m", "1", VersionShape.of(manifest)) for _ in range(2)]
    x = _training_like(manifest, 400, seed=2)
    for second in range(5):
        for i, monitor in enumerate(monitors):
            _at(monkeypatch, 2000.0 + second + 0.1)
            rows = x[(second * 2 + i) * 40:(second * 2 + i + 1) * 40]
            monitor.batch([{"features": rows}], _outputs(rows), 40, np.full(3, 0.002))
    now = 2005.5
    for i, monitor in enumerate(monitors):
        store.publish(f"process-{i}", [("m", "1", monitor.layout, slot, counts)
                                       for slot, counts in monitor.completed_slots(now)], now)
    layout = monitors[0].layout
    total = store.window("m", "1", layout, now, window_s=5 * SLOT_S)
    assert total[ROWS] == 400 and total[REQUESTS] == 30
    _at(monkeypatch, 3000.1)
    single = VersionMonitor("m", "1", VersionShape.of(manifest))
    single.batch([{"features": x}], _outputs(x), 400, np.full(30, 0.002))
    [(_, one)] = single.completed_slots(3001.5)
    assert np.array_equal(total, one)  # merged slots == the same rows counted in one place
    assert store.window("m", "1", layout, now, window_s=2 * SLOT_S)[ROWS] == 160  # only the last two slots
    store.close()


def test_report_flags_exactly_the_shifted_features(manifest: Manifest, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _at(monkeypatch, 5000.3)
    drift = DriftMonitor()
    champion, challenger = drift.add("m", "1", manifest), drift.add("m", "2", manifest)
    x = _training_like(manifest, 3000, seed=3)
    shifted = x.copy()
    profile = manifest.reference_profile
    assert profile is not None
    moved_features = (0, 3, 17)  # feature 0 drives _outputs: the challenger's predictions move too
    for j in moved_features:
        edges = profile.features[j].bin_edges
        shifted[:, j] += np.float32(edges[-1] - edges[0])  # moved by the feature's whole training range
    _at(monkeypatch, 5000.3)
    champion.batch([{"features": x}], _outputs(x), len(x), np.full(10, 0.001))
    challenger.batch([{"features": shifted}], _outputs(shifted), len(x), np.full(10, 0.001))
    store = EvidenceStore(tmp_path / "evidence.db")
    now = 5001.5
    store.publish("p", [(m.model, m.version, m.layout, slot, counts)
                        for m in drift.all() for slot, counts in m.completed_slots(now)], now)
    steady, moved = DriftView(drift, store).reports("m", ["1", "2"], "1", 10.0, now, histograms=1)
    assert steady.max_psi is not None and steady.max_psi < PSI_WARN
    assert steady.prediction_divergence is None  # the champion is not compared with itself
    names = [f.name for f in moved.features if f.psi > PSI_ACT]
    assert sorted(names) == sorted(profile.features[j].name for j in moved_features)
    assert moved.over(PSI_WARN) == 3 and moved.features[0].psi > 1.0
    assert moved.prediction_divergence is not None and moved.prediction_divergence > 0.3
    [histogram] = moved.histograms
    assert histogram["feature"] == moved.features[0].name
    # all in overflow: a sample of every 3rd row of the 3,000 (FEATURE_ROWS_PER_BATCH), each counted 3 times
    assert sum(histogram["live"]) == 3000 and histogram["live"][-1] == 3000
    same, again = DriftView(drift, store).reports("m", ["1", "2"], "2", 10.0, now)
    assert again.prediction_divergence is None and same.prediction_divergence == moved.prediction_divergence
    store.close()


def test_p99_is_the_upper_edge_of_its_bin() -> None:
    counts = np.zeros(len(LATENCY_EDGES) + 2, dtype=np.int64)
    assert latency_p99(counts) is None
    index = int(np.searchsorted(LATENCY_EDGES, 0.005, side="right"))
    counts[index] = 99
    counts[index + 10] = 1
    assert LATENCY_EDGES[index - 1] <= 0.005 < latency_p99(counts)  # type: ignore[operator]
    assert latency_p99(counts) == pytest.approx(LATENCY_EDGES[index])


def test_report_without_traffic_has_no_numbers(manifest: Manifest) -> None:
    shape = VersionShape.of(manifest)
    empty = report("m", "1", shape, np.zeros(shape.layout.size, dtype=np.int64), 10.0, None)
    assert empty.features == [] and empty.max_psi is None and empty.latency_p99_s is None
    assert empty.error_rate is None and empty.agreement is None


def test_warm_up_leaves_nothing_to_compile_on_the_request_path(demo_repository: Path) -> None:
    """In a fresh process (nothing compiled yet): after ``DriftMonitor.add``, real batches, contiguous or
    strided, writable or read-only (binary tensors), small or sampled, need no new kernel specialisation, so no
    compile lands on a request's batch."""
    script = f"""
import numpy as np
from kernels.histograms import label_counts, update_counts
from serving.manifest import read_manifest
from telemetry.evidence import DriftMonitor
manifest = read_manifest(__import__("pathlib").Path({str(demo_repository / "breast-cancer" / "1" / "manifest.json")!r}))
monitor = DriftMonitor().add("m", "1", manifest)
compiled = (len(update_counts.signatures), len(label_counts.signatures))
x = np.random.default_rng(0).normal(10, 3, size=(40, 60)).astype(np.float32)
p = np.full((40, 2), 0.5, dtype=np.float32)
labels = np.zeros(40, dtype=np.int64)
monitor.batch([{{"features": x[:, :30].copy()}}], {{"probabilities": p, "label": labels}}, 40, np.full(4, 0.002))
monitor.batch([{{"features": x[:, ::2]}}], {{"probabilities": p[:, :2], "label": labels}}, 40, np.full(4, 0.002))
big = np.repeat(x[:, :30], 100, axis=0)  # 4,000 rows: its histograms count a strided sample of them
big_outputs = {{"probabilities": np.repeat(p, 100, axis=0), "label": np.repeat(labels, 100)}}
monitor.batch([{{"features": big}}], big_outputs, 4000, np.full(4, 0.002))
decoded = np.frombuffer(big.tobytes(), np.float32).reshape(big.shape)  # binary tensors: read-only arrays
assert not decoded.flags.writeable
monitor.batch([{{"features": decoded}}], big_outputs, 4000, np.full(4, 0.002))
monitor.batch([{{"features": decoded[:1500]}}, {{"features": decoded[1500:]}}], big_outputs, 4000, np.full(8, 0.002))
monitor.batch([{{"features": decoded[:40]}}], {{"probabilities": p, "label": labels}}, 40, np.full(4, 0.002))
assert compiled[0] > 0, compiled
assert (len(update_counts.signatures), len(label_counts.signatures)) == compiled, compiled
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
