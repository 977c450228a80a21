"""Routing state that survives restarts and reaches every gateway process: one SQLite file.

Why SQLite in WAL mode: the state is small (one row per logical model), writes
are rare (an operator's change), reads are frequent (every gateway polls), and
WAL lets readers run while a writer commits. Several gateway processes on one
machine share the file; ``PRAGMA data_version`` tells a process in
microseconds whether anyone else committed since it last looked, so polling
every quarter second costs nothing and a change reaches every process well
within a second.

Every change is written in the same transaction as its audit entry
(``telemetry.audit``), so the log cannot miss a change that took effect nor
record one that did not. Writes use optimistic concurrency: the writer names
the revision it read, and a stale revision is refused (``StaleRevision``)
instead of silently overwriting someone else's change.

The store keeps policies as JSON documents; it does not interpret them (that is
``routing.policy``), so a schema change never needs a migration here.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telemetry import audit

SCHEMA = """
CREATE TABLE IF NOT EXISTS routing (
    model TEXT PRIMARY KEY,
    revision INTEGER NOT NULL,
    policy TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    updated_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollouts (
    model TEXT PRIMARY KEY,
    revision INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""


class StaleRevision(Exception):
    """A write based on a revision that is no longer current."""

    def __init__(self, model: str, expected: int, current: int, what: str = "routing") -> None:
        super().__init__(f"{what} of model '{model}' is at revision {current}, not {expected}; "
                         "read it again and reapply your change")
        self.current = current


@dataclass(frozen=True, slots=True)
class StoredRollout:
    model: str
    revision: int
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AuditNote:
    """One audit entry to write with a change: who did what, and why."""

    actor: str
    action: str
    before: Any
    after: Any
    reason: str | None


@dataclass(frozen=True, slots=True)
class StoredRouting:
    model: str
    revision: int
    policy: dict[str, Any]
    updated_at: str
    updated_by: str

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "revision": self.revision, "routing": self.policy,
                "updated_at": self.updated_at, "updated_by": self.updated_by}


def utc_now() -> str:
    return audit.iso_utc(time.time())


class StateStore:
    """The state file of one gateway deployment (routing, tokens, audit log).

    Two connections, each behind its own lock: writes (admin changes, in worker threads) may wait
    for another process's write lock, and must never make the event loop's reads (``data_version``
    polls, reloads) wait behind them; in WAL mode readers never wait for writers.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():  # owner-only: token digests and the audit log are nobody else's business
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.path = path
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._writer = _connect(path)
        self._writer.execute("PRAGMA journal_mode=WAL")
        with self.transaction() as conn:
            for statement in SCHEMA.split(";"):  # not executescript: it would commit the transaction
                if statement.strip():
                    conn.execute(statement)
            audit.ensure_schema(conn)
        self._reader = _connect(path)

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            self._writer.close()
            self._reader.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the file's write lock from its first statement
        (``BEGIN IMMEDIATE``), so a read-check-write sequence cannot interleave with another process."""
        with self._write_lock, audit.write_transaction(self._writer) as conn:
            yield conn

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        with self._read_lock:
            yield self._reader

    @contextlib.contextmanager
    def separate_reader(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own, for long reads in a worker thread (verifying the whole audit chain)
        that must not hold the lock the event loop's polls take."""
        conn = _connect(self.path)
        try:
            yield conn
        finally:
            conn.close()

    def data_version(self) -> int:
        """Changes whenever any connection but the reader (this process's writer included) has committed."""
        with self._read_lock:
            row = self._reader.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def routing(self, model: str) -> StoredRouting | None:
        with self.reading() as conn:
            return _routing_row(conn, model)

    def all_routing(self) -> dict[str, StoredRouting]:
        with self.reading() as conn:
            rows = conn.execute("SELECT model, revision, policy, updated_at, updated_by FROM routing").fetchall()
        return {row[0]: _stored(row) for row in rows}

    def seed_routing(self, model: str, policy: dict[str, Any], actor: str) -> StoredRouting:
        """Write the first routing of a model unless it has one already (then that one is returned)."""
        with self.transaction() as conn:
            existing = _routing_row(conn, model)
            if existing is not None:
                return existing
            stored = StoredRouting(model, 1, policy, utc_now(), actor)
            _write(conn, stored)
            audit.append(conn, actor=actor, action="routing.seed", target=f"model/{model}",
                         before=None, after=policy, reason="first start with this model (from the config file)")
            return stored

    def replace_routing(self, model: str, policy: dict[str, Any], expected_revision: int, actor: str,
                        reason: str | None) -> StoredRouting:
        """Replace a model's routing if it is still at ``expected_revision``; audited in the same transaction."""
        with self.transaction() as conn:
            return _replace_routing(conn, model, policy, expected_revision, actor, reason)

    # ------------------------------------------------------------------ rollouts

    def rollout(self, model: str) -> StoredRollout | None:
        with self.reading() as conn:
            return _rollout_row(conn, model)

    def all_rollouts(self) -> dict[str, StoredRollout]:
        with self.reading() as conn:
            rows = conn.execute("SELECT model, revision, record FROM rollouts").fetchall()
        return {row[0]: StoredRollout(row[0], int(row[1]), json.loads(row[2])) for row in rows}

    def write_rollout(self, model: str, record: dict[str, Any], expected_revision: int, note: AuditNote | None,
                      routing: tuple[dict[str, Any], int] | None = None) -> tuple[StoredRollout, StoredRouting | None]:
        """Write a rollout record (and, when it moves traffic, the model's routing) in one audited transaction.

        Both writes use optimistic concurrency: the controller and an operator may act on the same
        rollout at once, and whichever commits second gets ``StaleRevision`` and re-reads. ``note``
        None: bookkeeping only (held time, counters), which the audit log does not need (and which
        cannot move traffic).
        """
        if note is None and routing is not None:
            raise ValueError("a routing change must be audited: give a note")
        with self.transaction() as conn:
            current = _rollout_row(conn, model)
            current_revision = current.revision if current is not None else 0
            if current_revision != expected_revision:
                raise StaleRevision(model, expected_revision, current_revision, what="the rollout")
            stored = StoredRollout(model, current_revision + 1, record)
            conn.execute("INSERT INTO rollouts (model, revision, record) VALUES (?, ?, ?) ON CONFLICT(model) DO "
                         "UPDATE SET revision = excluded.revision, record = excluded.record",
                         (model, stored.revision, json.dumps(record, sort_keys=True)))
            new_routing = None
            if note is not None:
                audit.append(conn, actor=note.actor, action=note.action, target=f"rollout/{model}",
                             before=note.before, after=note.after, reason=note.reason)
                if routing is not None:
                    policy, expected_routing = routing
                    new_routing = _replace_routing(conn, model, policy, expected_routing, note.actor, note.reason)
            return stored, new_routing

    # ------------------------------------------------------------------ leases

    def hold_lease(self, name: str, holder: str, ttl_s: float, now_s: float) -> bool:
        """Take or renew the lease ``name`` for ``holder`` unless another holder's lease is still running.

        How several gateway processes agree that exactly one of them runs the rollout controller: the
        holder renews once half of ``ttl_s`` has passed; when it dies, another takes over once the lease expires.
        The read comes first so that the non-holders' polls do not write (and wake every follower).
        """
        with self.reading() as conn:
            row = conn.execute("SELECT holder, expires_at FROM leases WHERE name = ?", (name,)).fetchone()
        if row is not None and row[0] != holder and row[1] > now_s:
            return False
        if row is not None and row[0] == holder and row[1] - now_s > ttl_s / 2:
            return True  # renewed recently enough: no write
        with self.transaction() as conn:
            row = conn.execute("SELECT holder, expires_at FROM leases WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] != holder and row[1] > now_s:
                return False
            conn.execute("INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) ON CONFLICT(name) DO "
                         "UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at",
                         (name, holder, now_s + ttl_s))
            return True



def _replace_routing(conn: sqlite3.Connection, model: str, policy: dict[str, Any], expected_revision: int,
                     actor: str, reason: str | None) -> StoredRouting:
    current = _routing_row(conn, model)
    current_revision = current.revision if current is not None else 0
    if current_revision != expected_revision:
        raise StaleRevision(model, expected_revision, current_revision)
    stored = StoredRouting(model, current_revision + 1, policy, utc_now(), actor)
    _write(conn, stored)
    audit.append(conn, actor=actor, action="routing.replace", target=f"model/{model}",
                 before=current.policy if current is not None else None, after=policy, reason=reason)
    return stored


def _rollout_row(conn: sqlite3.Connection, model: str) -> StoredRollout | None:
    row = conn.execute("SELECT model, revision, record FROM rollouts WHERE model = ?", (model,)).fetchone()
    return StoredRollout(row[0], int(row[1]), json.loads(row[2])) if row is not None else None


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable at checkpoints, never inconsistent
    return conn


def _routing_row(conn: sqlite3.Connection, model: str) -> StoredRouting | None:
    row = conn.execute("SELECT model, revision, policy, updated_at, updated_by FROM routing WHERE model = ?",
                       (model,)).fetchone()
    return _stored(row) if row is not None else None


def _stored(row: tuple[Any, ...]) -> StoredRouting:
    return StoredRouting(model=row[0], revision=int(row[1]), policy=json.loads(row[2]), updated_at=row[3],
                         updated_by=row[4])


def _write(conn: sqlite3.Connection, stored: StoredRouting) -> None:
    conn.execute(
        "INSERT INTO routing (model, revision, policy, updated_at, updated_by) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT(model) DO UPDATE SET revision = excluded.revision, policy = excluded.policy, "
        "updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        (stored.model, stored.revision, json.dumps(stored.policy, sort_keys=True), stored.updated_at,
         stored.updated_by),
    )
