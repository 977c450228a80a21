"""The Open Inference Protocol operations, independent of HTTP or gRPC.

Both front ends decode their wire format into ``WireTensor``s, call into this
service, and encode what it returns; validation, version resolution and
batching therefore behave identically on both protocols.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.auth import AuthState
from gateway.errors import BadRequest, DeadlineExceeded, InferenceError, Unavailable, shown
from gateway.registry import ModelRegistry, ServedVersion
from gateway.shadows import ShadowMirror
from gateway.tensors import Declared, WireTensor, bind_inputs, check_output_name
from gateway.traffic import HeaderLookup, Target, Traffic
from routing.live import LiveRouting
from serving.manifest import Manifest, TensorSpec
from telemetry.metrics import RequestMetrics
from telemetry.tracing import RequestTrace, Tracing

log = logging.getLogger(__name__)

SERVER_NAME = "mlgate"
SERVER_EXTENSIONS = ("binary_tensor_data", "model_repository(index)")
CLIENT_CLOSED = 499
"""Status counted for a request whose caller went away before its answer (nginx's convention)."""


@dataclass(slots=True)
class InferResult:
    version: ServedVersion
    outputs: dict[str, np.ndarray]
    specs: list[TensorSpec]
    """The outputs to return, in order: the requested ones, or all the model declares."""
    variant: str | None = None
    """champion or challenger: the version's role in the model's routing."""
    fallback: str | None = None
    """champion or default when a challenger (or the champion) could not answer; None otherwise."""

    def parameters(self) -> dict[str, str]:
        """OIP response parameters: who answered (``variant``) and, after a fallback, what answered instead."""
        parameters = {"variant": self.variant or ""}
        if self.fallback is not None:
            parameters["fallback"] = self.fallback
        return parameters


class InferenceService:
    def __init__(self, registry: ModelRegistry, server_version: str, live: LiveRouting | None = None,
                 data_plane_auth: AuthState | None = None, shadows: ShadowMirror | None = None,
                 request_metrics: bool = True, access_log_sample: float = 0.0, tracing: Tracing | None = None) -> None:
        self.registry = registry
        self.server_version = server_version
        self.started = False
        self.shadows = shadows if shadows is not None else ShadowMirror()
        self.traffic = Traffic(registry, live, self.shadows)
        self.data_plane_auth = data_plane_auth
        """Set when inference needs a bearer token (``auth.require_token_for_inference``)."""
        self.request_metrics = RequestMetrics(registry.versions.__contains__) if request_metrics else None
        """None when ``telemetry.request_metrics`` is off: nothing is counted per request."""
        self.access_log_sample = access_log_sample
        """Share of inference requests logged as one ``access`` event each (``telemetry.logs``)."""
        self.tracing = tracing
        """None when ``telemetry.tracing`` is off: the front ends then start no trace."""

    def finished(self, protocol: str, model: str, target: Target | None, result: InferResult | None, status: int,
                 started: float, trace: RequestTrace | None = None, request_id: str | None = None,
                 trace_id: str | None = None) -> None:
        """Count, time, trace and (sampled) log one inference request, whatever its outcome (``started``:
        ``perf_counter`` on arrival; ``request_id``: the caller's ``x-request-id`` or OIP ``id``;
        ``trace_id``: sampled or not, the id the response carries).

        Labelled by who answered: the result's version after a fallback, else the version routing chose,
        else nothing (the request failed before a version was chosen)."""
        logged = self.access_log_sample > 0.0 and random.random() < self.access_log_sample
        if self.request_metrics is None and trace is None and not logged:
            return
        if result is not None:
            version, variant = result.version.version, result.variant or ""
        elif target is not None:
            version, variant = target.entry.version, target.variant
        else:
            version = variant = ""
        seconds = time.perf_counter() - started
        if self.request_metrics is not None:
            self.request_metrics.observe(model, version, variant, protocol, status, seconds)
        if trace is not None:
            trace.finish(status, version, variant, result.fallback if result is not None else None)
        if logged:
            log.info("%s %s %d in %.2f ms", protocol, model, status, seconds * 1e3, extra={
                "event": "access", "protocol": protocol, "model": model, "version": version, "variant": variant,
                "status": status, "duration_s": seconds, "request_id": request_id,
                "fallback": result.fallback if result is not None else None,
                "trace_id": trace_id})

    def unexpected(self, protocol: str, model: str, request_id: str | None, trace_id: str | None) -> InferenceError:
        """Log the exception being handled (a bug, not the caller's mistake) under a request id — the caller's,
        else a new one — and return the 500 to answer, which names that id so a report can be matched."""
        request_id = request_id or uuid.uuid4().hex
        log.exception("unhandled error answering model '%s' (request id %s)", model, request_id,
                      extra={"event": "request_error", "model": model, "protocol": protocol,
                             "request_id": request_id, "trace_id": trace_id})
        return InferenceError(f"internal server error (request id {request_id})")

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.started and self.registry.default_versions_ready()

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": self.server_version, "extensions": list(SERVER_EXTENSIONS)}

    def model_ready(self, model: str, version: str | None) -> bool:
        return self.registry.get(model, version).ready

    def model_metadata(self, model: str, version: str | None) -> dict[str, Any]:
        entry = self.registry.get(model, version)
        manifest = _manifest_or_unavailable(entry)
        versions = [version] if version is not None else [e.version for e in self.registry.versions_of(model)]
        return {
            "name": model,
            "versions": versions,
            "platform": manifest.platform,
            "inputs": [_spec_json(s) for s in manifest.inputs],
            "outputs": [_spec_json(s) for s in manifest.outputs],
            "parameters": {"device": entry.device or "unknown", "max_batch_rows": manifest.max_batch_rows},
        }

    def model_config(self, model: str, version: str | None) -> dict[str, Any]:
        """Triton's model-configuration extension, so tritonclient's get_model_config works."""
        entry = self.registry.get(model, version)
        manifest = _manifest_or_unavailable(entry)

        def dims(spec: TensorSpec) -> list[int]:
            return list(spec.shape[1:])

        return {
            "name": model,
            "platform": manifest.platform,
            "backend": "onnxruntime",
            "max_batch_size": manifest.max_batch_rows,
            "input": [{"name": s.name, "data_type": f"TYPE_{_triton_type(s.datatype)}", "dims": dims(s)}
                      for s in manifest.inputs],
            "output": [{"name": s.name, "data_type": f"TYPE_{_triton_type(s.datatype)}", "dims": dims(s)}
                       for s in manifest.outputs],
        }

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        index = []
        for entry in self.registry.all_versions():
            if ready_only and not entry.ready:
                continue
            item = {"name": entry.model, "version": entry.version, "state": entry.state.value}
            if entry.reason:
                item["reason"] = entry.reason
            index.append(item)
        return index

    def resolve(self, model: str, version: str | None, header: HeaderLookup | None = None,
                authorization: str | None = None) -> Target:
        """The version that will answer, chosen before the request body is read.

        Raises Unauthorized (when the data plane needs a token), NotFound, Unavailable when it cannot
        answer now, or Overloaded when it is shedding load — all before the (possibly large) body
        costs anything to read and decode. ``header`` feeds the split's sticky key and header rules.
        """
        if self.data_plane_auth is not None:
            self.data_plane_auth.current.authenticate(authorization)
        return self.traffic.target(model, version, header)

    async def infer(
        self, target: Target, tensors: Sequence[WireTensor], requested: Sequence[str] | None,
        deadline: float | None = None, routing_key: str | None = None, trace: RequestTrace | None = None,
    ) -> InferResult:
        """Validate, route, batch and run one request; ``deadline`` (``time.monotonic()``): when the caller's
        own time budget runs out, if it set one, counted from the request's arrival.

        Inputs are validated against the chosen version's contract; every version that may answer
        in its place has the same contract (checked when routing changes), so a fallback or a
        shadow reuses the validated arrays as they are. ``trace``: the request's, when it is recorded.
        """
        if routing_key is not None:
            if trace is not None:
                trace.start_step("route")
            target = self.traffic.with_key(target, routing_key)
            if trace is not None:
                trace.end_step()
        entry = target.entry
        manifest = _manifest_or_unavailable(entry)
        specs = select_outputs(entry, manifest, requested)
        inputs, rows = bind_inputs(
            entry.label, manifest.inputs, tensors,
            max_rows=manifest.max_batch_rows, allow_non_finite=manifest.allow_non_finite,
        )
        if trace is not None:
            trace.set("mlgate.rows", rows)
        answer = await self.traffic.run(target, inputs, rows, deadline, trace)
        if deadline is not None and (late_s := time.monotonic() - deadline) > 0:
            # The batch came back in time for the batcher, but this caller resumed after the deadline (its event
            # loop was busy, e.g. decoding a burst of requests): the caller has given up, so it is told so.
            if answer.entry.batcher is not None:
                answer.entry.batcher.count_late_answer()
            raise DeadlineExceeded(f"{answer.entry.label}: the request's deadline passed {late_s * 1e3:.1f} ms "
                                   "before its answer could be sent")
        return InferResult(answer.entry, answer.outputs, specs, answer.variant, answer.fallback)


def parse_routing_key(value: Any) -> str | None:
    """The OIP request parameter ``routing_key``: a non-empty string of at most 256 characters."""
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 256:
        raise BadRequest(f"request parameter 'routing_key' must be a string of 1 to 256 characters, got {shown(value)}")
    return value


def refuse_sequence(sequence_id: Any) -> None:
    """BadRequest for a request that belongs to a sequence (the OIP/Triton ``sequence_id`` parameter, non-zero or
    non-empty): mlgate serves stateless models, so a sequence's requests would be answered each on its own, by any
    replica, as if no state were kept. Triton refuses a correlation ID to a model without sequence batching too.
    tritonclient sends the parameter only for a sequence (not for its default 0)."""
    if sequence_id is None or sequence_id == 0 or sequence_id == "":
        return
    raise BadRequest(f"request parameter 'sequence_id' ({shown(sequence_id)}): sequences are not supported; mlgate "
                     "serves stateless models, so each request would be answered on its own")


def parse_timeout_us(value: Any) -> float | None:
    """The OIP/Triton ``timeout`` request parameter (microseconds) in seconds, None for none; BadRequest if malformed.

    0 is no timeout, as in Triton ("The default is 0 which indicates that the request has no timeout",
    ``TRITONSERVER_InferenceRequestSetTimeoutMicroseconds``): a tritonclient caller passing ``timeout=0`` got a 400
    here and an answer there.
    """
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise BadRequest("request parameter 'timeout' must be a non-negative integer of microseconds (0: no "
                         f"timeout), got {shown(value)}")
    return None if value == 0 else value / 1e6


def tighter(*budgets_s: float | None) -> float | None:
    """The smallest of the time budgets that are set (a request parameter, a gRPC deadline)."""
    present = [b for b in budgets_s if b is not None]
    return min(present) if present else None


def select_outputs(entry: ServedVersion, manifest: Manifest, requested: Sequence[str] | None) -> list[TensorSpec]:
    if requested is None:
        return list(manifest.outputs)
    declared = Declared(entry.label, manifest.inputs, manifest.outputs)
    specs: list[TensorSpec] = []
    seen: set[str] = set()
    for name in requested:
        spec = check_output_name(declared, seen, name)
        assert spec is not None  # (with ``declared`` it names a declared output or raises)
        specs.append(spec)
    return specs


def _manifest_or_unavailable(entry: ServedVersion) -> Manifest:
    if entry.manifest is None:
        raise Unavailable(f"{entry.label} cannot be served: {entry.reason}")
    return entry.manifest


def _spec_json(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _triton_type(datatype: str) -> str:
    return "STRING" if datatype == "BYTES" else datatype
