"""The rollout controller: drives every running rollout from evidence, and applies operators' actions.

The decisions are ``routing.rollout``'s (pure); this module is the loop and the
persistence around them. Every change goes through ``StateStore.write_rollout``:
the record, the routing it implies and their audit entries commit together, with
optimistic concurrency on both (the controller and an operator acting at the
same moment cannot overwrite each other). The controller, when it loses, judges
the new record next tick; an operator's action, which names no revision, is
re-read and applied again at once, so the controller's bookkeeping write each
tick never turns an operator's pause into a conflict. Gateways
pick the routing up through the state file like any other routing change.

Exactly one controller acts, however many gateway processes share the state
file: each tick starts by taking or renewing a lease (``StateStore.hold_lease``);
the others stand by and take over when the holder stops renewing. The state
lives only in the store, so a restarted gateway continues a rollout where it
stood.

Evidence is read, not pushed: the controller asks an ``EvidenceSource`` for the
champion's and the challenger's reports over the check window, merged across
processes (``telemetry.drift.DriftView``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import ValidationError

from routing.checks import VersionWindow, WindowEvidence
from routing.policy import RoutingPolicy
from routing.rollout import (
    CONTROLLER_ACTOR,
    ENDED,
    RolloutError,
    RolloutRecord,
    RolloutSpec,
    RolloutState,
    abort,
    apply_traffic,
    desired_traffic,
    pause,
    problems_of,
    promote,
    resume,
    start,
    tick,
)
from routing.store import AuditNote, StaleRevision, StateStore, StoredRollout, StoredRouting
from telemetry.audit import iso_utc
from telemetry.drift import DriftReport

log = logging.getLogger(__name__)
_T = TypeVar("_T")

LEASE = "rollout-controller"
OPERATOR_ATTEMPTS = 5
"""How often an operator's action is re-read and applied again when another writer committed in between."""
RUNNING = frozenset({RolloutState.SHADOW.value, RolloutState.CANARY.value, RolloutState.INCONCLUSIVE.value})
"""States the controller judges (a paused rollout waits for its operator, a terminal one is done)."""

EvidenceSource = Callable[[str, str, str, float, float], "tuple[DriftReport, DriftReport] | None"]
"""(model, champion, challenger, window_s, now) -> (champion's report, challenger's report compared with it)."""

PolicyCheck = Callable[[str, RoutingPolicy], list[str]]
"""Problems of a routing policy for a model in this gateway (unknown, unready or incompatible versions)."""

ACTIONS: dict[str, Callable[[RolloutRecord, float, str, str], RolloutRecord]] = {
    "pause": pause, "resume": resume, "promote": promote, "abort": abort,
}


class RolloutRefused(Exception):
    """An operator's request that cannot be carried out; ``status`` says how (404, 409 or 422)."""

    def __init__(self, message: str, status: int, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problems = problems or []


def window_evidence(champion: DriftReport, challenger: DriftReport) -> WindowEvidence:
    """The numbers the rollout checks judge, from two reports over the same window."""
    return WindowEvidence(
        window_s=challenger.window_s,
        champion=VersionWindow(champion.requests, champion.errors, champion.latency_p99_s, champion.rows),
        challenger=VersionWindow(challenger.requests, challenger.errors, challenger.latency_p99_s, challenger.rows),
        compared_rows=challenger.compared_rows,
        agreeing_rows=challenger.agreeing_rows,
        prediction_divergence=challenger.prediction_divergence,
        input_psi={f.name: f.psi for f in challenger.features},
    )


def summary(record: RolloutRecord) -> dict[str, Any]:
    """What the audit log keeps of a record: the state, not the whole history (the log is the history)."""
    return {"challenger": record.spec.challenger, "champion": record.champion, "state": record.state.value,
            "step": record.step, "challenger_percent": record.challenger_percent, "reason": record.reason}


def _readable(stored: StoredRollout) -> RolloutRecord:
    """The stored record, or a refusal that says what is wrong with it (a 500 said nothing).

    A record written by an older version that validated less (a ``window_s`` below one evidence slot, say)
    no longer reads; an operator acting on it is told so instead of getting an internal error.
    """
    try:
        return RolloutRecord.model_validate(stored.record)
    except ValidationError as exc:
        problems = problems_of(exc)
        raise RolloutRefused(f"the stored rollout of model '{stored.model}' cannot be read: " + "; ".join(problems),
                             409, problems) from None


def _replaceable(stored: StoredRollout) -> RolloutRecord | None:
    """The record a new rollout replaces; None for an ended one that no longer reads.

    Nothing is done with an ended rollout but keep it in the audit log, so it need not read to be replaced;
    refusing it (as ``_readable`` does) left the model without any way to roll out again."""
    if stored.record.get("state") not in ENDED:
        return _readable(stored)
    try:
        return RolloutRecord.model_validate(stored.record)
    except ValidationError as exc:
        log.warning("model '%s': its %s rollout cannot be read (%s); the new rollout replaces it", stored.model,
                    stored.record["state"], "; ".join(problems_of(exc)))
        return None


def _unread_summary(stored: StoredRollout) -> dict[str, Any]:
    """What the audit log keeps of a record replaced unread: its state and that it could not be read."""
    return {"state": stored.record.get("state"), "unreadable": True}


class _RoutingHeld(Exception):
    """The controller's next step could not be routed: nothing was written, the next tick judges again."""


class RolloutController:
    def __init__(self, store: StateStore, check: PolicyCheck, evidence: EvidenceSource) -> None:
        self.store = store
        self.check = check
        self.evidence = evidence

    # ------------------------------------------------------------------ operators

    def start(self, spec: RolloutSpec, actor: str, now: float,
              reason: str | None = None) -> tuple[RolloutRecord, StoredRouting | None]:
        """Begin shadowing ``spec.challenger``; refused while another rollout of the model is running."""
        return self._as_operator(spec.model, lambda: self._start(spec, actor, now, reason))

    def act(self, model: str, action: str, actor: str, now: float,
            reason: str | None = None) -> tuple[RolloutRecord | dict[str, Any], StoredRouting | None]:
        """pause, resume, promote or abort the model's rollout, as ``actor``.

        The record comes back as it was written: a ``RolloutRecord``, or the stored JSON of a running rollout
        that no longer reads and was aborted (``_abort_unread``)."""
        return self._as_operator(model, lambda: self._act(model, action, actor, now, reason))

    @staticmethod
    def _as_operator(model: str, attempt: Callable[[], _T]) -> _T:
        """Run an operator's read-decide-write, again from a fresh read while another writer wins the race.

        The operator named no revision: what they asked for ("pause it") is judged against the
        record as it stands, not the one the controller's last tick replaced a moment before.
        """
        for _ in range(OPERATOR_ATTEMPTS):
            try:
                return attempt()
            except StaleRevision as exc:
                log.info("rollout of model '%s' changed under an operator's action (%s); applying it again", model, exc)
        raise RolloutRefused(f"the rollout of model '{model}' changed {OPERATOR_ATTEMPTS} times while this action "
                             "was being applied; try again", 409)

    def _start(self, spec: RolloutSpec, actor: str, now: float,
               reason: str | None) -> tuple[RolloutRecord, StoredRouting | None]:
        current = self.store.rollout(spec.model)
        previous = _replaceable(current) if current is not None else None
        if previous is not None and not previous.state.terminal:
            raise RolloutRefused(f"{previous.describe()} is {previous.state.value}; abort or finish it first", 409)
        routing = self._routing(spec.model)
        try:
            record = start(spec, routing.policy["champion"], now, actor)
        except RolloutError as exc:
            raise RolloutRefused(str(exc), 422) from None
        return self._commit(current, previous, record, actor, "rollout.start", reason, strict=True, routing=routing)

    def _act(self, model: str, action: str, actor: str, now: float,
             reason: str | None) -> tuple[RolloutRecord | dict[str, Any], StoredRouting | None]:
        current = self.store.rollout(model)
        if current is None:
            raise RolloutRefused(f"model '{model}' has no rollout", 404)
        try:
            previous = _readable(current)
        except RolloutRefused as unreadable:
            if action != "abort" or current.record.get("state") in ENDED:
                raise
            return self._abort_unread(current, unreadable.problems, actor, now, reason)
        try:
            record = ACTIONS[action](previous, now, actor, reason or "")
        except RolloutError as exc:
            raise RolloutRefused(str(exc), 409) from None
        return self._commit(current, previous, record, actor, f"rollout.{action}", reason, strict=True)

    def _abort_unread(self, stored: StoredRollout, problems: list[str], actor: str, now: float,
                      reason: str | None) -> tuple[dict[str, Any], StoredRouting | None]:
        """Roll back a running rollout whose record no longer reads: the one action that needs nothing from it.

        Refusing it (as every other action is refused) left the challenger its live share and its mirror, and
        the model without a way to roll out again, until someone mended the state file by hand. The split goes
        back to the champion alone, as any rollback leaves it; the challenger, when the record still names one,
        leaves the shadows. The record keeps what it held, ended (so a new rollout replaces it) with a reason
        that says why it was not read.
        """
        routing = self._routing(stored.model)
        policy = RoutingPolicy.model_validate(routing.policy)
        spec = stored.record.get("spec")
        challenger = spec.get("challenger") if isinstance(spec, dict) else None
        wanted = RoutingPolicy.model_validate({  # (a valid policy with the split and a shadow taken away: valid)
            **policy.model_dump(), "weights": {policy.champion: 100},
            "shadows": {v: pct for v, pct in policy.shadows.items() if v != challenger},
        })
        said = f"aborted by {actor}" + (f": {reason}" if reason else "")
        record = {**stored.record, "state": RolloutState.ROLLED_BACK.value, "challenger_percent": 0,
                  "reason": f"{said} (its stored record could not be read: {'; '.join(problems)})",
                  "updated_at": iso_utc(now)}
        after = {**_unread_summary(stored), "state": record["state"], "challenger": challenger}
        note = AuditNote(actor, "rollout.abort", _unread_summary(stored), after, record["reason"])
        change = (wanted.model_dump(mode="json"), routing.revision) if wanted != policy else None
        _, new_routing = self.store.write_rollout(stored.model, record, stored.revision, note, routing=change)
        return record, new_routing

    # ------------------------------------------------------------------ the loop

    def tick_all(self, rollouts: Mapping[str, StoredRollout], now: float) -> list[RolloutRecord]:
        """Judge every running rollout of ``rollouts`` once; the records that changed state, step or share."""
        moved = []
        for model, stored in rollouts.items():
            if stored.record["state"] not in RUNNING:
                continue
            try:
                record = RolloutRecord.model_validate(stored.record)
            except ValidationError as exc:  # it raised out of the loop: no other model's rollout was judged either
                log.error("rollout of model '%s': the stored record cannot be read, so it is not judged: %s", model,
                          "; ".join(problems_of(exc)))  # (no traceback: the record is wrong, not the code)
                continue
            try:
                if (updated := self._tick(stored, record, now)) is not None:
                    moved.append(updated)
            except StaleRevision as exc:  # an operator acted in between: judge the new record next tick
                log.info("rollout of model '%s' changed under the controller (%s); next tick", model, exc)
            except Exception:
                log.exception("rollout of model '%s': tick failed; retrying next tick", model)
        return moved

    def _tick(self, stored: StoredRollout, record: RolloutRecord, now: float) -> RolloutRecord | None:
        """One judgement; the new record if it moved (state, step or share), else None."""
        spec = record.spec
        reports = self.evidence(spec.model, record.champion, spec.challenger, spec.checks.window_s, now)
        updated = tick(record, window_evidence(*reports) if reports is not None else None, now)
        if len(updated.transitions) == len(record.transitions):  # bookkeeping only: no audit entry
            self.store.write_rollout(stored.model, updated.model_dump(mode="json"), stored.revision, None)
            return None
        try:
            self._commit(stored, record, updated, CONTROLLER_ACTOR, "rollout.transition", None, strict=False)
        except _RoutingHeld:
            return None
        log.info("rollout of model '%s': %s (%s)", spec.model, updated.state.value, updated.reason)
        return updated

    # ------------------------------------------------------------------ persistence

    def _routing(self, model: str) -> StoredRouting:
        stored = self.store.routing(model)
        if stored is None:
            raise RolloutRefused(f"model '{model}' has no routing yet (is it served?)", 404)
        return stored

    def _commit(self, stored: StoredRollout | None, previous: RolloutRecord | None, record: RolloutRecord,
                actor: str, action: str, reason: str | None, strict: bool,
                routing: StoredRouting | None = None) -> tuple[RolloutRecord, StoredRouting | None]:
        """Persist ``record`` with the routing it implies, audited in the same transaction.

        A routing the gateway cannot serve (an unready version, say) refuses an operator's action
        (``strict``) and holds the controller's step where it is, logged: a tick that would change the
        traffic is not written (``_RoutingHeld``) and is judged again next tick (it once wrote a terminal
        ``promoted`` over a routing that still had the old champion); one that keeps the traffic is written,
        the routing left as it is. A rollback is applied regardless: taking traffic away from a failing
        challenger must never wait for anything.
        """
        model = record.spec.model
        routing = routing or self._routing(model)
        policy = RoutingPolicy.model_validate(routing.policy)
        try:
            wanted = apply_traffic(policy, desired_traffic(record))
        except ValueError as exc:
            raise RolloutRefused(f"{record.describe()}: {exc}", 422) from None
        change = None
        if wanted != policy:
            problems = self.check(model, wanted)
            if problems and strict:
                raise RolloutRefused(f"{record.describe()} cannot route as it needs to: " + "; ".join(problems),
                                     422, problems)
            if problems and record.state is not RolloutState.ROLLED_BACK:
                moves = previous is not None and desired_traffic(record) != desired_traffic(previous)
                log.error("%s: routing not changed%s: %s", record.describe(),
                          ", so neither is the rollout" if moves else "", "; ".join(problems))
                if moves:  # a step or a promotion the routing cannot follow is not taken
                    raise _RoutingHeld
            else:
                change = (wanted.model_dump(mode="json"), routing.revision)
        before = None
        if previous is not None:
            before = summary(previous)
        elif stored is not None:  # an ended record replaced unread
            before = _unread_summary(stored)
        note = AuditNote(actor, action, before, summary(record), reason or record.reason)
        _, new_routing = self.store.write_rollout(model, record.model_dump(mode="json"),
                                                  stored.revision if stored is not None else 0, note, routing=change)
        return record, new_routing
