"""The rollout state machine: move traffic from the champion to a challenger, promote or roll back on evidence.

This module is the pure core of the rollout controller. It does no I/O, reads no
clock and starts no thread: time comes in as ``now`` (epoch seconds, the same
clock for every call), evidence comes in as numbers the controller computed,
and every function returns a new ``RolloutRecord`` instead of changing one. The
controller loop around it persists records (``model_dump(mode="json")`` /
``model_validate``), gathers a ``WindowEvidence`` every tick, calls ``tick`` and
applies ``desired_traffic`` with ``apply_traffic``. Keeping the decisions here
makes every rule testable with a fake clock and synthetic numbers. What the
challenger is judged on, and the verdict of one window, are ``routing.checks``'.

Phases and why they look the way they do:

* ``shadow``: the challenger answers no live traffic; a share of the champion's
  requests is mirrored to it, so it is judged on real inputs at no risk.
* ``canary``: the challenger answers ``steps[step]`` percent of live traffic.
  Mirroring continues, so label disagreement keeps being measured against the
  champion on the same inputs rather than on two different populations.
* A phase advances only after it has been *held* for its hold time with
  conclusive, passing judgements. Held time is accumulated per tick, not taken
  from the wall clock, so time spent inconclusive, failing or paused never
  counts, and a controller that was down for an hour does not find every hold
  satisfied when it comes back (one tick credits at most one evidence window).
* ``inconclusive``: some check lacks its minimum sample count. Too little data is
  not evidence of a bad model, so it holds traffic where it is and neither
  fails nor resets anything; the first conclusive judgement returns to the phase.
* A check must fail ``failing_windows`` consecutive judgements before the
  rollout acts: one noisy window should not undo a rollout.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import Field, ValidationError, field_validator, model_validator

from routing.checks import (
    CheckResult,
    FrozenValue,
    Judgement,
    OperatorSettings,
    RolloutChecks,
    WindowEvidence,
    fmt_value,
    judge,
)
from routing.policy import RoutingPolicy
from telemetry.audit import iso_utc

CONTROLLER_ACTOR = "rollout-controller"
"""The ``actor`` of transitions made by ``tick`` (operators' actions carry their own name)."""
# Float slack when comparing accumulated held time with a hold (sums of tick gaps drift).
_HOLD_EPSILON_S = 1e-6


class RolloutError(ValueError):
    """An operator action that the rollout's current state does not allow (the message says why)."""


class RolloutState(str, enum.Enum):
    """Where a rollout is; a ``str`` enum so records and transitions serialize to plain JSON strings."""

    SHADOW = "shadow"
    CANARY = "canary"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    PAUSED = "paused"
    INCONCLUSIVE = "inconclusive"

    @property
    def terminal(self) -> bool:
        """Promoted and rolled back rollouts never change again; a new rollout starts from scratch."""
        return self in (RolloutState.PROMOTED, RolloutState.ROLLED_BACK)


ENDED = frozenset(state.value for state in RolloutState if state.terminal)
"""The terminal states as stored: what a record's ``state`` says even where the rest of it no longer reads."""


_PHASES = (RolloutState.SHADOW, RolloutState.CANARY)


MAX_HOLD_S = 30 * 86400.0
"""Longest a step or the shadow phase may be held (30 days): ``1e300`` was accepted, and the rollout never moved."""



# -------------------------------------------------------------------------------------------- spec and record


def _validate_steps(steps: list[int]) -> list[int]:
    if not steps:
        raise ValueError("steps: at least one step is needed, and the last must be 100")
    for i, step in enumerate(steps):
        if not 1 <= step <= 100:
            raise ValueError(f"steps[{i}]: {step} is not a percentage in 1..100")
        if i and step <= steps[i - 1]:
            raise ValueError(f"steps[{i}]: {step} does not increase on the step before it ({steps[i - 1]})")
    if steps[-1] != 100:
        raise ValueError(f"steps: the last step must be 100 (the challenger takes all traffic), got {steps[-1]}")
    return steps


class RolloutSettings(OperatorSettings):
    """How a rollout proceeds: the part of its spec an operator may choose (the admin API's request body too)."""

    challenger: str = Field(min_length=1, description="Version being rolled out.")
    steps: list[int] = Field(
        default_factory=lambda: [5, 25, 50, 100],
        description="Percentages of live traffic to the challenger, strictly increasing, each 1..100, last 100.",
    )
    interval_s: float = Field(
        30.0, gt=0, le=MAX_HOLD_S,
        description="Conclusive, passing seconds each step must be held before the next one (at least one "
        "checks.window_s, so that the last judgement saw only the step's own traffic).",
    )
    shadow_s: float | None = Field(
        None,
        ge=0,
        le=MAX_HOLD_S,
        description="Conclusive, passing seconds of shadowing before the first step; unset = interval_s.",
    )
    mirror_percent: float = Field(
        100.0,
        gt=0,
        le=100,
        description="Percent of the champion's requests mirrored to the challenger in shadow and canary.",
    )
    checks: RolloutChecks = Field(default_factory=RolloutChecks, description="What the challenger is judged on.")

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[int]) -> list[int]:
        return _validate_steps(steps)

    @property
    def shadow_hold_s(self) -> float:
        return self.interval_s if self.shadow_s is None else self.shadow_s


class RolloutSpec(RolloutSettings):
    """What an operator asked for when starting a rollout; fixed for the rollout's lifetime."""

    model: str = Field(min_length=1, description="Logical model whose routing the rollout drives.")


class Transition(FrozenValue):
    """One change of state, step or traffic share, with who made it and why."""

    at: str = Field(description="UTC ISO-8601 time of the change.")
    from_state: RolloutState | None = Field(description="State before; None for the rollout's start.")
    to_state: RolloutState
    step: int = Field(description="Step index after the change; -1 = shadow.")
    challenger_percent: int = Field(description="Live traffic share of the challenger after the change.")
    reason: str
    actor: str = Field(description=f"Operator name, or {CONTROLLER_ACTOR!r} for automatic changes.")


class RolloutRecord(FrozenValue):
    """Everything about one rollout: persisted as JSON after every change, reloaded on controller restart."""

    spec: RolloutSpec
    champion: str = Field(min_length=1, description="Champion when the rollout started (the rollback target).")
    previous_champion: str | None = Field(
        None, description="Set on promotion: the version the challenger replaced, to roll back to by hand."
    )
    state: RolloutState
    step: int = Field(-1, description="Index into spec.steps; -1 while shadowing. Kept when paused or terminal.")
    challenger_percent: int = Field(0, ge=0, le=100, description="Live traffic share of the challenger now.")
    held_s: float = Field(
        0.0, ge=0, description="Conclusive, passing seconds accumulated in the current phase and step."
    )
    resumed_state: RolloutState | None = Field(
        None, description="While paused or inconclusive: the phase (shadow or canary) to return to."
    )
    failing: dict[str, int] = Field(
        default_factory=dict, description="Check name -> consecutive failing judgements (absent = 0)."
    )
    reason: str = Field("", description="Why the rollout is in its current state.")
    started_at: str = Field(description="UTC ISO-8601.")
    updated_at: str = Field(description="UTC ISO-8601 of the last tick or action.")
    last_tick: float | None = Field(None, description="Epoch seconds of the last tick; None before the first.")
    last_judgement: list[CheckResult] = Field(default_factory=list, description="The latest window's verdicts.")
    transitions: list[Transition] = Field(default_factory=list, description="Every change, oldest first.")

    @model_validator(mode="after")
    def _consistent(self) -> RolloutRecord:
        if not -1 <= self.step < len(self.spec.steps):
            raise ValueError(f"step: {self.step} is outside -1..{len(self.spec.steps) - 1}")
        held = self.state in (RolloutState.PAUSED, RolloutState.INCONCLUSIVE)
        if held and self.resumed_state not in _PHASES:
            raise ValueError(f"resumed_state: a {self.state.value} rollout must name shadow or canary to return to")
        if not held and self.resumed_state is not None:
            raise ValueError(f"resumed_state: only a paused or inconclusive rollout has one, not {self.state.value}")
        return self

    @property
    def phase(self) -> RolloutState:
        """Shadow or canary for a running rollout (also while paused or inconclusive); the state otherwise."""
        return self.resumed_state if self.resumed_state is not None else self.state

    @property
    def hold_s(self) -> float:
        """Held time the current phase needs before it advances: its configured hold, and at least one evidence
        window. Held time accrues only as time passes in the phase, so the judgement that advances it then saw a
        window of this phase's traffic alone: a 2 s step judged on 10 s windows was passed on evidence mostly from
        the step before, at the smaller share."""
        configured = self.spec.shadow_hold_s if self.phase is RolloutState.SHADOW else self.spec.interval_s
        return max(configured, self.spec.checks.window_s)

    def describe(self) -> str:
        return f"rollout of model {self.spec.model!r} to version {self.spec.challenger!r}"



def _move(
    record: RolloutRecord,
    to: RolloutState,
    *,
    now: float,
    reason: str,
    actor: str,
    **changes: object,
) -> RolloutRecord:
    """A new record in state ``to`` with ``changes`` applied, the transition appended when anything visible moved."""
    at = iso_utc(now)
    moved = record.model_copy(update={**changes, "state": to, "reason": reason, "updated_at": at})
    if (moved.state, moved.step, moved.challenger_percent) == (record.state, record.step, record.challenger_percent):
        return moved
    transition = Transition(
        at=at,
        from_state=record.state,
        to_state=to,
        step=moved.step,
        challenger_percent=moved.challenger_percent,
        reason=reason,
        actor=actor,
    )
    return moved.model_copy(update={"transitions": [*record.transitions, transition]})


# ------------------------------------------------------------------------------------------------ transitions


def start(spec: RolloutSpec, champion: str, now: float, actor: str) -> RolloutRecord:
    """A new rollout in the shadow phase: the challenger gets mirrored traffic and no live traffic."""
    _need_actor(actor)
    if not champion:
        raise RolloutError("champion must be non-empty")
    if spec.challenger == champion:
        raise RolloutError(f"challenger {spec.challenger!r} is already the champion of model {spec.model!r}")
    at = iso_utc(now)
    reason = (
        f"rollout started by {actor}: shadowing {spec.challenger!r} on {spec.mirror_percent:g}% of "
        f"champion {champion!r}'s traffic"
    )
    return RolloutRecord(
        spec=spec,
        champion=champion,
        state=RolloutState.SHADOW,
        reason=reason,
        started_at=at,
        updated_at=at,
        transitions=[
            Transition(
                at=at,
                from_state=None,
                to_state=RolloutState.SHADOW,
                step=-1,
                challenger_percent=0,
                reason=reason,
                actor=actor,
            )
        ],
    )


def tick(record: RolloutRecord, evidence: WindowEvidence | None, now: float) -> RolloutRecord:
    """Judge one window and take the decision it supports; at most one step per tick.

    Order of precedence: any acting check that has now failed ``failing_windows``
    consecutive judgements rolls back (even if another check lacks samples);
    else any check lacking samples (or no evidence at all) holds the rollout
    inconclusive; else the phase resumes if it was inconclusive, and a passing
    judgement credits ``min(now - last_tick, evidence.window_s)`` held seconds,
    advancing once the phase's hold is reached. A failing judgement below its
    count holds traffic and credits nothing.
    """
    if record.state.terminal:
        return record.model_copy(update={"last_tick": now})
    if record.state is RolloutState.PAUSED:
        return record.model_copy(update={"last_tick": now, "updated_at": iso_utc(now)})

    gap = 0.0 if record.last_tick is None else max(0.0, now - record.last_tick)
    if evidence is None:
        return _inconclusive(record, "no evidence gathered for the window", now, last_tick=now, last_judgement=[])

    checks = record.spec.checks
    judgement = judge(checks, evidence, champion_serves=record.challenger_percent < 100)
    failing = _counters(record.failing, judgement)
    seen: dict[str, object] = {"last_tick": now, "failing": failing, "last_judgement": list(judgement.results)}

    acted = [r for r in judgement.failing if failing[r.name] >= checks.failing_windows(r.name)]
    if acted:
        reason = "; ".join(_rollback_reason(r, failing[r.name]) for r in acted)
        return _move(
            record,
            RolloutState.ROLLED_BACK,
            now=now,
            reason=reason,
            actor=CONTROLLER_ACTOR,
            challenger_percent=0,
            resumed_state=None,
            **seen,
        )
    if judgement.insufficient:
        return _inconclusive(record, "; ".join(r.detail for r in judgement.insufficient), now, **seen)

    current = record
    if record.state is RolloutState.INCONCLUSIVE:
        current = _move(
            record,
            record.phase,
            now=now,
            reason=f"evidence sufficient again; back to {_where(record.phase, record.challenger_percent)}",
            actor=CONTROLLER_ACTOR,
            resumed_state=None,
        )
    where = _where(current.phase, current.challenger_percent)
    if not judgement.passing:
        fails = "; ".join(
            f"{r.detail} ({failing[r.name]} of {checks.failing_windows(r.name)} failing windows)"
            for r in judgement.failing
        )
        return current.model_copy(update={**seen, "updated_at": iso_utc(now), "reason": f"{where}: holding; {fails}"})
    held = current.held_s + min(gap, evidence.window_s)
    if held + _HOLD_EPSILON_S < current.hold_s:
        reason = f"{where}: {held:.0f} of {current.hold_s:g} s held with all checks passing"
        return current.model_copy(update={**seen, "held_s": held, "updated_at": iso_utc(now), "reason": reason})
    return _advance(current, now, **seen)


def _counters(previous: Mapping[str, int], judgement: Judgement) -> dict[str, int]:
    """Consecutive failing counts after this judgement: fail +1, insufficient unchanged, anything else reset."""
    counts: dict[str, int] = {}
    for r in judgement.results:
        if r.status == "fail" and r.acting:
            counts[r.name] = previous.get(r.name, 0) + 1
        elif r.status == "insufficient" and previous.get(r.name, 0):
            counts[r.name] = previous[r.name]
    return counts


def _rollback_reason(result: CheckResult, windows: int) -> str:
    assert result.value is not None  # a failing result always has its value
    feature = f" (feature {result.feature!r})" if result.feature is not None else ""
    return (f"{result.name} {fmt_value(result.value)} > {fmt_value(result.threshold)}{feature} for {windows} "
            "consecutive windows")


def _where(phase: RolloutState, percent: int) -> str:
    return "shadow" if phase is RolloutState.SHADOW else f"canary at {percent}%"


def _inconclusive(record: RolloutRecord, reason: str, now: float, **seen: object) -> RolloutRecord:
    return _move(
        record,
        RolloutState.INCONCLUSIVE,
        now=now,
        reason=f"inconclusive: {reason}",
        actor=CONTROLLER_ACTOR,
        resumed_state=record.phase,
        **seen,
    )


def _advance(record: RolloutRecord, now: float, **seen: object) -> RolloutRecord:
    spec = record.spec
    held = f"held {record.hold_s:g} s with all checks passing"
    if record.phase is RolloutState.SHADOW:
        nxt = 0
        reason = f"shadow {held}; {spec.steps[0]}% of traffic to {spec.challenger!r}"
    elif record.step + 1 < len(spec.steps):
        nxt = record.step + 1
        reason = f"{spec.steps[record.step]}% {held}; {spec.steps[nxt]}% of traffic to {spec.challenger!r}"
    else:
        reason = (
            f"{spec.steps[record.step]}% {held}; {spec.challenger!r} promoted to champion, "
            f"{record.champion!r} kept as previous champion"
        )
        return _promoted(record, now, reason, CONTROLLER_ACTOR, **seen)
    return _move(
        record,
        RolloutState.CANARY,
        now=now,
        reason=reason,
        actor=CONTROLLER_ACTOR,
        step=nxt,
        challenger_percent=spec.steps[nxt],
        held_s=0.0,
        **seen,
    )


def _promoted(record: RolloutRecord, now: float, reason: str, actor: str, **seen: object) -> RolloutRecord:
    return _move(
        record,
        RolloutState.PROMOTED,
        now=now,
        reason=reason,
        actor=actor,
        challenger_percent=100,
        previous_champion=record.champion,
        resumed_state=None,
        **seen,
    )


# ---------------------------------------------------------------------------------------------- operator actions


def _need_actor(actor: str) -> None:
    if not actor:
        raise RolloutError("actor must be non-empty: every change names who made it")


def _running(record: RolloutRecord, action: str, actor: str) -> None:
    _need_actor(actor)
    if record.state.terminal:
        raise RolloutError(f"cannot {action}: {record.describe()} is already {record.state.value}; start a new rollout")


def _with_reason(text: str, reason: str) -> str:
    return f"{text}: {reason}" if reason else text


def pause(record: RolloutRecord, now: float, actor: str, reason: str = "") -> RolloutRecord:
    """Hold traffic where it is and stop judging until ``resume``; held time and counters are kept."""
    _running(record, "pause", actor)
    if record.state is RolloutState.PAUSED:
        raise RolloutError(f"cannot pause: {record.describe()} is already paused")
    return _move(
        record,
        RolloutState.PAUSED,
        now=now,
        reason=_with_reason(f"paused by {actor}", reason),
        actor=actor,
        resumed_state=record.phase,
    )


def resume(record: RolloutRecord, now: float, actor: str, reason: str = "") -> RolloutRecord:
    """Return a paused rollout to the phase it was paused from; the next tick judges again.

    ``last_tick`` becomes ``now`` so that the next tick credits only time after the resume.
    """
    _running(record, "resume", actor)
    if record.state is not RolloutState.PAUSED:
        raise RolloutError(f"cannot resume: {record.describe()} is {record.state.value}, not paused")
    return _move(
        record,
        record.phase,
        now=now,
        reason=_with_reason(f"resumed by {actor}", reason),
        actor=actor,
        resumed_state=None,
        last_tick=now,
    )


def promote(record: RolloutRecord, now: float, actor: str, reason: str = "") -> RolloutRecord:
    """Force promotion now, whatever the phase or evidence: the challenger becomes champion at 100%."""
    _running(record, "promote", actor)
    return _promoted(record, now, _with_reason(f"promoted by {actor}", reason), actor)


def abort(record: RolloutRecord, now: float, actor: str, reason: str = "") -> RolloutRecord:
    """Roll back now: the challenger loses its live traffic and its mirror."""
    _running(record, "abort", actor)
    return _move(
        record,
        RolloutState.ROLLED_BACK,
        now=now,
        reason=_with_reason(f"aborted by {actor}", reason),
        actor=actor,
        challenger_percent=0,
        resumed_state=None,
    )


# -------------------------------------------------------------------------------------------------- traffic


@dataclass(frozen=True)
class Traffic:
    """The routing a rollout wants right now, independent of how routing is stored."""

    champion: str
    challenger: str
    challenger_percent: int
    mirror_percent: float


def desired_traffic(record: RolloutRecord) -> Traffic:
    """Shadow/canary/paused/inconclusive keep the current share and the mirror; terminal states drop both.

    After promotion the roles swap: the former challenger is the champion and
    the former champion is named as ``challenger`` (with 0%) so the caller knows
    what to clean up.
    """
    spec = record.spec
    if record.state is RolloutState.PROMOTED:
        return Traffic(champion=spec.challenger, challenger=record.champion, challenger_percent=0, mirror_percent=0.0)
    if record.state is RolloutState.ROLLED_BACK:
        return Traffic(champion=record.champion, challenger=spec.challenger, challenger_percent=0, mirror_percent=0.0)
    return Traffic(
        champion=record.champion,
        challenger=spec.challenger,
        challenger_percent=record.challenger_percent,
        mirror_percent=spec.mirror_percent,
    )


def apply_traffic(policy: RoutingPolicy, traffic: Traffic) -> RoutingPolicy:
    """``policy`` with the rollout's split and mirror; sticky keys, header rules, fallback and other shadows kept.

    A rollout owns the split, so ``weights`` is replaced by the champion and the
    challenger only (zero weights left out). The challenger is mirrored while
    ``mirror_percent`` > 0 and removed from the shadows otherwise; the champion is
    never a shadow. The result is validated like any policy an operator writes.
    """
    p = traffic.challenger_percent
    if traffic.champion == traffic.challenger:
        raise ValueError(f"champion and challenger are both {traffic.champion!r}")
    if not 0 <= p <= 100:
        raise ValueError(f"challenger_percent must be in 0..100, got {p}")
    weights = {traffic.champion: 100 - p, traffic.challenger: p}
    shadows = {v: pct for v, pct in policy.shadows.items() if v not in (traffic.champion, traffic.challenger)}
    if traffic.mirror_percent > 0:
        shadows[traffic.challenger] = traffic.mirror_percent
    document = policy.model_dump()
    document.update(
        champion=traffic.champion,
        weights={version: weight for version, weight in weights.items() if weight > 0},
        shadows=shadows,
    )
    return RoutingPolicy.model_validate(document)


# ---------------------------------------------------------------------------------------------- CLI helpers


def problems_of(exc: ValidationError) -> list[str]:
    """Why a stored record does not read, as ``field.path: what is wrong`` per error (a record-wide check has no
    path: only its message); for operators, who see it in refusals, logs and ``mlgate rollout status``."""
    return [f"{'.'.join(str(p) for p in e['loc'])}: " * bool(e["loc"]) + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()]



def parse_steps(text: str) -> list[int]:
    """``"5,25,50,100"`` (a trailing ``%`` is allowed) -> ``[5, 25, 50, 100]``, validated like ``RolloutSpec.steps``."""
    parts = [part.strip().removesuffix("%").strip() for part in text.split(",")]
    if not text.strip():
        raise ValueError("steps: empty; give comma-separated percentages ending in 100, e.g. 5,25,50,100")
    steps: list[int] = []
    for i, part in enumerate(parts):
        if not re.fullmatch(r"[+-]?[0-9]+", part):
            raise ValueError(f"steps[{i}]: {part!r} is not a whole percentage")
        steps.append(int(part))
    return _validate_steps(steps)


# ASCII: \d matched every Unicode digit, and float() read them ("\u0663s" was 3 s).
_DURATION = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(ms|s|m|h)?", re.ASCII)
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """``"30s"``, ``"2m"``, ``"500ms"``, ``"1h"`` or a bare number of seconds (``"1.5"``) -> seconds (>= 0)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration; use seconds (1.5) or a number with ms, s, m or h (500ms, 30s, 2m, 1h)"
        )
    value = float(match.group(1)) * _UNIT_S[match.group(2)]
    if value < 0:
        raise ValueError(f"{text!r}: a duration must not be negative")
    return value
