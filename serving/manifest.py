"""The manifest that sits beside every model file in the repository.

A manifest is the contract between a model version and the gateway: it names
and types the tensors (so the gateway can validate requests without opening
the model), pins the model file by SHA-256 (so a swapped or corrupted file is
refused instead of served), and carries a reference profile of the training
inputs (so drift can later be judged against what the model was trained on).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator, model_validator

MANIFEST_FILENAME = "manifest.json"

# Open Inference Protocol tensor datatypes (BF16 has no numpy equivalent and is not served).
OipDatatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]


# Every model here refuses NaN and infinities (a NaN bin edge passed the strictly-increasing check, which
# compares False) and takes integers and booleans only as such (lax pydantic read "max_batch_rows": true as 1
# and "allow_non_finite": "yes" as true): a manifest is written by a program, never typed loosely.
_CONFIG = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class TensorSpec(BaseModel):
    """Name, OIP datatype and shape of one model input or output.

    ``shape`` uses -1 for a variable dimension; the first dimension is the
    batch (row) dimension for every tensor of a batchable model.
    """

    model_config = _CONFIG

    name: str = Field(min_length=1)
    datatype: OipDatatype
    shape: tuple[StrictInt, ...] = Field(min_length=1)

    @field_validator("shape")
    @classmethod
    def _dims_are_positive_or_variable(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        if any(d < -1 or d == 0 for d in shape):
            raise ValueError(f"shape dimensions must be positive or -1 (variable), got {list(shape)}")
        return shape


class FeatureProfile(BaseModel):
    """Reference distribution of one input feature, binned at training-data quantiles.

    ``bin_edges`` has k+1 strictly increasing edges delimiting k inner bins;
    ``counts`` has k+2 entries: underflow (< edges[0]), the k inner bins,
    overflow (>= edges[-1]). NaNs are counted separately in ``nan_count``.
    """

    model_config = _CONFIG

    name: str
    bin_edges: list[float] = Field(min_length=2)
    counts: list[StrictInt]
    nan_count: StrictInt = 0

    @model_validator(mode="after")
    def _consistent(self) -> FeatureProfile:
        edges = self.bin_edges
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError(f"feature {self.name!r}: bin_edges must be strictly increasing")
        if len(self.counts) != len(edges) + 1:
            raise ValueError(
                f"feature {self.name!r}: expected {len(edges) + 1} counts "
                f"(underflow, {len(edges) - 1} bins, overflow), got {len(self.counts)}"
            )
        if any(c < 0 for c in self.counts) or self.nan_count < 0:
            raise ValueError(f"feature {self.name!r}: counts must be non-negative")
        return self


class ReferenceProfile(BaseModel):
    """Per-feature reference histograms of one 2-D input tensor (rows x features)."""

    model_config = _CONFIG

    input: str
    rows: StrictInt = Field(ge=0)
    features: list[FeatureProfile] = Field(min_length=1)


class TrainingData(BaseModel):
    """What the model was trained on, for the humans who must decide whether to trust it."""

    model_config = _CONFIG

    description: str
    source: str
    rows: StrictInt = Field(ge=0)
    label_names: list[str] = Field(default_factory=list)


class Manifest(BaseModel):
    """Everything the gateway needs to know about one model version, without loading it."""

    model_config = ConfigDict(**_CONFIG, protected_namespaces=())

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    platform: Literal["onnxruntime_onnx"] = "onnxruntime_onnx"
    model_file: str = "model.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    inputs: tuple[TensorSpec, ...] = Field(min_length=1)
    outputs: tuple[TensorSpec, ...] = Field(min_length=1)
    max_batch_rows: StrictInt = Field(default=1024, ge=1, description="Most rows one execution may take.")
    allow_non_finite: StrictBool = Field(
        default=False, description="Whether float inputs may hold NaN or +/-Inf."
    )
    description: str = ""
    training_data: TrainingData | None = None
    reference_profile: ReferenceProfile | None = None

    @model_validator(mode="after")
    def _unique_tensor_names(self) -> Manifest:
        for kind, specs in (("input", self.inputs), ("output", self.outputs)):
            names = [s.name for s in specs]
            if len(set(names)) != len(names):
                raise ValueError(f"duplicate {kind} tensor names: {names}")
        return self

    @model_validator(mode="after")
    def _profile_fits_its_input(self) -> Manifest:
        """A profile the drift monitor cannot use was ignored without a word (an input name that is not
        declared, a tensor that is not rows x float features), or compared column by column with the wrong
        features (another count than the input's columns)."""
        profile = self.reference_profile
        if profile is None:
            return self
        spec = self.input(profile.input)
        if spec is None:
            raise ValueError(f"reference_profile.input {profile.input!r} is not an input "
                             f"(inputs: {', '.join(s.name for s in self.inputs)})")
        if len(spec.shape) != 2 or not spec.datatype.startswith("FP"):
            raise ValueError(f"reference_profile.input {profile.input!r} is {spec.datatype} {list(spec.shape)}: "
                             "a profile describes a 2-D float input (rows x features)")
        if spec.shape[1] != -1 and spec.shape[1] != len(profile.features):
            raise ValueError(f"reference_profile has {len(profile.features)} features, input {profile.input!r} "
                             f"has {spec.shape[1]} columns")
        return self

    def input(self, name: str) -> TensorSpec | None:
        return next((s for s in self.inputs if s.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((s for s in self.outputs if s.name == name), None)


def read_manifest(path: Path) -> Manifest:
    """Parse and validate a manifest file; raises ValueError naming the file on any problem."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Manifest.model_validate(raw)
    except (OSError, ValueError) as exc:  # pydantic.ValidationError is a ValueError
        raise ValueError(f"{path}: invalid manifest: {exc}") from exc


def write_manifest(manifest: Manifest, path: Path) -> None:
    path.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
