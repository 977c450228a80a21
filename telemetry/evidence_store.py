"""Evidence from every gateway process, merged: one SQLite file of one-second count slots.

Every process publishes the slots its versions completed (``telemetry.evidence``)
about once a second; a reader sums the slots of a window over every process,
which is exact because the slots hold counts. The file sits beside the state
file but is a separate database: evidence is written every second, and the
state file's ``data_version`` (which every gateway polls to pick up routing
changes) must only move when the routing, tokens or rollouts do.

Old slots are pruned after ``RETENTION_S`` (through an index on ``slot``: without it the pruning
scanned the whole table every second); the file stays at a few megabytes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from telemetry.evidence import SLOT_S, CountsLayout

log = logging.getLogger(__name__)

RETENTION_S = 900.0
"""How long slots are kept: the longest window anyone reads (drift views) plus margin."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS evidence (
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    slot INTEGER NOT NULL,
    process TEXT NOT NULL,
    layout TEXT NOT NULL,
    counts BLOB NOT NULL,
    PRIMARY KEY (model, version, slot, process)
);
CREATE INDEX IF NOT EXISTS evidence_by_slot ON evidence (slot);
"""


def evidence_path(state_path: Path) -> Path:
    """``.mlgate/state.db`` -> ``.mlgate/state.evidence.db``: beside the state file, never inside it."""
    return state_path.with_name(state_path.stem + ".evidence.db")


class EvidenceStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                self._conn.execute(statement)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def publish(self, process: str, slots: Sequence[tuple[str, str, CountsLayout, int, np.ndarray]],
                now_s: float) -> None:
        """Write completed slots (model, version, layout, slot id, counts) and prune expired ones."""
        if not slots:
            return  # no traffic, no write: expired slots go with the next one
        oldest = int((now_s - RETENTION_S) // SLOT_S)
        with self._transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO evidence (model, version, slot, process, layout, counts) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(model, version, slot, process, layout.signature, counts.astype("<i8").tobytes())
                 for model, version, layout, slot, counts in slots],
            )
            conn.execute("DELETE FROM evidence WHERE slot < ?", (oldest,))

    def window(self, model: str, version: str, layout: CountsLayout, now_s: float, window_s: float) -> np.ndarray:
        """The summed counts of ``version`` over the completed slots of the last ``window_s`` seconds.

        Slots published under another layout (a process serving a different manifest for the same
        version, which the repository's SHA-256 pinning should make impossible) are skipped, and logged.
        """
        last = int(now_s // SLOT_S) - 1  # the current slot is still being counted
        first = last - max(1, round(window_s / SLOT_S)) + 1
        with self._lock:
            rows = self._conn.execute(
                "SELECT layout, counts FROM evidence WHERE model = ? AND version = ? AND slot BETWEEN ? AND ?",
                (model, version, first, last)).fetchall()
        size, expected = layout.size, layout.signature
        total = np.zeros(size, dtype=np.int64)
        for signature, blob in rows:
            counts = np.frombuffer(blob, dtype="<i8")
            if signature != expected or counts.shape[0] != size:
                log.warning("skipping evidence of model '%s' version '%s' with layout %s (expected %s)",
                            model, version, signature, layout.signature)
                continue
            total += counts
        return total
