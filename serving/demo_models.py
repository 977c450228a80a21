"""Build the demo model repository from scikit-learn's bundled breast-cancer data.

Four versions, chosen so every part of the gateway has something real to act on:

* ``breast-cancer/1`` — scaler + logistic regression: the champion.
* ``breast-cancer/2`` — scaler + small MLP: a good challenger that agrees with v1 on most rows.
* ``breast-cancer/3`` — scaler + MLP trained on labels flipped for 30 % of the training
  rows: a bad challenger the rollout controller must roll back.
* ``breast-cancer-wide/1`` — scaler + a wide MLP: heavy enough per call (about 0.1 to 0.2 ms
  for one row on a 2-core box, against about 10 µs for v1) that batching visibly pays.

Nothing is downloaded: ``load_breast_cancer`` ships with scikit-learn. Every seed is
fixed and graph names are pinned, so a rebuild produces the same ONNX bytes on the
same library versions. Each converted model is checked with ONNX Runtime against
the scikit-learn pipeline before it is written, and each version is assembled in a
hidden temporary folder and renamed into place, so the scanner never sees half a
version.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
from sklearn.datasets import load_breast_cancer
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from serving.manifest import (
    MANIFEST_FILENAME,
    FeatureProfile,
    Manifest,
    ReferenceProfile,
    TensorSpec,
    TrainingData,
    write_manifest,
)
from serving.repository import RepositoryEntry, scan_repository, session_problems, sha256_file

INPUT_NAME = "features"
LABEL_OUTPUT = "label"
PROBABILITIES_OUTPUT = "probabilities"
N_FEATURES = 30
LABEL_NAMES = ["malignant", "benign"]
DATA_SOURCE = "sklearn.datasets.load_breast_cancer (bundled with scikit-learn)"
SPLIT_SEED = 0
TEST_FRACTION = 0.25
FLIP_SEED = 3
FLIP_FRACTION = 0.30
TARGET_OPSET = 17
MAX_BATCH_ROWS = 1024
PROBABILITY_TOLERANCE = 1e-5
QUANTILES = np.linspace(0.0, 1.0, 11)

INPUT_SPECS = (TensorSpec(name=INPUT_NAME, datatype="FP32", shape=(-1, N_FEATURES)),)
OUTPUT_SPECS = (
    TensorSpec(name=PROBABILITIES_OUTPUT, datatype="FP32", shape=(-1, 2)),
    TensorSpec(name=LABEL_OUTPUT, datatype="INT64", shape=(-1,)),
)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DemoData:
    """The bundled dataset, cast to float32 (what clients send), and its fixed stratified split."""

    x_all: np.ndarray
    y_all: np.ndarray
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    feature_names: list[str]


def load_demo_data() -> DemoData:
    """Load and split the data exactly as the build does, so tests and benchmarks can reuse the rows."""
    bunch = load_breast_cancer()
    x_all = np.ascontiguousarray(bunch.data, dtype=np.float32)
    y_all = np.asarray(bunch.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x_all, y_all, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y_all
    )
    return DemoData(
        x_all=x_all,
        y_all=y_all,
        x_train=np.ascontiguousarray(x_train),
        y_train=np.asarray(y_train),
        x_test=np.ascontiguousarray(x_test),
        y_test=np.asarray(y_test),
        feature_names=[str(name) for name in bunch.feature_names],
    )


def flip_labels(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, int]:
    """Flip a fixed-seed random ``fraction`` of binary labels; returns (new labels, rows flipped).

    Exactly ``round(fraction * n)`` rows are chosen without replacement, so the
    fraction recorded in the manifest is the fraction applied.
    """
    rng = np.random.default_rng(seed)
    n_flip = round(fraction * len(labels))
    rows = rng.choice(len(labels), size=n_flip, replace=False)
    flipped = labels.copy()
    flipped[rows] = 1 - flipped[rows]
    return flipped, n_flip


# --------------------------------------------------------------------------- reference profile


def quantile_bin_edges(column: np.ndarray) -> np.ndarray:
    """Bin edges for one feature: the distinct deciles (0, 0.1, ..., 1.0) of its finite values.

    Deciles adapt the bins to each feature's scale, so drift divergences compare
    like with like. Duplicate quantiles (discrete or constant features) are
    dropped; a feature with fewer than two distinct edges gets ``[v, v + 1]`` so
    every profile has at least one inner bin.
    """
    values = np.asarray(column, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.array([0.0, 1.0])
    edges = np.unique(np.quantile(finite, QUANTILES))
    if edges.size < 2:
        return np.array([edges[0], edges[0] + 1.0])
    return edges


def bin_counts(column: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, int]:
    """Histogram one feature against ``edges``; returns (counts of length len(edges) + 1, NaN count).

    Bin semantics (the numba streaming kernels must implement exactly these):

    * index 0, underflow: ``x < edges[0]``
    * index i + 1, inner bin i: ``edges[i] <= x < edges[i + 1]``
    * index len(edges), overflow: ``x >= edges[-1]`` (so the training maximum lands here)
    * NaN: not binned, counted in ``nan_count``; -inf is underflow, +inf overflow.

    That is ``np.searchsorted(edges, x, side="right")`` over the non-NaN values.
    """
    values = np.asarray(column, dtype=np.float64)
    nan_mask = np.isnan(values)
    index = np.searchsorted(edges, values[~nan_mask], side="right")
    counts = np.bincount(index, minlength=len(edges) + 1)
    return counts, int(nan_mask.sum())


def reference_profile(
    x: np.ndarray, feature_names: Sequence[str], input_name: str = INPUT_NAME
) -> ReferenceProfile:
    """Per-feature decile histograms of a 2-D input (rows x features): the baseline for drift."""
    if x.ndim != 2 or x.shape[1] != len(feature_names):
        raise ValueError(f"expected a 2-D array with {len(feature_names)} columns, got shape {x.shape}")
    features = []
    for j, name in enumerate(feature_names):
        edges = quantile_bin_edges(x[:, j])
        counts, nan_count = bin_counts(x[:, j], edges)
        features.append(
            FeatureProfile(
                name=name,
                bin_edges=[float(e) for e in edges],
                counts=[int(c) for c in counts],
                nan_count=nan_count,
            )
        )
    return ReferenceProfile(input=input_name, rows=int(x.shape[0]), features=features)


# --------------------------------------------------------------------------- the demo models


@dataclass(frozen=True)
class DemoModel:
    """Recipe for one demo version: how to build its pipeline and what to say about it."""

    model: str
    version: str
    description: str
    make_pipeline: Callable[[], Pipeline]
    label_flip_fraction: float = 0.0


def _logistic() -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))


def _small_mlp() -> Pipeline:
    return make_pipeline(
        StandardScaler(), MLPClassifier(hidden_layer_sizes=(32,), max_iter=1000, random_state=0)
    )


def _overfit_mlp() -> Pipeline:
    """Big enough and unregularised enough to memorise the flipped labels, which is the point."""
    return make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=(64, 64), alpha=1e-6, max_iter=2000, random_state=0),
    )


def _wide_mlp() -> Pipeline:
    """~2.4 M weights: one row costs a 9.6 MB memory sweep, a batch amortises it over many rows."""
    return make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=(1536, 1536), max_iter=10, random_state=0),
    )


DEMO_MODELS: tuple[DemoModel, ...] = (
    DemoModel("breast-cancer", "1", "Champion: StandardScaler + LogisticRegression.", _logistic),
    DemoModel(
        "breast-cancer",
        "2",
        "Good challenger: StandardScaler + MLPClassifier(32), agrees with v1 on most rows.",
        _small_mlp,
    ),
    DemoModel(
        "breast-cancer",
        "3",
        "Deliberately BAD challenger: StandardScaler + MLPClassifier(64, 64) trained on corrupted labels.",
        _overfit_mlp,
        label_flip_fraction=FLIP_FRACTION,
    ),
    DemoModel(
        "breast-cancer-wide",
        "1",
        "Benchmark model: StandardScaler + MLPClassifier(1536, 1536), 10 epochs; "
        "heavy per call so batching shows.",
        _wide_mlp,
    ),
)


def _fit(recipe: DemoModel, data: DemoData) -> tuple[Pipeline, str]:
    """Train one recipe; returns the pipeline and the description (with the flip actually applied)."""
    labels, description = data.y_train, recipe.description
    if recipe.label_flip_fraction > 0:
        labels, n_flip = flip_labels(data.y_train, recipe.label_flip_fraction, FLIP_SEED)
        description += (
            f" Labels flipped on {n_flip / len(labels):.1%} ({n_flip} of {len(labels)}) "
            f"of training rows, seed {FLIP_SEED}."
        )
    pipeline = recipe.make_pipeline()
    with warnings.catch_warnings():
        # The wide model stops early on purpose: it exists to be timed, not to be accurate.
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipeline.fit(data.x_train, labels)
    accuracy = float(pipeline.score(data.x_test, data.y_test))
    description += f" Accuracy {accuracy:.3f} on {len(data.y_test)} held-out rows."
    return pipeline, description


def to_onnx_bytes(pipeline: Pipeline, graph_name: str) -> bytes:
    """Convert to ONNX with the gateway's contract: ``features`` in, ``label`` and ``probabilities`` out.

    ``zipmap=False`` keeps probabilities a plain [-1, 2] tensor instead of a
    list of dicts; ``final_types`` pins the output names. The graph name and
    the order of opset imports are pinned because skl2onnx otherwise puts a
    random UUID and a hash-ordered set there, which would change the bytes
    (and the SHA-256) on every build.
    """
    onnx_model = convert_sklearn(
        pipeline,
        initial_types=[(INPUT_NAME, FloatTensorType([None, N_FEATURES]))],
        final_types=[
            (LABEL_OUTPUT, Int64TensorType([None])),
            (PROBABILITIES_OUTPUT, FloatTensorType([None, 2])),
        ],
        options={"zipmap": False},
        target_opset=TARGET_OPSET,
    )
    onnx_model.graph.name = graph_name
    # skl2onnx collects opset imports in a set, so their order follows PYTHONHASHSEED; sort them.
    opsets = sorted((imp.domain, imp.version) for imp in onnx_model.opset_import)
    del onnx_model.opset_import[:]
    for domain, version in opsets:
        onnx_model.opset_import.add(domain=domain, version=version)
    data: bytes = onnx_model.SerializeToString()
    return data


def cpu_session(model: bytes | Path, threads: int = 0) -> ort.InferenceSession:
    """An ONNX Runtime session pinned to the CPU provider (threads=0: ORT's default)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _check_signature(session: ort.InferenceSession) -> None:
    """Fail if the converted graph's tensors do not match the manifest specs we are about to write (the check the
    repository scan makes of every version, made here before anything is written)."""
    problems = session_problems(session, INPUT_SPECS, OUTPUT_SPECS)
    declared = {spec.name for spec in OUTPUT_SPECS}
    problems += [f"the model's output {t.name!r} is not declared" for t in session.get_outputs()
                 if t.name not in declared]  # the scan allows fewer outputs; the demo declares all of them
    if problems:
        raise RuntimeError("converted model does not match the manifest's tensors: " + "; ".join(problems))


def check_conversion(pipeline: Pipeline, onnx_bytes: bytes, x: np.ndarray, label: str) -> None:
    """Refuse to write a model whose ONNX Runtime outputs differ from scikit-learn's on the dataset."""
    session = cpu_session(onnx_bytes)
    _check_signature(session)
    labels, probabilities = session.run([LABEL_OUTPUT, PROBABILITIES_OUTPUT], {INPUT_NAME: x})
    expected_labels = pipeline.predict(x)
    expected_probabilities = pipeline.predict_proba(x)
    mismatched = int(np.count_nonzero(labels != expected_labels))
    if mismatched:
        raise RuntimeError(f"{label}: ONNX labels differ from scikit-learn on {mismatched} of {len(x)} rows")
    worst = float(np.max(np.abs(probabilities - expected_probabilities)))
    if worst > PROBABILITY_TOLERANCE:
        raise RuntimeError(
            f"{label}: ONNX probabilities differ from scikit-learn by up to {worst:.3g} "
            f"(tolerance {PROBABILITY_TOLERANCE})"
        )


def _manifest(recipe: DemoModel, description: str, sha256: str, data: DemoData) -> Manifest:
    return Manifest(
        name=recipe.model,
        version=recipe.version,
        sha256=sha256,
        inputs=INPUT_SPECS,
        outputs=OUTPUT_SPECS,
        max_batch_rows=MAX_BATCH_ROWS,
        allow_non_finite=False,
        description=description,
        training_data=TrainingData(
            description=(
                "Wisconsin Diagnostic Breast Cancer: 30 real-valued features of cell nuclei from "
                f"{len(data.y_all)} fine-needle aspirates. Stratified split, seed {SPLIT_SEED}; this model "
                f"saw the {len(data.y_train)} training rows, {len(data.y_test)} were held out."
            ),
            source=DATA_SOURCE,
            rows=len(data.y_train),
            label_names=LABEL_NAMES,
        ),
        reference_profile=reference_profile(data.x_train, data.feature_names),
    )


# --------------------------------------------------------------------------- writing


def _write_file(path: Path, payload: bytes) -> None:
    """Write and fsync, so a rename after it cannot publish a file whose bytes are still in flight."""
    with path.open("wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def _publish(staging: Path, target: Path) -> None:
    """Move a finished version folder into place, replacing any old one as atomically as POSIX allows.

    A plain rename cannot replace a non-empty directory, so an existing version
    is first renamed to a hidden name (invisible to the scanner), then removed.
    """
    if not target.exists():
        staging.rename(target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".retired-{target.name}-", dir=target.parent))
    retired.rmdir()
    target.rename(retired)
    try:
        staging.rename(target)
    except OSError:
        retired.rename(target)  # put the old version back rather than leave none
        raise
    shutil.rmtree(retired, ignore_errors=True)


def build_version(root: Path, recipe: DemoModel, data: DemoData) -> Path:
    """Train, convert, verify and write one version; returns its folder."""
    pipeline, description = _fit(recipe, data)
    onnx_bytes = to_onnx_bytes(pipeline, f"{recipe.model}-v{recipe.version}")
    check_conversion(pipeline, onnx_bytes, data.x_all, f"{recipe.model}/{recipe.version}")
    model_dir = root / recipe.model
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{recipe.version}-", dir=model_dir))
    try:
        model_file = staging / "model.onnx"
        _write_file(model_file, onnx_bytes)
        manifest = _manifest(recipe, description, sha256_file(model_file), data)
        write_manifest(manifest, staging / MANIFEST_FILENAME)
        staging.chmod(0o755)  # mkdtemp makes it 0700; a served repository must be readable by the server user
        _publish(staging, model_dir / recipe.version)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return model_dir / recipe.version


def build_demo_repository(root: Path, *, force: bool = False) -> list[RepositoryEntry]:
    """Build the four demo versions under ``root`` and return the scanned repository.

    A version whose folder already exists is left alone unless ``force`` (a
    rebuild costs seconds and would change file times under a running server);
    use ``force=True`` to repair a version the scan reports as broken.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    data: DemoData | None = None
    for recipe in DEMO_MODELS:
        if not force and (root / recipe.model / recipe.version).exists():
            continue
        data = data if data is not None else load_demo_data()
        build_version(root, recipe, data)
    return scan_repository(root)


# --------------------------------------------------------------------------- timing helper (for humans)


def time_per_row(model_file: Path, batch_rows: int, *, calls: int, threads: int = 0) -> float:
    """Mean seconds per row of ``calls`` CPU runs at one batch size, after a warm-up."""
    data = load_demo_data()
    x = np.ascontiguousarray(np.resize(data.x_all, (batch_rows, N_FEATURES)))
    session = cpu_session(model_file, threads)
    for _ in range(max(3, calls // 10)):
        session.run(None, {INPUT_NAME: x})
    start = time.perf_counter()
    for _ in range(calls):
        session.run(None, {INPUT_NAME: x})
    return (time.perf_counter() - start) / (calls * batch_rows)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m serving.demo_models ROOT [--force] [--time]``: build, report, optionally time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("root", type=Path)
    parser.add_argument("--force", action="store_true", help="rebuild versions that already exist")
    parser.add_argument("--time", action="store_true", help="time batch 1 vs 128 on CPU for each model")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    entries = build_demo_repository(args.root, force=args.force)
    print(f"built in {time.perf_counter() - start:.1f} s")
    for entry in entries:
        print(f"{entry.model}/{entry.version}: {entry.error or 'ok'}")
        if args.time and entry.error is None:
            one = time_per_row(entry.model_file, 1, calls=2000)
            batch = time_per_row(entry.model_file, 128, calls=100)
            print(f"  batch 1: {one * 1e6:.1f} us/row   batch 128: {batch * 1e6:.2f} us/row")
    return 0 if all(entry.error is None for entry in entries) else 1


if __name__ == "__main__":
    sys.exit(main())
