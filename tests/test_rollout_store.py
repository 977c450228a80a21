"""Rollout persistence in the state file: one controller by lease, optimistic concurrency, audited moves."""

from __future__ import annotations

from pathlib import Path

import pytest

from routing.store import AuditNote, StaleRevision, StateStore
from telemetry import audit


def test_exactly_one_holder_until_its_lease_lapses(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first, second = StateStore(path), StateStore(path)  # two gateway processes sharing one file
    assert first.hold_lease("controller", "a", ttl_s=5.0, now_s=100.0)
    assert not second.hold_lease("controller", "b", ttl_s=5.0, now_s=101.0)
    seen = second.data_version()
    assert first.hold_lease("controller", "a", ttl_s=5.0, now_s=101.5)  # 3.5 s of 5 left: held, no write
    assert second.data_version() == seen  # so the other gateways' state polls see no change
    assert first.hold_lease("controller", "a", ttl_s=5.0, now_s=103.0)  # renewed: now runs to 108
    assert not second.hold_lease("controller", "b", ttl_s=5.0, now_s=107.0)
    assert second.hold_lease("controller", "b", ttl_s=5.0, now_s=108.5)  # a stopped renewing
    assert not first.hold_lease("controller", "a", ttl_s=5.0, now_s=109.0)
    first.close()
    second.close()


def test_rollout_writes_are_audited_and_refuse_stale_revisions(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    store.seed_routing("m", {"champion": "1"}, "config")
    note = AuditNote("otto", "rollout.start", None, {"state": "shadow"}, "try 2")
    stored, routing = store.write_rollout("m", {"state": "shadow"}, 0, note,
                                          routing=({"champion": "1", "shadows": {"2": 100}}, 1))
    assert stored.revision == 1 and routing is not None and routing.revision == 2
    with pytest.raises(StaleRevision, match="the rollout of model 'm' is at revision 1, not 0"):
        store.write_rollout("m", {"state": "canary"}, 0, None)
    with pytest.raises(StaleRevision, match="routing of model 'm' is at revision 2, not 1"):
        store.write_rollout("m", {"state": "canary"}, 1, note, routing=({"champion": "1"}, 1))
    assert store.rollout("m") == stored  # the refused transaction left nothing behind
    store.write_rollout("m", {"state": "shadow", "held_s": 3}, 1, None)  # bookkeeping
    with store.reading() as conn:
        entries = audit.read_entries(conn)
    assert [(e.action, e.target) for e in entries] == [
        ("routing.seed", "model/m"), ("rollout.start", "rollout/m"), ("routing.replace", "model/m")]
    assert store.all_rollouts()["m"].record == {"state": "shadow", "held_s": 3}
    with pytest.raises(ValueError, match="must be audited"):
        store.write_rollout("m", {"state": "canary"}, 2, None, routing=({"champion": "1"}, 2))
    store.close()
