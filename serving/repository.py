"""The model repository: a Triton-like folder tree, scanned and verified.

Layout::

    ROOT/MODEL/VERSION/manifest.json
    ROOT/MODEL/VERSION/model.onnx        (or whatever the manifest's ``model_file`` names)

Every sub-folder of ROOT is a model, every sub-folder of a model is a version
(a positive integer, like Triton). Hidden folders (``.name``) are skipped so
that a builder can assemble a version in ``MODEL/.tmp-*`` and rename it into
place: a half-written version is then never visible under its final name.

The scanner never raises for one bad version. A missing or invalid manifest,
a manifest that claims another name or version, a missing model file, a
SHA-256 mismatch, a file ONNX Runtime cannot load, or tensors (names,
datatypes, shapes) the manifest declares otherwise than the model each produce
an entry whose ``error`` names the offending file, so an operator sees exactly
what to fix while the good versions load.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from serving.manifest import MANIFEST_FILENAME, Manifest, TensorSpec, read_manifest

if TYPE_CHECKING:
    from onnxruntime import InferenceSession, NodeArg

_CHUNK_BYTES = 1024 * 1024
# Canonical positive integers only: "01" would sort like "1" but name a different folder.
_VERSION_RE = re.compile(r"[1-9][0-9]*")
_DEFAULT_MODEL_FILE = "model.onnx"
# The OIP datatype a manifest must declare for each ONNX Runtime tensor type.
_OIP_OF_ORT = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64", "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32",
    "tensor(int64)": "INT64", "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, streamed in 1 MiB chunks so large models never sit in memory twice."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


class ModelIntegrityError(Exception):
    """A model file's bytes are not the ones its manifest pinned: refuse to serve it."""

    def __init__(self, path: Path, expected_sha256: str, actual_sha256: str) -> None:
        self.path = path
        self.expected_sha256 = expected_sha256
        self.actual_sha256 = actual_sha256
        super().__init__(
            f"{path}: SHA-256 mismatch: manifest says {expected_sha256}, file is {actual_sha256}"
        )


def verify_model_file(path: Path, expected_sha256: str) -> None:
    """Check a model file against its pinned digest.

    Raises FileNotFoundError (naming the file) when it is absent and
    ModelIntegrityError when its bytes differ, so a swapped or truncated file
    is refused at load time rather than served.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    actual = sha256_file(path)
    if actual != expected_sha256.lower():
        raise ModelIntegrityError(path, expected_sha256.lower(), actual)


@dataclass(frozen=True)
class RepositoryEntry:
    """One version folder as the scanner found it; servable exactly when ``error`` is None."""

    model: str
    version: str
    path: Path
    manifest: Manifest | None
    error: str | None

    @property
    def model_file(self) -> Path:
        """Where the model bytes live (the manifest may name a file other than model.onnx)."""
        name = self.manifest.model_file if self.manifest is not None else _DEFAULT_MODEL_FILE
        return self.path / name

    @property
    def servable(self) -> bool:
        return self.error is None


def _one_line(text: str) -> str:
    """Collapse a multi-line message (pydantic's are) so logs and admin listings stay one line per entry."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("For further information visit")]
    return "; ".join(lines)


def is_version_name(name: str) -> bool:
    """Whether ``name`` can name a version folder: a positive integer without leading zeros."""
    return _VERSION_RE.fullmatch(name) is not None


def _visible_dirs(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]


def _version_sort_key(path: Path) -> tuple[int, int, str]:
    """Numeric versions first, in numeric order; misnamed folders after them, by name."""
    if is_version_name(path.name):
        return (0, int(path.name), "")
    return (1, 0, path.name)


def _model_file_problem(version_dir: Path, manifest: Manifest) -> str | None:
    """Refuse model_file values that escape the version folder (``../other/model.onnx``, absolute paths)."""
    name = manifest.model_file
    candidate = Path(name)
    if candidate.is_absolute() or len(candidate.parts) != 1 or name in {".", ".."}:
        return (
            f"{version_dir / MANIFEST_FILENAME}: model_file must be a plain file name "
            f"inside the version folder, got {name!r}"
        )
    return None


def _tensor_problem(kind: str, spec: TensorSpec, arg: NodeArg | None, names: list[str]) -> str | None:
    """How one declared tensor differs from the model's tensor of that name, or None if it fits."""
    if arg is None:
        return f"{kind} {spec.name!r} is not in the model (its {kind}s: {', '.join(names)})"
    datatype = _OIP_OF_ORT.get(arg.type)
    if datatype is None:
        return f"{kind} {spec.name!r} is {arg.type} in the model, which no OIP datatype carries"
    if datatype != spec.datatype:
        return f"{kind} {spec.name!r} is {datatype} in the model, {spec.datatype} in the manifest"
    dims = list(arg.shape)
    # A model dimension that is a number must be declared as that number; a named or unknown one (None, 'N')
    # may be declared -1 or narrowed to a number. -1 where the model fixes a size admits requests it refuses.
    if len(dims) != len(spec.shape) or any(
            isinstance(d, int) and d > 0 and d != declared for d, declared in zip(dims, spec.shape, strict=True)):
        model_shape = [d if isinstance(d, int) and d > 0 else -1 for d in dims]
        return f"{kind} {spec.name!r} has shape {model_shape} in the model, {list(spec.shape)} in the manifest"
    return None


def signature_problem(model_file: Path, manifest: Manifest) -> str | None:
    """Open the model in ONNX Runtime and compare its inputs and outputs with the manifest's; None if they agree.

    The replicas open the model only after Ray has started, and trusted the manifest: a file ONNX Runtime
    cannot parse failed there as "Failed to update the deployments", an output renamed in the manifest passed
    warm-up and made every request a 500, and an output declared FP32 where the model gives INT64 was served
    cast. Every input the model needs must be declared; outputs may be a subset (the others are not served).
    CPU only, no graph optimisation: this reads the signature, it does not prepare to run.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(model_file), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own classes (InvalidProtobuf, Fail, NotImplemented, ...)
        return f"{model_file}: ONNX Runtime cannot load it: {_one_line(str(exc))}"
    problems = session_problems(session, manifest.inputs, manifest.outputs)
    if not problems:
        return None
    return f"{model_file.parent / MANIFEST_FILENAME}: does not match {model_file.name}: " + "; ".join(problems)


def session_problems(session: InferenceSession, inputs: Sequence[TensorSpec],
                     outputs: Sequence[TensorSpec]) -> list[str]:
    """How the tensors ``inputs`` and ``outputs`` declare differ from the session's: every input the model needs
    must be declared; outputs may be a subset (the others are not served)."""
    model_inputs = {arg.name: arg for arg in session.get_inputs()}
    model_outputs = {arg.name: arg for arg in session.get_outputs()}
    declared = {spec.name for spec in inputs}
    problems = [f"the model's input {name!r} is not declared" for name in model_inputs if name not in declared]
    for kind, specs, args in (("input", inputs, model_inputs), ("output", outputs, model_outputs)):
        problems += filter(None, (_tensor_problem(kind, spec, args.get(spec.name), list(args)) for spec in specs))
    return problems


def _check_version(model: str, version_dir: Path, *, verify: bool) -> tuple[Manifest | None, str | None]:
    """Validate one version folder; returns (manifest if it parsed, error or None)."""
    version = version_dir.name
    if not is_version_name(version):
        return None, f"{version_dir}: version folder name {version!r} is not a positive integer"
    manifest_path = version_dir / MANIFEST_FILENAME
    if not manifest_path.is_file():
        return None, f"{manifest_path}: manifest not found"
    try:
        manifest = read_manifest(manifest_path)
    except ValueError as exc:
        return None, _one_line(str(exc))
    if manifest.name != model or manifest.version != version:
        return manifest, (
            f"{manifest_path}: manifest says model {manifest.name!r} version {manifest.version!r}, "
            f"but it lies in {model}/{version}"
        )
    problem = _model_file_problem(version_dir, manifest)
    if problem is not None:
        return manifest, problem
    model_file = version_dir / manifest.model_file
    if not model_file.is_file():
        return manifest, f"{model_file}: model file not found"
    if verify:
        try:
            verify_model_file(model_file, manifest.sha256)
        except (ModelIntegrityError, OSError) as exc:
            return manifest, str(exc)
        return manifest, signature_problem(model_file, manifest)
    return manifest, None


def scan_entry(model: str, version_dir: Path, *, verify: bool = True) -> RepositoryEntry:
    """Scan one version folder; never raises for a problem inside it (I/O errors become ``error``)."""
    try:
        manifest, error = _check_version(model, version_dir, verify=verify)
    except OSError as exc:  # unreadable folder or file: report it, keep scanning the rest
        manifest, error = None, f"{version_dir}: {exc}"
    return RepositoryEntry(
        model=model, version=version_dir.name, path=version_dir, manifest=manifest, error=error
    )


def scan_repository(root: Path, *, verify: bool = True) -> list[RepositoryEntry]:
    """List every version under ``root``, sorted by model name then numeric version.

    An unreadable model folder yields one entry with an empty version and an
    error. ``verify=False`` skips the checks that read the model file, its SHA-256 and its
    signature in ONNX Runtime (both cost time on large repositories); everything else is still checked. Raises only when
    ``root`` itself is missing or not a directory.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: model repository not found")
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: model repository is not a directory")
    entries: list[RepositoryEntry] = []
    for model_dir in sorted(_visible_dirs(root), key=lambda p: p.name):
        try:
            version_dirs = sorted(_visible_dirs(model_dir), key=_version_sort_key)
        except OSError as exc:  # an unreadable model folder must not hide the other models
            entries.append(RepositoryEntry(model_dir.name, "", model_dir, None, f"{model_dir}: {exc}"))
            continue
        entries.extend(scan_entry(model_dir.name, version_dir, verify=verify) for version_dir in version_dirs)
    return entries
