"""The hash-chained audit log: appending, tampering of every kind it claims to detect, and rendering.

Tampering is done the way an attacker with database access would do it: raw
SQL on the table, bypassing the module.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from telemetry.audit import (
    GENESIS_HASH,
    AuditEntry,
    append,
    check_anchor,
    ensure_schema,
    entry_hash,
    head_hash,
    read_entries,
    render,
    verify,
    verify_database,
    write_transaction,
)

T0 = datetime(2026, 11, 22, 10, 31, 2, 123456, tzinfo=timezone.utc)


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(":memory:")
    ensure_schema(db)
    yield db
    db.close()


def add(db: sqlite3.Connection, n: int = 1, *, actor: str = "alice", target: str = "model/breast-cancer") -> None:
    """Append ``n`` routing changes, each in its own BEGIN IMMEDIATE transaction."""
    for _ in range(n):
        with write_transaction(db):
            seq = head_seq(db) + 1
            append(
                db,
                actor=actor,
                action="routing.replace",
                target=target,
                before={"weights": {"1": 100 - seq}},
                after={"weights": {"1": 99 - seq, "2": seq + 1}},
                reason=f"step {seq}",
                at=T0 + timedelta(seconds=seq),
            )


def head_seq(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_log").fetchone()[0])


def tamper(db: sqlite3.Connection, sql: str, *params: Any) -> None:
    db.execute(sql, params)
    db.commit()


def swap_contents(db: sqlite3.Connection, a: int, b: int) -> None:
    """Exchange every column except seq between two rows (the rows trade places in the log)."""
    cols = "at, actor, action, target, before, after, reason, prev_hash, hash"
    row_a = db.execute(f"SELECT {cols} FROM audit_log WHERE seq = ?", (a,)).fetchone()
    row_b = db.execute(f"SELECT {cols} FROM audit_log WHERE seq = ?", (b,)).fetchone()
    assignments = ", ".join(f"{c} = ?" for c in cols.split(", "))
    db.execute(f"UPDATE audit_log SET {assignments} WHERE seq = ?", (*row_b, a))
    db.execute(f"UPDATE audit_log SET {assignments} WHERE seq = ?", (*row_a, b))
    db.commit()


def rehash(db: sqlite3.Connection, seq: int) -> None:
    """What a careful attacker does after an edit: recompute that entry's own hash."""
    (entry,) = [e for e in read_entries(db) if e.seq == seq]
    digest = entry_hash(
        entry.seq, entry.at, entry.actor, entry.action, entry.target, entry.before, entry.after, entry.reason,
        entry.prev_hash,
    )
    tamper(db, "UPDATE audit_log SET hash = ? WHERE seq = ?", digest, seq)


# --- appending -------------------------------------------------------------------------------------------------


def test_append_builds_a_linked_chain(conn: sqlite3.Connection) -> None:
    add(conn, 5)
    entries = read_entries(conn)
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].prev_hash == GENESIS_HASH
    for previous, entry in itertools.pairwise(entries):
        assert entry.prev_hash == previous.hash
    for e in entries:
        assert e.hash == entry_hash(e.seq, e.at, e.actor, e.action, e.target, e.before, e.after, e.reason, e.prev_hash)
    assert len({e.hash for e in entries}) == 5
    assert verify(entries).ok
    result = verify_database(conn)
    assert (result.ok, result.checked, result.first_bad_seq, result.problem) == (True, 5, None, "")
    assert head_hash(conn) == result.head == entries[-1].hash
    # the head reported is that of the entries checked, never one read afterwards
    assert verify(entries[:3]).head == entries[2].hash != head_hash(conn)


def test_append_returns_what_reading_gives_back(conn: sqlite3.Connection) -> None:
    with write_transaction(conn):
        returned = append(
            conn, actor="bob", action="token.create", target="token/ci", before=None,
            after={"scopes": ("infer",), "limits": {7: 1.5}}, at=T0,
        )
    assert returned.at == "2026-11-22T10:31:02.123Z"
    assert returned.after == {"scopes": ["infer"], "limits": {"7": 1.5}}  # normalised the way JSON stores it
    assert read_entries(conn) == [returned]
    stored = conn.execute("SELECT after, before FROM audit_log").fetchone()
    assert stored == ('{"limits":{"7":1.5},"scopes":["infer"]}', "null")


def test_timestamps_are_utc_with_milliseconds(conn: sqlite3.Connection) -> None:
    plus_two = timezone(timedelta(hours=2))
    with write_transaction(conn):
        entry = append(conn, actor="a", action="x", target="t", before=1, after=2,
                       at=datetime(2026, 11, 22, 12, 0, 0, 999999, tzinfo=plus_two))
        default = append(conn, actor="a", action="x", target="t", before=1, after=2)
    assert entry.at == "2026-11-22T10:00:00.999Z"
    assert default.at.endswith("Z") and len(default.at) == len("2026-11-22T10:00:00.999Z")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"actor": ""}, "'actor' must be a non-empty string"),
        ({"action": "  "}, "'action' must be a non-empty string"),
        ({"target": ""}, "'target' must be a non-empty string"),
        ({"before": {1, 2}}, "'before' is not a JSON value"),
        ({"after": float("nan")}, "'after' is not a JSON value"),
        ({"at": datetime(2026, 1, 1)}, "timezone-aware"),
    ],
)
def test_append_refuses_bad_input(conn: sqlite3.Connection, kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"actor": "a", "action": "x", "target": "t", "before": None, "after": None, **kwargs}
    with pytest.raises(ValueError, match=message), write_transaction(conn):
        append(conn, **args)
    assert read_entries(conn) == []


def test_append_outside_a_transaction_is_refused(conn: sqlite3.Connection) -> None:
    with pytest.raises(RuntimeError, match="BEGIN IMMEDIATE"):
        append(conn, actor="a", action="x", target="t", before=None, after=None)


def test_a_failed_transaction_leaves_no_entry(conn: sqlite3.Connection) -> None:
    add(conn, 2)
    with pytest.raises(KeyError), write_transaction(conn):
        append(conn, actor="a", action="x", target="t", before=None, after=None)
        raise KeyError("the audited change failed")
    assert [e.seq for e in read_entries(conn)] == [1, 2]
    assert verify_database(conn).ok


def test_concurrent_appenders_on_one_file_keep_a_valid_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with sqlite3.connect(path) as setup:
        ensure_schema(setup)
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def writer(name: str) -> None:
        db = sqlite3.connect(path, timeout=30)
        try:
            start.wait()
            for i in range(50):
                with write_transaction(db):
                    append(db, actor=name, action="routing.replace", target="model/m", before=i, after=i + 1)
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=writer, args=(name,)) for name in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    with sqlite3.connect(path) as db:
        entries = read_entries(db)
        result = verify_database(db, expected_head=head_hash(db))
    assert [e.seq for e in entries] == list(range(1, 101))
    assert sum(e.actor == "alice" for e in entries) == sum(e.actor == "bob" for e in entries) == 50
    assert (result.ok, result.checked) == (True, 100), result.problem


# --- tampering -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("after", '{"weights":{"1":50,"2":50}}'),
        ("before", "null"),
        ("reason", "nothing to see here"),
        ("reason", None),
        ("actor", "mallory"),
        ("action", "routing.noop"),
        ("target", "model/other"),
        ("at", "2026-11-22T10:31:09.000Z"),
        ("prev_hash", "1" * 64),
        ("hash", "f" * 64),
    ],
)
def test_an_edited_entry_is_named(conn: sqlite3.Connection, column: str, value: Any) -> None:
    add(conn, 5)
    tamper(conn, f"UPDATE audit_log SET {column} = ? WHERE seq = 3", value)
    result = verify_database(conn)
    assert (result.ok, result.first_bad_seq, result.checked) == (False, 3, 2)
    assert result.problem == "entry 3: contents do not match its hash (edited?)"


def test_stored_json_that_is_not_json_is_listed_and_flagged(conn: sqlite3.Connection) -> None:
    add(conn, 4)
    tamper(conn, "UPDATE audit_log SET after = ? WHERE seq = 2", '{"weights": {"1": 5')
    entries = read_entries(conn)  # does not raise
    assert entries[1].after == '{"weights": {"1": 5'
    result = verify(entries)
    assert (result.ok, result.first_bad_seq) == (False, 2)
    assert result.problem == "entry 2: stored 'after' is not valid JSON (edited?)"
    assert '  after: (not JSON) {"weights": {"1": 5\n' in render(entries)


def test_an_edit_with_a_recomputed_hash_is_caught_at_the_next_entry(conn: sqlite3.Connection) -> None:
    add(conn, 5)
    tamper(conn, "UPDATE audit_log SET after = ? WHERE seq = 3", '{"weights":{"1":100}}')
    rehash(conn, 3)
    result = verify_database(conn)
    assert (result.ok, result.first_bad_seq, result.checked) == (False, 4, 3)
    assert result.problem.startswith("entry 4: previous-hash does not match entry 3 (")


def test_an_edited_newest_entry_with_recomputed_hash_needs_the_anchor(conn: sqlite3.Connection) -> None:
    add(conn, 3)
    anchor = head_hash(conn)
    tamper(conn, "UPDATE audit_log SET reason = 'routine' WHERE seq = 3")
    rehash(conn, 3)
    assert verify_database(conn).ok  # nothing after it to notice
    result = verify_database(conn, expected_head=anchor)
    assert not result.ok
    assert "is not in the log" in result.problem


def test_a_removed_middle_entry_is_named_with_the_missing_seq(conn: sqlite3.Connection) -> None:
    add(conn, 5)
    tamper(conn, "DELETE FROM audit_log WHERE seq = 3")
    result = verify_database(conn)
    assert (result.ok, result.first_bad_seq, result.checked) == (False, 4, 2)
    assert result.problem == "entry 4: follows entry 2; entry 3 is missing (removed?)"


def test_several_removed_entries_are_named_as_a_range(conn: sqlite3.Connection) -> None:
    add(conn, 6)
    tamper(conn, "DELETE FROM audit_log WHERE seq IN (2, 3, 4)")
    result = verify_database(conn)
    assert result.first_bad_seq == 5
    assert result.problem == "entry 5: follows entry 1; entries 2-4 are missing (removed?)"


def test_a_removed_entry_with_the_rest_renumbered_is_caught(conn: sqlite3.Connection) -> None:
    add(conn, 5)
    tamper(conn, "DELETE FROM audit_log WHERE seq = 3")
    tamper(conn, "UPDATE audit_log SET seq = seq - 1 WHERE seq > 3")
    result = verify_database(conn)
    assert (result.first_bad_seq, result.problem) == (3, "entry 3: contents do not match its hash (edited?)")
    # ... and if the attacker also re-hashes the renumbered entry, the link to entry 2 still fails.
    rehash(conn, 3)
    result = verify_database(conn)
    assert result.first_bad_seq == 3
    assert result.problem.startswith("entry 3: previous-hash does not match entry 2")


def test_removed_oldest_entries_are_caught(conn: sqlite3.Connection) -> None:
    add(conn, 4)
    tamper(conn, "DELETE FROM audit_log WHERE seq <= 2")
    result = verify_database(conn)
    assert (result.ok, result.first_bad_seq, result.checked) == (False, 3, 0)
    assert result.problem == "log does not start at entry 1: the first entry is 3 (entries 1-2 are missing)"


def test_a_first_entry_not_linked_to_genesis_is_caught(conn: sqlite3.Connection) -> None:
    add(conn, 2)
    tamper(conn, "UPDATE audit_log SET prev_hash = ? WHERE seq = 1", "a" * 64)
    rehash(conn, 1)
    result = verify_database(conn)
    assert result.first_bad_seq == 1
    assert result.problem.startswith("entry 1: previous-hash is not the genesis hash")


def test_swapped_rows_are_caught_at_the_first_of_the_pair(conn: sqlite3.Connection) -> None:
    # Rows 2 and 3 trade all their contents: position 2 now holds what was written as entry 3,
    # whose hash covers seq 3, so the first entry of the pair no longer matches its hash.
    add(conn, 5)
    swap_contents(conn, 2, 3)
    result = verify_database(conn)
    assert (result.ok, result.first_bad_seq, result.checked) == (False, 2, 1)
    assert result.problem == "entry 2: contents do not match its hash (edited?)"


def test_swapped_seq_numbers_are_caught_at_the_first_of_the_pair(conn: sqlite3.Connection) -> None:
    add(conn, 5)
    tamper(conn, "UPDATE audit_log SET seq = -1 WHERE seq = 2")
    tamper(conn, "UPDATE audit_log SET seq = 2 WHERE seq = 3")
    tamper(conn, "UPDATE audit_log SET seq = 3 WHERE seq = -1")
    result = verify_database(conn)
    assert (result.ok, result.first_bad_seq) == (False, 2)
    assert result.problem == "entry 2: contents do not match its hash (edited?)"


def test_swapped_and_rehashed_rows_are_caught_by_the_chain(conn: sqlite3.Connection) -> None:
    add(conn, 5)
    swap_contents(conn, 2, 3)
    rehash(conn, 2)
    rehash(conn, 3)
    result = verify_database(conn)
    assert result.first_bad_seq == 2
    assert result.problem.startswith("entry 2: previous-hash does not match entry 1")


def test_entries_given_out_of_order_are_named(conn: sqlite3.Connection) -> None:
    add(conn, 4)
    e1, e2, e3, e4 = read_entries(conn)
    result = verify([e1, e3, e2, e4])
    assert (result.first_bad_seq, result.problem) == (3, "entry 3: appears before entry 2 (entries out of order)")
    result = verify([e1, e2, e2, e3])
    assert (result.first_bad_seq, result.checked) == (2, 2)
    assert "appears after entry 2" in result.problem


def test_a_filtered_log_does_not_verify(conn: sqlite3.Connection) -> None:
    add(conn, 1, target="model/a")
    add(conn, 1, target="model/b")
    add(conn, 1, target="model/a")
    only_a = read_entries(conn, target="model/a")
    assert [e.seq for e in only_a] == [1, 3]
    assert not verify(only_a).ok


def test_removing_the_newest_entry_is_caught_only_with_an_anchor(conn: sqlite3.Connection) -> None:
    add(conn, 5)
    anchor = head_hash(conn)
    assert verify_database(conn, expected_head=anchor).ok
    assert verify_database(conn, expected_head=anchor.upper()).ok
    tamper(conn, "DELETE FROM audit_log WHERE seq = 5")
    without = verify_database(conn)
    assert (without.ok, without.checked) == (True, 4)  # a shorter chain is still a valid chain
    with_anchor = verify_database(conn, expected_head=anchor)
    assert (with_anchor.ok, with_anchor.checked, with_anchor.first_bad_seq) == (False, 4, None)
    assert with_anchor.problem.startswith("head is entry 4 (")
    assert "newest entries removed" in with_anchor.problem


def test_an_anchor_recorded_before_later_appends_is_reported_as_such(conn: sqlite3.Connection) -> None:
    add(conn, 2)
    anchor = head_hash(conn)
    add(conn, 3)
    result = verify_database(conn, expected_head=anchor)
    assert not result.ok
    assert result.problem == (
        "head is entry 5, but the expected head is entry 2's hash (3 entries appended since it was recorded?)"
    )


def test_empty_log(conn: sqlite3.Connection) -> None:
    assert verify_database(conn) == verify([])
    result = verify([])
    assert (result.ok, result.checked, result.first_bad_seq) == (True, 0, None)
    assert head_hash(conn) == result.head == GENESIS_HASH
    assert verify([], expected_head=GENESIS_HASH).ok
    emptied = verify([], expected_head="ab" * 32)
    assert (emptied.ok, emptied.checked) == (False, 0)
    assert "log is empty" in emptied.problem


@pytest.mark.parametrize("anchor", ["", "abc", "18651cae95b6", "g" * 64, "ab" * 33, "\u0661" * 64])
def test_an_anchor_that_is_no_hash_is_refused_not_reported_as_tampering(conn: sqlite3.Connection,
                                                                        anchor: str) -> None:
    """A mistyped or shortened anchor (the 12 digits render shows) was 'not in the log (newest entries removed?)'."""
    add(conn, 2)
    with pytest.raises(ValueError, match="64 hex digits"):
        verify_database(conn, expected_head=anchor)
    with pytest.raises(ValueError, match="64 hex digits"):
        check_anchor(anchor)
    assert check_anchor(f" {head_hash(conn).upper()}\n") == head_hash(conn)


# --- reading ---------------------------------------------------------------------------------------------------


def test_read_entries_filters(conn: sqlite3.Connection) -> None:
    for target in ("model/a", "model/b", "model/a", "model/a", "model/b"):
        add(conn, 1, target=target)
    assert [e.seq for e in read_entries(conn, since_seq=3)] == [4, 5]
    assert [e.seq for e in read_entries(conn, limit=2)] == [1, 2]
    assert [e.seq for e in read_entries(conn, target="model/a", since_seq=1, limit=1)] == [3]
    assert read_entries(conn, limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        read_entries(conn, limit=-1)


def test_ensure_schema_is_idempotent_and_keeps_an_open_transaction(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    append(conn, actor="a", action="x", target="t", before=None, after=1)
    ensure_schema(conn)
    assert conn.in_transaction
    conn.rollback()
    assert read_entries(conn) == []


# --- JSON ------------------------------------------------------------------------------------------------------


def test_json_round_trip(conn: sqlite3.Connection) -> None:
    add(conn, 2)
    with write_transaction(conn):
        append(conn, actor="bob", action="token.create", target="token/ci", before=None,
               after={"scopes": ["infer"], "note": "für CI ✓"}, reason=None)
    entries = read_entries(conn)
    for entry in entries:
        doc = entry.to_json()
        assert set(doc) == {"seq", "at", "actor", "action", "target", "before", "after", "reason", "prev_hash", "hash"}
        assert AuditEntry.from_json(doc) == entry
        assert AuditEntry.from_json(json.loads(json.dumps(doc))) == entry
    assert verify([AuditEntry.from_json(json.loads(json.dumps(e.to_json()))) for e in entries]).ok


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: [d], "must be a JSON object, got list"),
        (lambda d: {k: v for k, v in d.items() if k not in ("hash", "actor")}, r"missing field\(s\): actor, hash"),
        (lambda d: {**d, "extra": 1}, r"unexpected field\(s\): extra"),
        (lambda d: {**d, "seq": "1"}, "'seq' must be an integer >= 1, got '1'"),
        (lambda d: {**d, "seq": True}, "'seq' must be an integer >= 1, got True"),
        (lambda d: {**d, "seq": 0}, "'seq' must be an integer >= 1, got 0"),
        (lambda d: {**d, "actor": 7}, "audit entry 1: field 'actor' must be a string, got int"),
        (lambda d: {**d, "target": ""}, "audit entry 1: field 'target' must not be empty"),
        (lambda d: {**d, "at": "2026-11-22 10:31"}, "audit entry 1: field 'at' must look like"),
        (lambda d: {**d, "hash": "abc"}, "audit entry 1: field 'hash' must be 64 lowercase hex digits"),
        (lambda d: {**d, "reason": 3}, "audit entry 1: field 'reason' must be a string or null, got int"),
    ],
)
def test_from_json_refuses_malformed_docs(conn: sqlite3.Connection, change: Any, message: str) -> None:
    add(conn, 1)
    doc = read_entries(conn)[0].to_json()
    with pytest.raises(ValueError, match=message):
        AuditEntry.from_json(change(doc))


# --- rendering -------------------------------------------------------------------------------------------------


def test_render_shows_what_changed_and_why(conn: sqlite3.Connection) -> None:
    with write_transaction(conn):
        first = append(
            conn, actor="alice", action="routing.replace", target="model/breast-cancer",
            before={"weights": {"1": 100}, "shadow": "v2", "sticky": True, "retries": 1},
            after={"weights": {"1": 90, "2": 10}, "sticky": True, "fallback": "v1", "retries": True},
            reason="canary for v2", at=T0,
        )
        second = append(conn, actor="bob", action="token.create", target="token/ci", before=None,
                        after={"scopes": ["infer"]}, at=T0)
    text = render(read_entries(conn))
    assert text == (
        "#1  2026-11-22T10:31:02.123Z  alice  routing.replace  model/breast-cancer\n"
        "  reason: canary for v2\n"
        '  fallback: (absent) -> "v1"\n'
        "  retries: 1 -> true\n"
        '  shadow: "v2" -> (absent)\n'
        '  weights: {"1": 100} -> {"1": 90, "2": 10}\n'
        f"  hash: {first.hash[:12]}…\n"
        "\n"
        "#2  2026-11-22T10:31:02.123Z  bob  token.create  token/ci\n"
        "  before: null\n"
        '  after: {"scopes": ["infer"]}\n'
        f"  hash: {second.hash[:12]}…\n"
    )
    assert "sticky" not in text
    assert render([]) == ""


def test_render_cannot_be_used_to_forge_lines(conn: sqlite3.Connection) -> None:
    with write_transaction(conn):
        append(conn, actor="mallory\x1b[2K", action="x", target="t", before={}, after={},
               reason="fine\n#99  2026-01-01T00:00:00.000Z  admin  nothing  t")
    text = render(read_entries(conn))
    assert "\x1b" not in text
    assert not any(line.startswith("#99") for line in text.splitlines())
    assert "  (no change)" in text
