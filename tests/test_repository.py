"""Model repository scanner and demo builder: real files, real scikit-learn, real ONNX Runtime.

The demo repository is built once per module (a few seconds); tests that
break things work on copies so they cannot disturb each other.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from serving.demo_models import (
    bin_counts,
    build_demo_repository,
    load_demo_data,
    quantile_bin_edges,
)
from serving.manifest import MANIFEST_FILENAME, Manifest, TensorSpec, read_manifest, write_manifest
from serving.repository import (
    ModelIntegrityError,
    RepositoryEntry,
    scan_repository,
    sha256_file,
    verify_model_file,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPECTED_VERSIONS = [
    ("breast-cancer", "1"),
    ("breast-cancer", "2"),
    ("breast-cancer", "3"),
    ("breast-cancer-wide", "1"),
]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo") / "models"
    build_demo_repository(root)
    return root


@pytest.fixture(scope="module")
def entries(demo_root: Path) -> dict[tuple[str, str], RepositoryEntry]:
    return {(e.model, e.version): e for e in scan_repository(demo_root)}


def _copy_version(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst)
    return dst


def _rewrite_manifest(version_dir: Path, **changes: object) -> None:
    path = version_dir / MANIFEST_FILENAME
    write_manifest(read_manifest(path).model_copy(update=changes), path)


def _flip_one_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _predict_labels(entry: RepositoryEntry, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(entry.model_file), providers=["CPUExecutionProvider"])
    (labels,) = session.run(["label"], {"features": x})
    return np.asarray(labels)


# --------------------------------------------------------------------------- the demo repository


def test_scan_finds_the_four_demo_versions_servable(demo_root: Path) -> None:
    found = scan_repository(demo_root)
    assert [(e.model, e.version) for e in found] == EXPECTED_VERSIONS
    assert [e.error for e in found] == [None] * 4
    for e in found:
        assert e.path == demo_root / e.model / e.version
        assert e.model_file == e.path / "model.onnx"
        assert e.manifest is not None and (e.manifest.name, e.manifest.version) == (e.model, e.version)
    assert not [p for p in demo_root.rglob(".*")], "temporary build folders were left behind"


def test_manifests_carry_the_tensor_contract_and_training_facts(
    entries: dict[tuple[str, str], RepositoryEntry],
) -> None:
    data = load_demo_data()
    for key in EXPECTED_VERSIONS:
        m = entries[key].manifest
        assert m is not None
        assert m.inputs == (TensorSpec(name="features", datatype="FP32", shape=(-1, 30)),)
        assert {s.name: s for s in m.outputs} == {
            "probabilities": TensorSpec(name="probabilities", datatype="FP32", shape=(-1, 2)),
            "label": TensorSpec(name="label", datatype="INT64", shape=(-1,)),
        }
        assert m.max_batch_rows == 1024 and m.allow_non_finite is False
        assert m.sha256 == hashlib.sha256(entries[key].model_file.read_bytes()).hexdigest()
        assert m.training_data is not None
        assert m.training_data.rows == len(data.x_train) == 426
        assert m.training_data.label_names == ["malignant", "benign"]
        assert "load_breast_cancer" in m.training_data.source
        profile = m.reference_profile
        assert profile is not None and profile.input == "features" and profile.rows == 426
        assert [f.name for f in profile.features] == data.feature_names
        for feature in profile.features:
            assert sum(feature.counts) + feature.nan_count == profile.rows, feature.name


def test_onnx_tensor_names_and_types_match_the_manifest(
    entries: dict[tuple[str, str], RepositoryEntry],
) -> None:
    ort_types = {"tensor(float)": "FP32", "tensor(int64)": "INT64"}
    for key in EXPECTED_VERSIONS:
        entry = entries[key]
        assert entry.manifest is not None
        session = ort.InferenceSession(str(entry.model_file), providers=["CPUExecutionProvider"])
        actual = {t.name: ort_types[t.type] for t in [*session.get_inputs(), *session.get_outputs()]}
        declared = {s.name: s.datatype for s in (*entry.manifest.inputs, *entry.manifest.outputs)}
        assert actual == declared


def test_bad_challenger_disagrees_and_good_challenger_agrees(
    entries: dict[tuple[str, str], RepositoryEntry],
) -> None:
    data = load_demo_data()
    v1, v2, v3 = (_predict_labels(entries[("breast-cancer", v)], data.x_all) for v in "123")
    assert np.mean(v1 == data.y_all) > 0.9, "the champion itself should be accurate"
    assert np.mean(v2 == v1) >= 0.90
    assert np.mean(v3 != v1) >= 0.10
    description = entries[("breast-cancer", "3")].manifest.description  # type: ignore[union-attr]
    assert "30.0%" in description and "flipped" in description


def test_reference_profile_matches_an_independent_recomputation(
    entries: dict[tuple[str, str], RepositoryEntry],
) -> None:
    """Recompute the deciles and counts with explicit comparisons, not searchsorted."""
    x_train = load_demo_data().x_train.astype(np.float64)
    for key in EXPECTED_VERSIONS:
        profile = entries[key].manifest.reference_profile  # type: ignore[union-attr]
        assert profile is not None
        for j, feature in enumerate(profile.features):
            col = x_train[:, j]
            edges = np.unique(np.quantile(col, np.linspace(0, 1, 11)))
            assert feature.bin_edges == edges.tolist()
            expected = [int(np.sum(col < edges[0]))]
            expected += [int(np.sum((col >= lo) & (col < hi))) for lo, hi in itertools.pairwise(edges)]
            expected += [int(np.sum(col >= edges[-1]))]
            assert feature.counts == expected, feature.name
            assert feature.nan_count == 0
            assert feature.counts[-1] >= 1, "the training maximum belongs to the overflow bin"


def test_bin_semantics_on_hand_made_values() -> None:
    edges = np.array([0.0, 1.0, 2.0])
    values = np.array([-1.0, -np.inf, 0.0, 0.5, 1.0, 1.999, 2.0, 3.0, np.inf, np.nan, np.nan])
    counts, nan_count = bin_counts(values, edges)
    assert counts.tolist() == [2, 2, 2, 3]
    assert nan_count == 2


def test_bin_edges_are_widened_for_a_constant_feature() -> None:
    assert quantile_bin_edges(np.full(50, 3.5)).tolist() == [3.5, 4.5]
    assert quantile_bin_edges(np.array([np.nan, 2.0, 2.0])).tolist() == [2.0, 3.0], "NaNs do not make edges"
    # 100 zeros and a one: deciles 0..0.9 are all 0, so the duplicates collapse to two edges.
    assert quantile_bin_edges(np.append(np.zeros(100), 1.0)).tolist() == [0.0, 1.0]


def test_build_is_idempotent_without_force(demo_root: Path) -> None:
    def stamps() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in sorted(demo_root.rglob("*"))}

    before = stamps()
    assert len(before) == 2 + 4 * 3  # 2 model folders, 4 version folders with 2 files each
    again = build_demo_repository(demo_root)
    assert stamps() == before
    assert [(e.model, e.version, e.error) for e in again] == [(m, v, None) for m, v in EXPECTED_VERSIONS]


def test_rebuild_in_another_process_reproduces_every_byte(
    tmp_path: Path, demo_root: Path, entries: dict[tuple[str, str], RepositoryEntry]
) -> None:
    """Seeds, graph names and opset order are pinned, so a rebuild must reproduce every SHA-256.

    A fresh interpreter with another hash seed catches set-order leaks that an
    in-process rebuild would share with the first build.
    """
    root = tmp_path / "models"
    shutil.copytree(demo_root, root)
    old_file = root / "breast-cancer" / "1" / "model.onnx"
    old_mtime = old_file.stat().st_mtime_ns
    # The three small versions only: the wide one would add seconds and exercises nothing new here.
    script = (
        "import sys; from pathlib import Path; from serving import demo_models as d; "
        "data = d.load_demo_data(); "
        "[d.build_version(Path(sys.argv[1]), r, data) for r in d.DEMO_MODELS if r.model == 'breast-cancer']"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", script, str(root)], check=True, env=env, cwd=REPO_ROOT, timeout=120)
    assert old_file.stat().st_mtime_ns != old_mtime, "an existing version must be replaced"
    rebuilt = scan_repository(root)
    assert [e.error for e in rebuilt] == [None] * 4
    for e in rebuilt:
        assert e.manifest is not None
        assert e.manifest.sha256 == entries[(e.model, e.version)].manifest.sha256  # type: ignore[union-attr]
    assert not [p for p in root.rglob(".*")]


# --------------------------------------------------------------------------- integrity


def test_sha256_file_streams_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    payload = os.urandom(3 * 1024 * 1024 + 17)  # crosses several 1 MiB chunks
    path.write_bytes(payload)
    assert sha256_file(path) == hashlib.sha256(payload).hexdigest()


def test_one_flipped_byte_is_reported_naming_the_file(tmp_path: Path, demo_root: Path) -> None:
    root = tmp_path / "models"
    tampered = _copy_version(demo_root / "breast-cancer" / "1", root / "breast-cancer" / "1")
    _copy_version(demo_root / "breast-cancer" / "2", root / "breast-cancer" / "2")
    model_file = tampered / "model.onnx"
    _flip_one_byte(model_file, model_file.stat().st_size // 2)

    found = {e.version: e for e in scan_repository(root)}
    assert found["1"].error is not None
    assert str(model_file) in found["1"].error and "SHA-256" in found["1"].error
    assert "\n" not in found["1"].error
    assert found["2"].error is None, "one bad version must not stop the others"
    assert {e.version: e.error for e in scan_repository(root, verify=False)} == {"1": None, "2": None}


def test_verify_model_file_raises_naming_the_file(tmp_path: Path, demo_root: Path) -> None:
    version_dir = _copy_version(demo_root / "breast-cancer" / "2", tmp_path / "v")
    model_file = version_dir / "model.onnx"
    expected = read_manifest(version_dir / MANIFEST_FILENAME).sha256
    verify_model_file(model_file, expected)  # intact: no exception
    verify_model_file(model_file, expected.upper())  # digests compare case-insensitively

    _flip_one_byte(model_file, 0)
    with pytest.raises(ModelIntegrityError) as caught:
        verify_model_file(model_file, expected)
    assert str(model_file) in str(caught.value)
    assert expected in str(caught.value) and sha256_file(model_file) in str(caught.value)
    assert caught.value.path == model_file and caught.value.expected_sha256 == expected

    model_file.unlink()
    with pytest.raises(FileNotFoundError, match=str(model_file)):
        verify_model_file(model_file, expected)


# --------------------------------------------------------------------------- broken layouts


@pytest.fixture
def broken_root(tmp_path: Path, demo_root: Path) -> Path:
    """One model folder holding good versions and one of each kind of broken version."""
    good = demo_root / "breast-cancer" / "1"
    root = tmp_path / "models"
    model = root / "breast-cancer"
    _copy_version(good, model / "1")
    (_copy_version(good, model / "2") / MANIFEST_FILENAME).unlink()  # missing manifest
    _copy_version(good, model / "3")  # manifest still says version "1"
    _copy_version(good, model / "latest")  # not a positive integer
    _copy_version(good, model / "04")  # leading zero: not canonical
    _rewrite_manifest(_copy_version(good, model / "4"), version="4")
    (model / "4" / "model.onnx").unlink()  # missing model file
    (_copy_version(good, model / "5") / MANIFEST_FILENAME).write_text("{not json", encoding="utf-8")
    _rewrite_manifest(_copy_version(good, model / "6"), name="other-model", version="6")
    _rewrite_manifest(_copy_version(good, model / "7"), version="7", model_file="../1/model.onnx")
    _rewrite_manifest(_copy_version(good, model / "10"), version="10")  # good; sorts after 7
    _copy_version(good, model / ".tmp-11-abc")  # a build in progress: invisible
    (root / "README.txt").write_text("files at the root are not models\n", encoding="utf-8")
    other = root / "a-model"
    _copy_version(demo_root / "breast-cancer" / "2", other / "2")
    _rewrite_manifest(other / "2", name="a-model")
    return root


def test_broken_versions_do_not_stop_the_good_ones(broken_root: Path) -> None:
    found = scan_repository(broken_root)
    assert [(e.model, e.version) for e in found] == [
        ("a-model", "2"),
        *[("breast-cancer", v) for v in ["1", "2", "3", "4", "5", "6", "7", "10", "04", "latest"]],
    ]
    servable = [(e.model, e.version) for e in found if e.error is None]
    assert servable == [("a-model", "2"), ("breast-cancer", "1"), ("breast-cancer", "10")]
    assert all("\n" not in (e.error or "") for e in found)


@pytest.mark.parametrize(
    ("version", "file_name", "fragments"),
    [
        ("2", MANIFEST_FILENAME, ["manifest not found"]),
        ("3", MANIFEST_FILENAME, ["version '1'", "breast-cancer/3"]),
        ("4", "model.onnx", ["model file not found"]),
        ("5", MANIFEST_FILENAME, ["invalid manifest"]),
        ("6", MANIFEST_FILENAME, ["model 'other-model'", "breast-cancer/6"]),
        ("7", MANIFEST_FILENAME, ["plain file name", "'../1/model.onnx'"]),
        ("04", "", ["'04' is not a positive integer"]),
        ("latest", "", ["'latest' is not a positive integer"]),
    ],
)
def test_each_broken_version_gets_a_precise_error(
    broken_root: Path, version: str, file_name: str, fragments: list[str]
) -> None:
    entry = next(
        e for e in scan_repository(broken_root) if (e.model, e.version) == ("breast-cancer", version)
    )
    named = broken_root / "breast-cancer" / version / file_name if file_name else entry.path
    assert entry.error is not None
    assert entry.error.startswith(f"{named}: "), entry.error
    for fragment in fragments:
        assert fragment in entry.error, entry.error


def test_manifest_claiming_other_identity_is_kept_for_diagnosis(broken_root: Path) -> None:
    entry = next(e for e in scan_repository(broken_root) if e.version == "6")
    assert isinstance(entry.manifest, Manifest) and entry.manifest.name == "other-model"
    assert entry.error is not None


def test_missing_or_non_directory_root_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_repository(tmp_path / "nowhere")
    a_file = tmp_path / "file"
    a_file.write_text("x", encoding="utf-8")
    with pytest.raises(NotADirectoryError, match="file"):
        scan_repository(a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert scan_repository(empty) == []


# --------------------------------------------------------------------------- manifest against the model itself

_FEATURES = TensorSpec(name="features", datatype="FP32", shape=(-1, 30))
_PROBABILITIES = TensorSpec(name="probabilities", datatype="FP32", shape=(-1, 2))
_LABEL = TensorSpec(name="label", datatype="INT64", shape=(-1,))


@pytest.mark.parametrize(("inputs", "outputs", "fragments"), [
    ((TensorSpec(name="feats", datatype="FP32", shape=(-1, 30)),), (_PROBABILITIES, _LABEL),
     ["the model's input 'features' is not declared", "input 'feats' is not in the model (its inputs: features)"]),
    ((TensorSpec(name="features", datatype="FP64", shape=(-1, 30)),), (_PROBABILITIES, _LABEL),
     ["input 'features' is FP32 in the model, FP64 in the manifest"]),
    ((TensorSpec(name="features", datatype="FP32", shape=(-1, 20)),), (_PROBABILITIES, _LABEL),
     ["input 'features' has shape [-1, 30] in the model, [-1, 20] in the manifest"]),
    ((TensorSpec(name="features", datatype="FP32", shape=(-1, -1)),), (_PROBABILITIES, _LABEL),
     ["input 'features' has shape [-1, 30] in the model, [-1, -1] in the manifest"]),
    ((_FEATURES,), (TensorSpec(name="prob", datatype="FP32", shape=(-1, 2)), _LABEL),  # was a 500 per request
     ["output 'prob' is not in the model (its outputs: label, probabilities)"]),
    ((_FEATURES,), (_PROBABILITIES, TensorSpec(name="label", datatype="FP32", shape=(-1,))),  # was served cast
     ["output 'label' is INT64 in the model, FP32 in the manifest"]),
    ((_FEATURES,), (_PROBABILITIES, TensorSpec(name="label", datatype="INT64", shape=(-1, 5))),
     ["output 'label' has shape [-1] in the model, [-1, 5] in the manifest"]),
])
def test_a_manifest_that_disagrees_with_its_model_is_refused(
    tmp_path: Path, demo_root: Path, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
    fragments: list[str],
) -> None:
    """The replicas trusted the manifest: these versions passed the scan, and some even warm-up."""
    version_dir = _copy_version(demo_root / "breast-cancer" / "1", tmp_path / "models" / "breast-cancer" / "1")
    _rewrite_manifest(version_dir, inputs=inputs, outputs=outputs, reference_profile=None)  # profile: its own test
    (entry,) = scan_repository(tmp_path / "models")
    assert entry.error is not None
    assert entry.error.startswith(f"{version_dir / MANIFEST_FILENAME}: does not match model.onnx: "), entry.error
    for fragment in fragments:
        assert fragment in entry.error, entry.error
    assert "\n" not in entry.error
    assert scan_repository(tmp_path / "models", verify=False)[0].error is None  # verify=False opens no model


def test_declaring_fewer_outputs_or_narrowing_a_variable_dimension_is_allowed(tmp_path: Path, demo_root: Path) -> None:
    version_dir = _copy_version(demo_root / "breast-cancer" / "1", tmp_path / "models" / "breast-cancer" / "1")
    _rewrite_manifest(version_dir, inputs=(TensorSpec(name="features", datatype="FP32", shape=(8, 30)),),
                      outputs=(_LABEL,))
    assert [e.error for e in scan_repository(tmp_path / "models")] == [None]


def test_a_model_file_onnx_runtime_cannot_load_is_refused_by_the_scan(tmp_path: Path, demo_root: Path) -> None:
    """Pinned by its SHA-256 but not an ONNX model: it used to fail only in the replicas, after Ray started,
    as 'deployment failed: Failed to update the deployments'."""
    version_dir = _copy_version(demo_root / "breast-cancer" / "1", tmp_path / "models" / "breast-cancer" / "1")
    model_file = version_dir / "model.onnx"
    model_file.write_bytes(b"not an ONNX model" * 64)
    _rewrite_manifest(version_dir, sha256=sha256_file(model_file))
    (entry,) = scan_repository(tmp_path / "models")
    assert entry.error is not None and entry.error.startswith(f"{model_file}: ONNX Runtime cannot load it: ")
    assert "Protobuf parsing failed" in entry.error and "\n" not in entry.error


def _edit_manifest_json(version_dir: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    path = version_dir / MANIFEST_FILENAME
    document = json.loads(path.read_text(encoding="utf-8"))
    edit(document)
    path.write_text(json.dumps(document), encoding="utf-8")  # json writes NaN and Infinity as JavaScript does


def _first_feature(document: dict[str, Any]) -> dict[str, Any]:
    return document["reference_profile"]["features"][0]  # type: ignore[no-any-return]


@pytest.mark.parametrize(("edit", "fragment"), [
    (lambda m: m.update(max_batch_rows=True), "max_batch_rows; Input should be a valid integer"),  # was 1
    (lambda m: m.update(allow_non_finite="yes"), "allow_non_finite; Input should be a valid boolean"),
    (lambda m: m["inputs"][0].update(shape=[-1, True]), "inputs.0.shape.1; Input should be a valid integer"),
    (lambda m: _first_feature(m)["bin_edges"].__setitem__(1, math.nan),  # passed the increasing check
     "reference_profile.features.0.bin_edges.1; Input should be a finite number"),
    (lambda m: _first_feature(m)["bin_edges"].__setitem__(-1, math.inf),
     "reference_profile.features.0.bin_edges.10; Input should be a finite number"),
    (lambda m: m["reference_profile"].update(input="pixels"),  # drift of the inputs silently off
     "reference_profile.input 'pixels' is not an input (inputs: features)"),
    (lambda m: m["reference_profile"]["features"].pop(),
     "reference_profile has 29 features, input 'features' has 30 columns"),
])
def test_manifest_values_the_gateway_would_misread_are_refused(
        tmp_path: Path, demo_root: Path, edit: Callable[[dict[str, Any]], None], fragment: str) -> None:
    version_dir = _copy_version(demo_root / "breast-cancer" / "1", tmp_path / "models" / "breast-cancer" / "1")
    _edit_manifest_json(version_dir, edit)
    (entry,) = scan_repository(tmp_path / "models")
    assert entry.error is not None and entry.error.startswith(f"{version_dir / MANIFEST_FILENAME}: invalid manifest")
    assert fragment in entry.error, entry.error


def test_a_profile_of_an_input_that_is_not_rows_of_floats_is_refused() -> None:
    spec = TensorSpec(name="ids", datatype="INT64", shape=(-1, 30))
    profile = {"input": "ids", "rows": 1, "features": [{"name": "a", "bin_edges": [0.0, 1.0], "counts": [0, 1, 0]}]}
    with pytest.raises(ValueError, match=r"reference_profile.input 'ids' is INT64 \[-1, 30\]: a profile describes "
                                         r"a 2-D float input \(rows x features\)"):
        Manifest.model_validate({"name": "m", "version": "1", "sha256": "0" * 64, "inputs": [spec.model_dump()],
                                 "outputs": [spec.model_dump()], "reference_profile": profile})
