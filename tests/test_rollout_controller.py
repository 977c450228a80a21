"""The rollout controller against a real state file: operators' actions survive the controller's own writes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from routing import controller as controller_module
from routing.controller import OPERATOR_ATTEMPTS, RolloutController, RolloutRefused
from routing.rollout import CONTROLLER_ACTOR, RolloutSpec, RolloutState, promote
from routing.store import StateStore, StoredRollout
from telemetry import audit


class RacedStore(StateStore):
    """The real state file, with a hook that runs right after a rollout is read: the window an operator loses in."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.after_read: Callable[[], object] | None = None
        self.races = 0

    def rollout(self, model: str) -> StoredRollout | None:
        stored = super().rollout(model)
        if self.after_read is not None:
            self.races += 1
            self.after_read()
        return stored


def _controller(store: StateStore) -> RolloutController:
    return RolloutController(store, lambda model, policy: [], lambda *args: None)


def test_an_operator_action_is_applied_again_when_the_controller_ticked_in_between(tmp_path: Path) -> None:
    store = RacedStore(tmp_path / "state.db")
    store.seed_routing("m", {"champion": "1"}, "config")
    controller = _controller(store)
    controller.start(RolloutSpec(model="m", challenger="2"), "otto", now=100.0)

    def controller_ticks_once() -> None:
        store.after_read = None
        controller.tick_all(store.all_rollouts(), now=101.0)

    store.after_read = controller_ticks_once
    record, _ = controller.act("m", "pause", "otto", now=101.5, reason="lunch")
    assert store.races == 1  # the race happened: the first attempt read a record the tick then replaced
    assert record.state is RolloutState.PAUSED and record.reason == "paused by otto: lunch"
    stored = store.rollout("m")
    assert stored is not None and stored.record["state"] == "paused"
    with store.reading() as conn:
        actions = [(e.actor, e.action) for e in audit.read_entries(conn, target="rollout/m")]
    assert actions == [("otto", "rollout.start"), (CONTROLLER_ACTOR, "rollout.transition"), ("otto", "rollout.pause")]
    store.close()


def test_an_operator_action_that_keeps_losing_is_refused_as_a_conflict(tmp_path: Path) -> None:
    store = RacedStore(tmp_path / "state.db")
    store.seed_routing("m", {"champion": "1"}, "config")
    controller = _controller(store)
    controller.start(RolloutSpec(model="m", challenger="2"), "otto", now=100.0)
    ticks = iter(range(1, 100))
    store.after_read = lambda: controller.tick_all(store.all_rollouts(), now=100.0 + next(ticks))
    with pytest.raises(RolloutRefused, match=f"changed {OPERATOR_ATTEMPTS} times .* try again") as refused:
        controller.act("m", "pause", "otto", now=101.0)
    assert refused.value.status == 409 and store.races == OPERATOR_ATTEMPTS
    stored = store.rollout("m")
    assert stored is not None and stored.record["state"] != "paused"  # nothing half-applied
    store.close()


def test_a_step_the_gateway_cannot_route_is_held_not_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the routing a tick's judgement needs is refused (a version not ready, say), the rollout stays where it
    was and the next tick judges again. It used to record the step anyway: a terminal 'promoted' over a routing that
    still had the old champion, never retried. The judgement is forced to 'promote' here; the store is real."""
    store = StateStore(tmp_path / "state.db")
    store.seed_routing("m", {"champion": "1"}, "config")
    blocked: list[str] = []
    controller = RolloutController(store, lambda model, policy: list(blocked), lambda *args: None)
    controller.start(RolloutSpec(model="m", challenger="2"), "otto", now=100.0)
    started, routing = store.rollout("m"), store.routing("m")
    assert started is not None and routing is not None
    monkeypatch.setattr(controller_module, "tick", lambda record, evidence, now: promote(record, now, CONTROLLER_ACTOR))

    blocked.append("version '2' is not ready")
    assert controller.tick_all(store.all_rollouts(), now=101.0) == []
    held = store.rollout("m")
    assert held is not None and held.record == started.record and held.revision == started.revision
    assert store.routing("m") == routing

    blocked.clear()
    moved = controller.tick_all(store.all_rollouts(), now=102.0)
    assert [record.state for record in moved] == [RolloutState.PROMOTED]
    current = store.routing("m")
    assert current is not None and current.policy["champion"] == "2"
    with store.reading() as conn:
        actions = [e.action for e in audit.read_entries(conn, target="rollout/m")]
    assert actions == ["rollout.start", "rollout.transition"]
    store.close()


def test_an_unreadable_record_stops_neither_other_rollouts_nor_answers_with_a_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stored record that no longer validates (one written before a check was tightened, say) raised out of
    ``tick_all``: no other model's rollout was judged again, every tick. An operator acting on it got a 500."""
    store = StateStore(tmp_path / "state.db")
    controller = _controller(store)
    for model in ("a", "b"):
        store.seed_routing(model, {"champion": "1"}, "config")
        controller.start(RolloutSpec(model=model, challenger="2"), "otto", now=100.0)
    stored = store.rollout("a")
    assert stored is not None
    store.write_rollout("a", {**stored.record, "step": 99}, stored.revision, None)

    [judged] = controller.tick_all(store.all_rollouts(), now=101.0)
    assert judged.spec.model == "b" and judged.state is RolloutState.INCONCLUSIVE
    assert "rollout of model 'a': the stored record cannot be read, so it is not judged: step: 99 is outside -1..3" \
        in caplog.text
    with pytest.raises(RolloutRefused, match=r"^the stored rollout of model 'a' cannot be read: step: 99 is outside") \
            as refused:
        controller.act("a", "pause", "otto", now=102.0)
    assert refused.value.status == 409 and refused.value.problems == ["step: 99 is outside -1..3"]
    with pytest.raises(RolloutRefused, match="cannot be read") as refused:
        controller.start(RolloutSpec(model="a", challenger="3"), "otto", now=102.0)
    assert refused.value.status == 409
    store.close()


def test_a_running_rollout_that_no_longer_reads_can_still_be_aborted(tmp_path: Path) -> None:
    """Abort was refused like every other action on an unreadable record: the challenger kept its share and its
    mirror, and the model could not be rolled out again, until someone mended the state file by hand."""
    store = StateStore(tmp_path / "state.db")
    controller = _controller(store)
    store.seed_routing("a", {"champion": "1", "shadows": {"4": 10.0}}, "config")
    controller.start(RolloutSpec(model="a", challenger="2", steps=[50, 100]), "otto", now=100.0)
    stored, routing = store.rollout("a"), store.routing("a")
    assert stored is not None and routing is not None
    live = {**routing.policy, "weights": {"1": 50, "2": 50}}  # as a first step would leave it
    store.replace_routing("a", live, routing.revision, "rollout-controller", None)
    store.write_rollout("a", {**stored.record, "state": "canary", "step": 99}, stored.revision, None)

    record, new_routing = controller.act("a", "abort", "otto", now=101.0, reason="stuck")
    assert isinstance(record, dict) and record["state"] == "rolled_back" and record["challenger_percent"] == 0
    assert record["reason"] == "aborted by otto: stuck (its stored record could not be read: step: 99 is outside -1..1)"
    assert new_routing is not None and new_routing.policy["weights"] == {"1": 100}
    assert new_routing.policy["shadows"] == {"4": 10.0}  # the challenger's mirror gone, another shadow kept
    assert store.routing("a") == new_routing
    with store.separate_reader() as conn:
        entry = audit.read_entries(conn, target="rollout/a")[-1]
    assert (entry.actor, entry.action) == ("otto", "rollout.abort")
    assert entry.before == {"state": "canary", "unreadable": True}
    assert entry.after == {"state": "rolled_back", "unreadable": True, "challenger": "2"}

    with pytest.raises(RolloutRefused, match="cannot be read") as refused:  # ended: nothing more to do with it
        controller.act("a", "abort", "otto", now=102.0)
    assert refused.value.status == 409
    again, _ = controller.start(RolloutSpec(model="a", challenger="3"), "otto", now=103.0)
    assert again.state is RolloutState.SHADOW
    store.close()


def test_an_ended_rollout_that_no_longer_reads_is_replaced_by_a_new_one(tmp_path: Path) -> None:
    """An unreadable record refused every start with a 409, so a model whose last rollout ended before a check
    was tightened could never be rolled out again; nothing needs to read an ended rollout but the audit log."""
    store = StateStore(tmp_path / "state.db")
    controller = _controller(store)
    store.seed_routing("a", {"champion": "1"}, "config")
    controller.start(RolloutSpec(model="a", challenger="2"), "otto", now=100.0)
    ended, _ = controller.act("a", "abort", "otto", now=101.0)
    assert ended.state is RolloutState.ROLLED_BACK
    stored = store.rollout("a")
    assert stored is not None
    store.write_rollout("a", {**stored.record, "step": 99}, stored.revision, None)

    record, _ = controller.start(RolloutSpec(model="a", challenger="3"), "otto", now=102.0)
    assert record.spec.challenger == "3" and record.state is RolloutState.SHADOW
    with store.separate_reader() as conn:
        entry = audit.read_entries(conn, target="rollout/a")[-1]
    assert entry.action == "rollout.start" and entry.before == {"state": "rolled_back", "unreadable": True}
    store.close()
