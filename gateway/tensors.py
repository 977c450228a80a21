"""Turn wire tensors into validated numpy arrays bound to a model's inputs.

Two layers, kept apart on purpose:

* decoding (``array_from_json``, ``array_from_buffer``) checks that a tensor is
  self-consistent — its data really has the datatype and element count its
  header claims — and is shared by the JSON, binary and protobuf front ends;
* binding (``bind_inputs``) checks the tensors against what one model version
  declares in its manifest: names, datatypes, shapes, row counts, finiteness.

Every failure is a ``BadRequest`` whose message names the tensor and says what
was expected, because the caller must be able to fix the request from it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from gateway.datatypes import NUMPY_DTYPES, deserialize_bytes_tensor, is_float
from gateway.errors import BadRequest, quoted, shown
from serving.manifest import TensorSpec

MAX_DIMS = 8

MAX_SHAPE_PRODUCT = 1 << 56
"""The product of a shape's non-zero dimensions may not exceed this. A shape holding no elements passes every size
check, and numpy then refuses to make an empty array of, say, [0, 2**62, 2**62] ("array is too big"), once a 500;
any shape that could hold data is refused far below this by the size of the body."""

SHARED_MEMORY_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size")


@dataclass(slots=True)
class WireTensor:
    """A decoded tensor as the client sent it, before it is checked against a model."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray


def parse_shape(name: str, raw: Any) -> tuple[int, ...]:
    if not isinstance(raw, list) or not raw or len(raw) > MAX_DIMS:
        raise BadRequest(f"input {quoted(name)}: shape must be a list of 1 to {MAX_DIMS} non-negative integers, "
                         f"got {shown(raw)}")
    for dim in raw:
        if type(dim) is not int or dim < 0:
            raise BadRequest(f"input {quoted(name)}: shape must hold non-negative integers, got {shown(raw)}")
    if math.prod(dim for dim in raw if dim) > MAX_SHAPE_PRODUCT:
        raise BadRequest(f"input {quoted(name)}: shape {shown(raw)} is too large (its dimensions multiply past 2**56)")
    return tuple(raw)


def refuse_shared_memory(where: str, parameters: Any) -> None:
    """BadRequest if a tensor's parameters ask for the shared-memory extension, which this server does not offer
    (rather than ignore the parameter, or say the tensor has no data)."""
    for key in SHARED_MEMORY_PARAMETERS:
        if key in parameters:
            raise BadRequest(f"{where}: shared-memory tensors are not supported by this server (parameter '{key}')")


def check_datatype(name: str, datatype: Any) -> str:
    if not isinstance(datatype, str) or datatype not in NUMPY_DTYPES:
        known = ", ".join(NUMPY_DTYPES)
        raise BadRequest(f"input {quoted(name)}: unknown datatype {shown(datatype)}; expected one of {known}")
    return str(datatype)


def _element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def array_from_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """Decode the JSON ``data`` of one tensor (flat or nested, row-major) into an array of ``shape``."""
    count = _element_count(shape)
    array = _bytes_from_json(name, data) if datatype == "BYTES" else _numbers_from_json(name, datatype, data)
    if array.size != count:
        raise BadRequest(
            f"input {quoted(name)}: shape {list(shape)} needs {count} elements but data has {array.size}"
        )
    if array.ndim > 1 and array.shape != shape:
        raise BadRequest(
            f"input {quoted(name)}: nested data has shape {list(array.shape)} but the tensor declares {list(shape)}"
        )
    return array.reshape(shape)


def _numbers_from_json(name: str, datatype: str, data: Any) -> np.ndarray:
    if not isinstance(data, list):
        data = [data]
    try:
        parsed = np.asarray(data)
    except ValueError:
        raise BadRequest(f"input {quoted(name)}: nested data is ragged (rows of different lengths)") from None
    target = NUMPY_DTYPES[datatype]
    kind = parsed.dtype.kind
    if parsed.size == 0:
        return parsed.astype(target)
    if kind in "iuf" and datatype != "BOOL":
        _refuse_mixed_booleans(name, datatype, data, parsed)
    if datatype == "BOOL":
        if kind != "b":
            raise BadRequest(f"input {quoted(name)}: BOOL data must be true/false, got {_describe_kind(kind)}")
    elif target.kind in "iu":
        if kind == "f" and target == np.uint64:  # integers from 2**63 up beside smaller ones: numpy made floats of them
            parsed, kind = _uint64_from_json(name, data), "u"
        if kind not in "iu":
            raise BadRequest(f"input {quoted(name)}: {datatype} data must be integers, got {_describe_kind(kind)}")
        info = np.iinfo(target)
        low, high = parsed.min(), parsed.max()
        if low < info.min or high > info.max:
            raise BadRequest(
                f"input {quoted(name)}: value out of range for {datatype} [{info.min}, {info.max}]: "
                f"{low if low < info.min else high}"
            )
    elif kind not in "iuf":
        raise BadRequest(f"input {quoted(name)}: {datatype} data must be numbers, got {_describe_kind(kind)}")
    elif target.kind == "f" and target != parsed.dtype:
        return _narrowed(name, datatype, parsed, target)
    return parsed.astype(target, copy=False)


def _refuse_mixed_booleans(name: str, datatype: str, data: list[Any], parsed: np.ndarray) -> None:
    """numpy reads ``[1.5, true]`` as ``[1.5, 1.0]``: a client's bug would be served as data.

    The element types are read in C (``map(type, ...)``, about 20 ns an element). A boolean can only hide where a
    value is exactly 0 or 1, so past a few hundred elements a vectorised test runs first and the type check only
    when it finds such a value: large float tensors then pay about 0.3 ns an element, integer tensors of 0s and
    1s (attention masks) the full check.
    """
    if parsed.size > _BOOLEAN_GATE_ELEMENTS and not ((parsed == 0) | (parsed == 1)).any():
        return
    elements: Iterable[Any] = data
    for _ in range(parsed.ndim - 1):
        elements = itertools.chain.from_iterable(elements)
    if bool in set(map(type, elements)):
        raise BadRequest(f"input {quoted(name)}: {datatype} data must be numbers, got true/false among them")


_BOOLEAN_GATE_ELEMENTS = 128
"""Below this many elements the type check costs less than the vectorised test's fixed 3 µs."""


def _narrowed(name: str, datatype: str, parsed: np.ndarray, target: np.dtype) -> np.ndarray:
    """JSON numbers are float64: beyond FP32's or FP16's range they would become infinities, then be refused as
    non-finite, which misleads. The cast raises only on overflow, so the check costs nothing on valid data; the
    NaN and Infinity literals read by the fallback parser are left to the finiteness check."""
    try:
        with np.errstate(over="raise"):
            return parsed.astype(target)
    except FloatingPointError:
        largest = float(np.finfo(target).max)
        beyond = np.isfinite(parsed) & (np.abs(parsed) > largest)
        raise BadRequest(f"input {quoted(name)}: value out of range for {datatype} [{-largest:g}, {largest:g}]: "
                         f"{float(parsed[beyond].flat[0]):g}") from None


def _uint64_from_json(name: str, data: list[Any]) -> np.ndarray:
    """UINT64 data numpy read as floats: exact if every value is an integer in range, else BadRequest. Element by
    element, but only for UINT64 data holding values from 2**63 up."""
    values = np.asarray(data, dtype=object)
    if not all(type(value) is int for value in values.flat):
        raise BadRequest(f"input {quoted(name)}: UINT64 data must be integers, got non-integer numbers")
    low, high = min(values.flat), max(values.flat)
    if low < 0 or high > np.iinfo(np.uint64).max:
        raise BadRequest(f"input {quoted(name)}: value out of range for UINT64 [0, {np.iinfo(np.uint64).max}]: "
                         f"{low if low < 0 else high}")
    return values.astype(np.uint64)


def _describe_kind(kind: str) -> str:
    return {"b": "booleans", "U": "strings", "S": "strings", "O": "mixed or non-numeric values",
            "f": "non-integer numbers", "i": "integers", "u": "integers"}.get(kind, "other values")


def _bytes_from_json(name: str, data: Any) -> np.ndarray:
    flat: list[bytes] = []

    def walk(item: Any, depth: int) -> None:
        if isinstance(item, list):
            if depth == MAX_DIMS:  # deeper lists could not match any shape (and recursing on would exhaust the stack)
                raise BadRequest(f"input {quoted(name)}: BYTES data is nested deeper than {MAX_DIMS} levels")
            for sub in item:
                walk(sub, depth + 1)
        elif isinstance(item, str):
            flat.append(item.encode("utf-8"))
        else:
            raise BadRequest(f"input {quoted(name)}: BYTES data must be strings, got {type(item).__name__}")

    walk(data, 0)
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out


def array_from_buffer(name: str, datatype: str, shape: tuple[int, ...], buffer: memoryview) -> np.ndarray:
    """View raw little-endian tensor bytes (binary extension or gRPC raw contents) as an array, without a copy."""
    count = _element_count(shape)
    if datatype == "BYTES":
        try:
            return deserialize_bytes_tensor(buffer, count).reshape(shape)
        except ValueError as exc:
            raise BadRequest(f"input {quoted(name)}: {exc}") from None
    dtype = NUMPY_DTYPES[datatype]
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise BadRequest(
            f"input {quoted(name)}: {datatype} shape {list(shape)} needs {expected} bytes but {len(buffer)} were sent"
        )
    if datatype == "BOOL":
        raw = np.frombuffer(buffer, dtype=np.uint8)
        if raw.size and raw.max() > 1:
            raise BadRequest(f"input {quoted(name)}: BOOL bytes must be 0 or 1")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def bind_inputs(
    model_label: str,
    specs: Sequence[TensorSpec],
    tensors: Sequence[WireTensor],
    *,
    max_rows: int,
    allow_non_finite: bool,
) -> tuple[dict[str, np.ndarray], int]:
    """Check decoded tensors against a model's inputs; return them by name with the request's row count."""
    by_name: dict[str, WireTensor] = {}
    for tensor in tensors:
        if tensor.name in by_name:
            raise BadRequest(f"input {quoted(tensor.name)} is given more than once")
        by_name[tensor.name] = tensor
    expected = {spec.name for spec in specs}
    for name in by_name:
        if name not in expected:
            raise _unknown_input(model_label, specs, name)
    bound: dict[str, np.ndarray] = {}
    rows = -1
    for spec in specs:
        found = by_name.get(spec.name)
        if found is None:
            raise BadRequest(f"missing input '{spec.name}' ({spec.datatype} {list(spec.shape)}) for {model_label}")
        tensor = found
        _check_against_spec(model_label, spec, tensor)
        if rows not in (-1, tensor.shape[0]):
            raise BadRequest(
                f"inputs disagree on the number of rows: '{spec.name}' has {tensor.shape[0]}, others have {rows}"
            )
        rows = tensor.shape[0]
        if not allow_non_finite and is_float(spec.datatype):
            _check_finite(model_label, spec.name, tensor.array)
        bound[spec.name] = tensor.array
    if rows == 0:
        raise BadRequest("the request has no rows (first dimension is 0)")
    if rows > max_rows:
        raise BadRequest(f"the request has {rows} rows; {model_label} takes at most {max_rows} per request")
    return bound, rows


def _check_against_spec(model_label: str, spec: TensorSpec, tensor: WireTensor) -> None:
    if tensor.datatype != spec.datatype:
        raise _wrong_datatype(model_label, spec, tensor.datatype)
    shape = tensor.shape
    fits = len(shape) == len(spec.shape) and all(want in (-1, got) for want, got in zip(spec.shape, shape, strict=True))
    if not fits:
        hint = ""
        if len(spec.shape) == 2 and spec.shape[1] > 0 and len(shape) == 2:
            hint = f" ({spec.shape[1]} features per row, got {shape[1]})"
        raise BadRequest(
            f"input '{spec.name}' has shape {list(shape)}; {model_label} expects {list(spec.shape)}{hint}"
        )


class Declared(NamedTuple):
    """The tensors the version a request goes to declares (any version that may answer in its place declares the
    same), so that the codecs can check each tensor from its header, before its data is decoded."""

    label: str
    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]


def check_input_header(declared: Declared | None, seen: set[str], name: str, datatype: str) -> None:
    """BadRequest for an input named twice (``seen``: the names before it) or, with ``declared``, one the model
    does not declare with this datatype: checked as each tensor's header is read, before its data is decoded.

    ``bind_inputs`` checks the same after decoding, for every caller; checking first bounds the work by what the
    model declares. BYTES decoding is a Python loop over the elements (about 1 µs each, on the event loop) making
    an object per element: 10 MB of BYTES sent to an FP32 model held the loop for seconds only to be refused, and
    one gRPC input repeated a million times for 8 to 11 s.
    """
    if name in seen:
        raise BadRequest(f"input {quoted(name)} is given more than once")
    seen.add(name)
    if declared is None:
        return
    for spec in declared.inputs:
        if spec.name == name:
            if spec.datatype != datatype:
                raise _wrong_datatype(declared.label, spec, datatype)
            return
    raise _unknown_input(declared.label, declared.inputs, name)


def check_output_name(declared: Declared | None, seen: set[str], name: str) -> TensorSpec | None:
    """The declared output ``name`` (None without ``declared``); BadRequest for an output asked for twice or,
    with ``declared``, one the model does not have. The codecs call it as each name is read, ``select_outputs``
    for the version that answers."""
    if name in seen:
        raise BadRequest(f"output {quoted(name)} is requested more than once")
    seen.add(name)
    if declared is None:
        return None
    for spec in declared.outputs:
        if spec.name == name:
            return spec
    known = ", ".join(spec.name for spec in declared.outputs)
    raise BadRequest(f"unknown output {quoted(name)} for {declared.label}; it has outputs: {known}")


def _unknown_input(model_label: str, specs: Sequence[TensorSpec], name: str) -> BadRequest:
    expected = sorted(spec.name for spec in specs)
    return BadRequest(f"unknown input {quoted(name)} for {model_label}; expected inputs: {', '.join(expected)}")


def _wrong_datatype(model_label: str, spec: TensorSpec, datatype: str) -> BadRequest:
    return BadRequest(f"input '{spec.name}' has datatype {datatype}; {model_label} expects {spec.datatype}")


def _check_finite(model_label: str, name: str, array: np.ndarray) -> None:
    finite = np.isfinite(array)
    if not finite.all():
        where = np.unravel_index(int(np.argmin(finite)), array.shape)
        raise BadRequest(
            f"input {quoted(name)} holds a non-finite value (NaN or infinity) at index {list(map(int, where))}; "
            f"{model_label} accepts finite values only"
        )


def placeholder_inputs(specs: Sequence[TensorSpec], rows: int) -> dict[str, np.ndarray]:
    """Zero-filled inputs of ``rows`` rows matching a model's declared inputs, for warm-up batches.

    Variable dimensions other than the first are given size 1.
    """
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = (rows, *(d if d > 0 else 1 for d in spec.shape[1:]))
        if spec.datatype == "BYTES":
            inputs[spec.name] = np.full(shape, b"", dtype=object)
        else:
            inputs[spec.name] = np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype])
    return inputs
