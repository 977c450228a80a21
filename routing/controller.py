"""The rollout controller: drives every running rollout from evidence, and applies operators' actions.

The decisions are ``routing.rollout``'s (pure); this module is the loop and the
persistence around them. Every change goes through ``StateStore.write_rollout``:
the record, the routing it implies and their audit entries commit together, with
optimistic concurrency on both (the controller and an operator acting at the
same moment cannot overwrite each other; the loser re-reads next tick). Gateways
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
import math
from collections.abc import Callable
from typing import Any

from routing.policy import RoutingPolicy
from routing.rollout import (
    CONTROLLER_ACTOR,
    RolloutError,
    RolloutRecord,
    RolloutSpec,
    RolloutState,
    VersionWindow,
    WindowEvidence,
    abort,
    apply_traffic,
    desired_traffic,
    pause,
    promote,
    resume,
    start,
    tick,
)
from routing.store import AuditNote, StaleRevision, StateStore, StoredRollout, StoredRouting
from telemetry.drift import DriftReport

log = logging.getLogger(__name__)

LEASE = "rollout-controller"

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
        champion=VersionWindow(champion.requests, min(champion.errors, champion.requests),
                               champion.latency_p99_s, champion.rows),
        challenger=VersionWindow(challenger.requests, min(challenger.errors, challenger.requests),
                                 challenger.latency_p99_s, challenger.rows),
        compared_rows=challenger.compared_rows,
        agreeing_rows=min(challenger.agreeing_rows, challenger.compared_rows),
        prediction_divergence=challenger.prediction_divergence,
        input_psi={f.name: f.psi for f in challenger.features if math.isfinite(f.psi)},
    )


def summary(record: RolloutRecord) -> dict[str, Any]:
    """What the audit log keeps of a record: the state, not the whole history (the log is the history)."""
    return {"challenger": record.spec.challenger, "champion": record.champion, "state": record.state.value,
            "step": record.step, "challenger_percent": record.challenger_percent, "reason": record.reason}


class RolloutController:
    def __init__(self, store: StateStore, check: PolicyCheck, evidence: EvidenceSource) -> None:
        self.store = store
        self.check = check
        self.evidence = evidence

    # ------------------------------------------------------------------ operators

    def get(self, model: str) -> RolloutRecord | None:
        stored = self.store.rollout(model)
        return RolloutRecord.model_validate(stored.record) if stored is not None else None

    def start(self, spec: RolloutSpec, actor: str, now: float,
              reason: str | None = None) -> tuple[RolloutRecord, StoredRouting | None]:
        """Begin shadowing ``spec.challenger``; refused while another rollout of the model is running."""
        current = self.store.rollout(spec.model)
        if current is not None:
            running = RolloutRecord.model_validate(current.record)
            if not running.state.terminal:
                raise RolloutRefused(f"{running.describe()} is {running.state.value}; abort or finish it first", 409)
        routing = self._routing(spec.model)
        try:
            record = start(spec, routing.policy["champion"], now, actor)
        except RolloutError as exc:
            raise RolloutRefused(str(exc), 422) from None
        return self._commit(current, record, actor, "rollout.start", reason, strict=True)

    def act(self, model: str, action: str, actor: str, now: float,
            reason: str | None = None) -> tuple[RolloutRecord, StoredRouting | None]:
        """pause, resume, promote or abort the model's rollout, as ``actor``."""
        current = self.store.rollout(model)
        if current is None:
            raise RolloutRefused(f"model '{model}' has no rollout", 404)
        try:
            record = ACTIONS[action](RolloutRecord.model_validate(current.record), now, actor, reason or "")
        except RolloutError as exc:
            raise RolloutRefused(str(exc), 409) from None
        return self._commit(current, record, actor, f"rollout.{action}", reason, strict=True)

    # ------------------------------------------------------------------ the loop

    def tick_all(self, now: float) -> list[RolloutRecord]:
        """Judge every running rollout once; the records that changed state, step or share."""
        moved = []
        for model, stored in self.store.all_rollouts().items():
            record = RolloutRecord.model_validate(stored.record)
            if record.state.terminal or record.state is RolloutState.PAUSED:
                continue
            try:
                updated = self._tick(stored, record, now)
            except StaleRevision as exc:  # an operator acted in between: judge the new record next tick
                log.info("rollout of model '%s' changed under the controller (%s); next tick", model, exc)
                continue
            except Exception:
                log.exception("rollout of model '%s': tick failed; retrying next tick", model)
                continue
            if len(updated.transitions) != len(record.transitions):
                moved.append(updated)
        return moved

    def _tick(self, stored: StoredRollout, record: RolloutRecord, now: float) -> RolloutRecord:
        spec = record.spec
        reports = self.evidence(spec.model, record.champion, spec.challenger, spec.checks.window_s, now)
        evidence = window_evidence(*reports) if reports is not None else None
        updated = tick(record, evidence, now)
        if len(updated.transitions) == len(record.transitions):
            self._save_quietly(stored, updated)
            return updated
        self._commit(stored, updated, CONTROLLER_ACTOR, "rollout.transition", None, strict=False)
        log.info("rollout of model '%s': %s (%s)", spec.model, updated.state.value, updated.reason)
        return updated

    # ------------------------------------------------------------------ persistence

    def _routing(self, model: str) -> StoredRouting:
        stored = self.store.all_routing().get(model)
        if stored is None:
            raise RolloutRefused(f"model '{model}' has no routing yet (is it served?)", 404)
        return stored

    def _save_quietly(self, stored: StoredRollout, record: RolloutRecord) -> None:
        """Held time, counters and the latest judgement: no traffic change, nothing for the audit log."""
        self.store.write_rollout(stored.model, record.model_dump(mode="json"), stored.revision, CONTROLLER_ACTOR,
                                 None)

    def _commit(self, stored: StoredRollout | None, record: RolloutRecord, actor: str, action: str,
                reason: str | None, strict: bool) -> tuple[RolloutRecord, StoredRouting | None]:
        """Persist ``record`` with the routing it implies, audited; refuse (``strict``) or log a routing problem.

        The controller is not strict: a rollback must happen even if, say, the champion went
        unready meanwhile; it then keeps the record's decision and the old routing, and says so.
        """
        model = record.spec.model
        routing = self._routing(model)
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
            if problems:
                log.error("%s: routing not changed: %s", record.describe(), "; ".join(problems))
            else:
                change = (wanted.model_dump(mode="json"), routing.revision)
        before = summary(RolloutRecord.model_validate(stored.record)) if stored is not None else None
        note = AuditNote(action, before, summary(record), reason or record.reason)
        _, new_routing = self.store.write_rollout(model, record.model_dump(mode="json"),
                                                  stored.revision if stored is not None else 0, actor, note,
                                                  routing=change, routing_reason=record.reason)
        return record, new_routing
