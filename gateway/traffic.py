"""Which version answers a request, and what happens when a challenger cannot.

The decision is taken twice at most, both before any model runs: from the
path and headers before the body is read (so a 404, 503 or 429 costs no body),
then once more if the body carries an OIP ``routing_key`` parameter. A
version named in the path (``/versions/{v}``) is pinned: no split, no
fallback, no shadows — the caller asked for that version.

Fallback: a request the split sends to a challenger is answered by the
champion, within the same deadline, when the challenger is not ready, is
shedding load, fails, or would miss the deadline (it gets the deadline minus
the champion's own tail time, or ``fallback.challenger_timeout_ms`` if
shorter). When even the champion fails, a configured static default response
answers. Either way the response says so (``fallback`` = ``champion`` or
``default``) and ``mlgate_fallbacks_total`` counts it. A caller therefore never
sees a challenger's failure while the champion is healthy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gateway.batcher import Batcher
from gateway.datatypes import is_float, numpy_dtype
from gateway.errors import (
    DeadlineExceeded,
    DeadlineUnreachable,
    InferenceError,
    NotFound,
    Overloaded,
    Unavailable,
)
from gateway.registry import ModelRegistry, ServedVersion
from gateway.shadows import ShadowMirror
from gateway.tensors import Declared
from routing.live import ActiveRouting, LiveRouting
from routing.policy import RoutingPolicy, variant_of
from serving.batch_inputs import Arrays
from serving.manifest import Manifest
from telemetry.metrics import record_fallback
from telemetry.tracing import RequestTrace

HeaderLookup = Callable[[str], "str | None"]
"""A request's header (lower-case name) or gRPC metadata value, None when absent."""


@dataclass(slots=True)
class Target:
    """Where a request goes, decided before its body is read."""

    model: str
    entry: ServedVersion
    variant: str
    active: ActiveRouting | None
    """The routing that chose it; None for pinned versions and models without routing (no fallback, no shadows)."""
    header: HeaderLookup | None = None
    fallback_reason: str | None = None
    """Set when the split chose a challenger that could not take the request at all (not ready, shedding)."""
    key: str | None = None

    @property
    def declared(self) -> Declared | None:
        """What the request is checked against as it is decoded: the version's tensors, which every version that
        may answer in its place shares; None when it cannot be served, which ``InferenceService.infer`` reports."""
        manifest = self.entry.manifest
        return None if manifest is None else Declared(self.entry.label, manifest.inputs, manifest.outputs)


@dataclass(slots=True)
class Answer:
    entry: ServedVersion
    outputs: Arrays
    variant: str | None
    fallback: str | None = None


class Traffic:
    def __init__(self, registry: ModelRegistry, live: LiveRouting | None, shadows: ShadowMirror) -> None:
        self.registry = registry
        self.live = live
        self.shadows = shadows

    # ------------------------------------------------------------------ before the body

    def target(self, model: str, version: str | None, header: HeaderLookup | None) -> Target:
        active = self.live.get(model) if self.live is not None else None
        if version is not None:
            entry = _accepting(self.registry.get(model, version))
            return Target(model, entry, variant_of(active.policy, version) if active else "champion", None)
        if active is None:
            entry = _accepting(self.registry.get(model, None))
            return Target(model, entry, "champion", None)
        key = header(active.policy.sticky.header) if header is not None else None
        return self._choose(model, active, key or None, header)

    def with_key(self, target: Target, key: str) -> Target:
        """Route again with the body's ``routing_key``, unless the sticky header already gave a key."""
        if target.active is None or target.key is not None:  # the sticky header, when present, wins
            return target
        return self._choose(target.model, target.active, key, target.header)

    def _choose(self, model: str, active: ActiveRouting, key: str | None, header: HeaderLookup | None) -> Target:
        route = active.router.choose(key, header)
        policy = active.policy
        if route.variant == "champion" or not policy.fallback.enabled:
            entry = _accepting(self._version(model, route.version))
            return Target(model, entry, route.variant, active, header, None, key)
        challenger = self._version(model, route.version)
        reason = None
        if not challenger.ready or challenger.batcher is None:
            reason = "not_ready"
        else:
            try:
                challenger.batcher.shed_early()
            except Overloaded:
                reason = "overloaded"
        if reason is None:
            return Target(model, challenger, route.variant, active, header, None, key)
        _accepting(self._version(model, policy.champion))
        return Target(model, challenger, route.variant, active, header, reason, key)

    def _version(self, model: str, version: str) -> ServedVersion:
        try:
            return self.registry.get(model, version)
        except NotFound:  # routing names a version this process does not serve (another gateway's config)
            raise Unavailable(f"routing of model '{model}' names version '{version}', which this gateway does "
                              "not serve") from None

    # ------------------------------------------------------------------ with the body

    async def run(self, target: Target, inputs: Arrays, rows: int, deadline: float | None,
                  trace: RequestTrace | None = None) -> Answer:
        """The answer of the version routing chose, or of its fallback, by the caller's ``deadline``
        (``time.monotonic()``, None: none); ``trace``: the request's, when recorded."""
        active = target.active
        if active is None:
            outputs = await _submit(target.entry, inputs, rows, deadline, trace)
            return Answer(target.entry, outputs, target.variant)
        started = time.monotonic()
        if target.variant != "champion":
            if not active.policy.fallback.enabled:
                return Answer(target.entry, await _submit(target.entry, inputs, rows, deadline, trace),
                              target.variant)
            reason = target.fallback_reason
            challenger_ran = False  # refused before it ran: the champion's admission decides, as if routed there
            if reason is None:
                try:
                    challenger_deadline = self._challenger_deadline(target, active.policy, rows, deadline)
                    outputs = await _submit(target.entry, inputs, rows, challenger_deadline, trace)
                    return Answer(target.entry, outputs, target.variant)
                except DeadlineUnreachable:
                    reason = "deadline"
                except Overloaded:
                    reason = "overloaded"
                except DeadlineExceeded:
                    reason, challenger_ran = "deadline", True
                except InferenceError:
                    reason, challenger_ran = "error", True
            if challenger_ran and deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded(f"{target.entry.label} could not answer and no time was left for the "
                                       f"champion (fallback reason: {reason})")
            champion = self._version(target.model, active.policy.champion)
            if trace is not None:
                trace.event("fallback", {"mlgate.fallback.from": target.entry.version,
                                         "mlgate.fallback.reason": reason})
            answer = await self._champion(target, champion, inputs, rows, deadline, trace)
            if answer.fallback is None:
                answer.fallback = "champion"
                record_fallback(target.model, target.entry.version, reason, "champion")
            return answer
        answer = await self._champion(target, target.entry, inputs, rows, deadline, trace)
        if answer.fallback is None and active.policy.shadows:
            self._mirror(target, active, inputs, rows, answer.outputs, time.monotonic() - started, trace)
        return answer

    def _challenger_deadline(self, target: Target, policy: RoutingPolicy, rows: int,
                             deadline: float | None) -> float | None:
        """The challenger's deadline: early enough to leave the champion its tail time before the caller's."""
        now = time.monotonic()
        latest = math.inf
        if deadline is not None:
            champion = self._version(target.model, policy.champion)
            reserve = champion.batcher.latency.bound(rows) if champion.batcher is not None else 0.0
            latest = deadline - reserve
            if latest <= now:
                raise DeadlineUnreachable("no time for the challenger within the deadline", retry_after_s=0.0)
        if policy.fallback.challenger_timeout_ms is not None:
            latest = min(latest, now + policy.fallback.challenger_timeout_ms / 1000.0)
        return None if latest == math.inf else latest

    async def _champion(self, target: Target, champion: ServedVersion, inputs: Arrays, rows: int,
                        deadline: float | None, trace: RequestTrace | None) -> Answer:
        assert target.active is not None
        default = target.active.policy.fallback.default_response
        try:
            outputs = await _submit(champion, inputs, rows, deadline, trace)
        except InferenceError:
            if default is None or champion.manifest is None:
                raise
            record_fallback(target.model, champion.version, "error", "default")
            return Answer(champion, default_outputs(champion.manifest, default, rows), "champion", "default")
        return Answer(champion, outputs, "champion")

    def _mirror(self, target: Target, active: ActiveRouting, inputs: Arrays, rows: int, outputs: Arrays,
                seconds: float, trace: RequestTrace | None) -> None:
        for version in active.router.shadows():
            shadow = self.registry.versions.get(target.model, {}).get(version)
            if shadow is not None:
                self.shadows.mirror(shadow, inputs, rows, outputs, seconds, trace)


def _batcher(entry: ServedVersion) -> Batcher:
    """The version's batcher; Unavailable (503 + Retry-After) while it is not ready."""
    if not entry.ready or entry.batcher is None:
        why = f": {entry.reason}" if entry.reason else " (still loading)"
        raise Unavailable(f"{entry.label} is not ready{why}", retry_after_s=1.0)
    return entry.batcher


def _accepting(entry: ServedVersion) -> ServedVersion:
    """``entry`` if it is ready and not shedding load (else Unavailable or Overloaded, before any body is read)."""
    _batcher(entry).shed_early()
    return entry


async def _submit(entry: ServedVersion, inputs: Arrays, rows: int, deadline: float | None,
                  trace: RequestTrace | None) -> Arrays:
    return await _batcher(entry).submit(inputs, rows, deadline, trace)


def default_outputs(manifest: Manifest, default: dict[str, list[object]], rows: int) -> Arrays:
    """The static default response for ``rows`` rows: each output's one-row answer repeated (a view, no copies)."""
    outputs = {}
    for spec in manifest.outputs:
        one_row = np.asarray(default[spec.name], dtype=numpy_dtype(spec.datatype))
        outputs[spec.name] = np.broadcast_to(one_row, (rows, *one_row.shape[1:]))
    return outputs


def policy_problems(policy: RoutingPolicy, model: str, registry: ModelRegistry,
                    require_ready: bool = True) -> list[str]:
    """Everything that makes ``policy`` unusable for ``model`` here, as precise messages (empty = fine).

    Beyond existence and readiness: every version that may answer must have the champion's tensor
    contract (a caller valid for one must be valid for all, or the split would turn into 400s), and a
    default response must give every output one row of the right shape and type.
    """
    entries = registry.versions.get(model, {})
    problems = policy.problems({version: entry.ready or not require_ready for version, entry in entries.items()})
    if problems:
        return problems
    champion = entries[policy.champion].manifest
    if champion is None:
        return [f"champion: version '{policy.champion}' has no usable manifest"]
    answering = {*policy.effective_weights, *(r.version for r in policy.header_rules), *policy.shadows}
    for version in sorted(answering - {policy.champion}):
        manifest = entries[version].manifest
        if manifest is None or _contract(manifest) != _contract(champion):
            problems.append(f"version '{version}' does not have the champion's contract (input and output names, "
                            "datatypes, shapes, max_batch_rows and allow_non_finite must match to share its traffic)")
    default = policy.fallback.default_response
    if default is not None:
        problems.extend(_default_response_problems(default, champion))
    return problems


def _contract(manifest: Manifest) -> tuple[object, ...]:
    """What a request is validated against: equal contracts make any of the versions a valid answerer."""
    return manifest.inputs, manifest.outputs, manifest.max_batch_rows, manifest.allow_non_finite


def _default_response_problems(default: dict[str, list[object]], manifest: Manifest) -> list[str]:
    problems = []
    known = {spec.name: spec for spec in manifest.outputs}
    for name in sorted(set(default) - set(known)):
        problems.append(f"fallback.default_response.{name}: the model has no output '{name}'; "
                        f"outputs: {', '.join(known)}")
    for name, spec in known.items():
        if name not in default:
            problems.append(f"fallback.default_response: missing output '{name}' (give one row of every output)")
            continue
        try:
            with np.errstate(over="raise"):  # 1e39 as FP32 would otherwise become an infinity, with a warning
                value = np.asarray(default[name], dtype=numpy_dtype(spec.datatype))
        except ArithmeticError:  # OverflowError (integers), FloatingPointError (floats)
            problems.append(f"fallback.default_response.{name}: a value is out of range for {spec.datatype}")
            continue
        except (TypeError, ValueError):
            problems.append(f"fallback.default_response.{name}: not convertible to {spec.datatype}")
            continue
        if is_float(spec.datatype) and not np.isfinite(value).all():
            problems.append(f"fallback.default_response.{name}: values must be finite (a JSON answer cannot carry "
                            "NaN or infinity)")
            continue
        wanted = (1, *spec.shape[1:])
        if value.ndim != len(wanted) or any(d not in (-1, v) for d, v in zip(wanted, value.shape, strict=True)):
            problems.append(f"fallback.default_response.{name}: a one-row answer must have shape "
                            f"{[1, *spec.shape[1:]]} (-1: any), got {list(value.shape)}")
    return problems
