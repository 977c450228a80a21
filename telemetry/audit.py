"""A tamper-evident audit log: who changed what, when and why, hash-chained in SQLite.

Operators change routing splits, create tokens, promote challengers. When
something goes wrong, the question is "who did this, and is this record the
whole truth?" A plain table answers the first half only: anyone with write
access to the database can edit or delete a row and nobody can tell.

So every entry carries the SHA-256 of its own contents *and* of the previous
entry's hash (``prev_hash``); entry 1 links to :data:`GENESIS_HASH`. The
sequence number is inside the hash too. Changing anything in the past then
breaks the chain where the change was made, and :func:`verify` names the first
entry that does not fit:

* an edited field (actor, reason, before/after, timestamp, ...): that entry's
  stored hash no longer matches its contents;
* an edited entry whose hash was recomputed by the editor: the *next* entry's
  ``prev_hash`` no longer matches;
* a removed entry in the middle: a gap in the sequence numbers (or, if the
  editor renumbered the rest, hash and link mismatches);
* reordered or swapped entries: the sequence number is hashed, so moving an
  entry to another position changes what its hash should be;
* removed oldest entries: the log no longer starts at entry 1 with the genesis
  link.

What a hash chain cannot detect on its own:

* removal of the newest entries (truncation of the tail): what remains is a
  perfectly valid, shorter chain. Only an *anchor* kept outside the database —
  the head hash an operator wrote down, or shipped to another system — reveals
  it; pass it to :func:`verify` as ``expected_head``.
* a complete rewrite: there is no secret in the hash (it is not a MAC), so
  someone with write access who recomputes every hash from the edit onwards
  produces a valid chain. Again, only a head hash recorded elsewhere catches
  this, because the rewritten head differs from the anchored one.
* lies at write time: the log proves a record was not changed after it was
  written, not that what the writer claimed (actor, time) was true.

Standard library only, and no imports from other mlgate packages, so the
admin API, the rollout controller and an offline ``verify`` tool can all use it.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "GENESIS_HASH",
    "SCHEMA",
    "AuditEntry",
    "Verification",
    "append",
    "ensure_schema",
    "entry_hash",
    "head_hash",
    "read_entries",
    "render",
    "verify",
    "verify_database",
    "write_transaction",
]

GENESIS_HASH = "0" * 64
"""The ``prev_hash`` of entry 1: a fixed value, so the first entry is anchored as well."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    before TEXT NOT NULL,
    after TEXT NOT NULL,
    reason TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_by_target ON audit_log (target, seq)
"""
"""The table (``before``/``after`` hold canonical JSON) and an index for reading one target's history."""

_COLUMNS = "seq, at, actor, action, target, before, after, reason, prev_hash, hash"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_AT_FORMAT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
_FIELDS = ("seq", "at", "actor", "action", "target", "before", "after", "reason", "prev_hash", "hash")


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the audit table and its index if they are missing (idempotent).

    Statements run one by one with ``execute`` rather than ``executescript``,
    because ``executescript`` would silently commit a transaction the caller
    has open.
    """
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


def _canonical(value: Any) -> str:
    """One byte-exact JSON text per value, so the same contents always hash the same.

    ``allow_nan=False`` because NaN and Infinity are not JSON: another tool
    re-reading the log could not reproduce the hash.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def entry_hash(
    seq: int,
    at: str,
    actor: str,
    action: str,
    target: str,
    before: Any,
    after: Any,
    reason: str | None,
    prev_hash: str,
) -> str:
    """SHA-256 (hex) of the canonical JSON of every field of an entry except the hash itself.

    ``seq`` is inside the hash: an entry moved to another position (swapped,
    reordered, or renumbered after a deletion) no longer matches its hash.
    ``prev_hash`` is inside it too, which is what chains each entry to all
    entries before it.
    """
    doc = {
        "seq": seq,
        "at": at,
        "actor": actor,
        "action": action,
        "target": target,
        "before": before,
        "after": after,
        "reason": reason,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(_canonical(doc).encode("utf-8")).hexdigest()


class _UndecodableJSON(str):
    """Raw text of a stored ``before``/``after`` that is not valid JSON.

    Reading keeps it as a string instead of failing, so a damaged log can still
    be listed; the subclass lets :func:`verify` say precisely what is wrong.
    """

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change: ``actor`` did ``action`` to ``target``, turning ``before`` into ``after``.

    ``before`` and ``after`` are any JSON values (``None`` for "did not exist").
    ``at`` is UTC ISO-8601 with millisecond precision and a ``Z`` suffix.
    """

    seq: int
    at: str
    actor: str
    action: str
    target: str
    before: Any
    after: Any
    reason: str | None
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field, for export and for the admin API."""
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_json(cls, doc: Any) -> AuditEntry:
        """Rebuild an entry from :meth:`to_json` output, refusing anything malformed.

        Structure is checked here; whether the contents are *genuine* is
        :func:`verify`'s job, so an entry with a wrong hash still loads.
        """
        if not isinstance(doc, Mapping):
            raise ValueError(f"audit entry must be a JSON object, got {type(doc).__name__}")
        missing = [name for name in _FIELDS if name not in doc]
        if missing:
            raise ValueError(f"audit entry is missing field(s): {', '.join(missing)}")
        unexpected = sorted(str(key) for key in doc if key not in _FIELDS)
        if unexpected:
            raise ValueError(f"audit entry has unexpected field(s): {', '.join(unexpected)}")
        seq = doc["seq"]
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise ValueError(f"audit entry field 'seq' must be an integer >= 1, got {seq!r}")
        for name in ("at", "actor", "action", "target", "prev_hash", "hash"):
            if not isinstance(doc[name], str):
                raise ValueError(f"audit entry {seq}: field {name!r} must be a string, got {type(doc[name]).__name__}")
        for name in ("actor", "action", "target"):
            if not doc[name].strip():
                raise ValueError(f"audit entry {seq}: field {name!r} must not be empty")
        if not _AT_FORMAT.fullmatch(doc["at"]):
            raise ValueError(
                f"audit entry {seq}: field 'at' must look like 2026-11-22T10:31:02.123Z, got {doc['at']!r}"
            )
        for name in ("prev_hash", "hash"):
            if not _HEX64.fullmatch(doc[name]):
                raise ValueError(f"audit entry {seq}: field {name!r} must be 64 lowercase hex digits")
        reason = doc["reason"]
        if reason is not None and not isinstance(reason, str):
            raise ValueError(f"audit entry {seq}: field 'reason' must be a string or null, got {type(reason).__name__}")
        return cls(
            seq=seq,
            at=doc["at"],
            actor=doc["actor"],
            action=doc["action"],
            target=doc["target"],
            before=doc["before"],
            after=doc["after"],
            reason=reason,
            prev_hash=doc["prev_hash"],
            hash=doc["hash"],
        )


def iso_utc(epoch_s: float) -> str:
    """Epoch seconds in the one timestamp format of the state file: audit entries, routing, rollouts."""
    return _format_at(datetime.fromtimestamp(epoch_s, timezone.utc))


def _format_at(at: datetime) -> str:
    """UTC, millisecond precision (truncated), ``Z`` suffix: sortable and unambiguous."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("audit timestamp must be timezone-aware (a naive datetime's zone is a guess)")
    utc = at.astimezone(timezone.utc)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def _normalised(name: str, value: Any) -> Any:
    """The value as it will read back from the database (tuples become lists, int keys strings).

    So the entry :func:`append` returns equals the one :func:`read_entries` gives later.
    """
    try:
        return json.loads(_canonical(value))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"audit {name!r} is not a JSON value: {exc}") from exc


def _last(conn: sqlite3.Connection) -> tuple[int, str] | None:
    row = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def head_hash(conn: sqlite3.Connection) -> str:
    """The newest entry's hash (:data:`GENESIS_HASH` for an empty log): the value an operator records as an anchor."""
    last = _last(conn)
    return GENESIS_HASH if last is None else last[1]


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error), for callers of :func:`append`.

    ``IMMEDIATE`` takes SQLite's write lock at the start, before the last entry
    is read, so no other process can append between that read and our insert.
    Other changes (the routing state being audited) belong in the same block,
    so the change and its audit entry commit or roll back together.
    """
    if conn.in_transaction:
        raise RuntimeError("write_transaction() needs a connection with no transaction open")
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.commit()  # inside the try: a failed COMMIT (e.g. disk full) must not leave the lock held
    except BaseException:
        conn.rollback()
        raise


def append(
    conn: sqlite3.Connection,
    *,
    actor: str,
    action: str,
    target: str,
    before: Any,
    after: Any,
    reason: str | None = None,
    at: datetime | None = None,
) -> AuditEntry:
    """Add the next entry to the chain and return it.

    Must be called inside the caller's write transaction, opened with
    ``BEGIN IMMEDIATE`` (see :func:`write_transaction`): reading the last entry
    and inserting the next must be atomic across processes, or two writers
    would both link to the same predecessor. (If one ever did, ``seq`` being
    the primary key makes the second insert fail rather than fork the chain.)
    The caller commits; that lets the audited change and its entry commit
    together.
    """
    if not conn.in_transaction:
        raise RuntimeError("append() must run inside the caller's write transaction (BEGIN IMMEDIATE)")
    for name, value in (("actor", actor), ("action", action), ("target", target)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"audit {name!r} must be a non-empty string, got {value!r}")
    if reason is not None and not isinstance(reason, str):
        raise ValueError(f"audit 'reason' must be a string or None, got {type(reason).__name__}")
    before = _normalised("before", before)
    after = _normalised("after", after)
    stamp = _format_at(at if at is not None else datetime.now(timezone.utc))
    last = _last(conn)
    seq, prev_hash = (1, GENESIS_HASH) if last is None else (last[0] + 1, last[1])
    digest = entry_hash(seq, stamp, actor, action, target, before, after, reason, prev_hash)
    conn.execute(
        f"INSERT INTO audit_log ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (seq, stamp, actor, action, target, _canonical(before), _canonical(after), reason, prev_hash, digest),
    )
    return AuditEntry(seq, stamp, actor, action, target, before, after, reason, prev_hash, digest)


def _text(value: Any) -> str:
    """A stored column as text, whatever an editor put there (SQLite allows blobs in TEXT columns)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _decode(value: Any) -> Any:
    """Stored JSON back to a value; text that is not JSON stays as (marked) raw text instead of failing."""
    text = _text(value)
    try:
        return json.loads(text)
    except ValueError:
        return _UndecodableJSON(text)


def _row_to_entry(row: tuple[Any, ...]) -> AuditEntry:
    seq, at, actor, action, target, before, after, reason, prev_hash, digest = row
    return AuditEntry(
        seq=int(seq),
        at=_text(at),
        actor=_text(actor),
        action=_text(action),
        target=_text(target),
        before=_decode(before),
        after=_decode(after),
        reason=None if reason is None else _text(reason),
        prev_hash=_text(prev_hash),
        hash=_text(digest),
    )


def read_entries(
    conn: sqlite3.Connection,
    *,
    target: str | None = None,
    since_seq: int = 0,
    limit: int | None = None,
) -> list[AuditEntry]:
    """Entries with ``seq > since_seq``, oldest first, at most ``limit`` of them.

    With ``target``, only that target's history — fine for display, but
    verification needs the full, unfiltered log (a filtered one has gaps by
    construction); use :func:`verify_database` for that. A stored
    ``before``/``after`` that is not valid JSON does not stop the listing: it
    comes back as its raw text, and :func:`verify` flags that entry.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    sql = f"SELECT {_COLUMNS} FROM audit_log WHERE seq > ?"
    params: list[Any] = [since_seq]
    if target is not None:
        sql += " AND target = ?"
        params.append(target)
    sql += " ORDER BY seq"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [_row_to_entry(row) for row in conn.execute(sql, params)]


@dataclass(frozen=True)
class Verification:
    """The result of checking a chain.

    ``checked`` counts the entries found intact before the first bad one (all
    of them when ``ok``); ``first_bad_seq`` names the first bad entry where one
    can be named; ``problem`` says what is wrong in words ("" when ``ok``).
    ``head`` is the newest hash of the entries checked: read in the same pass,
    so an entry appended meanwhile cannot make it an anchor nothing vouched for.
    """

    ok: bool
    checked: int
    first_bad_seq: int | None
    problem: str
    head: str

    def to_json(self) -> dict[str, Any]:
        """The document the admin API answers and ``mlgate audit verify --json`` prints."""
        return asdict(self)


def _span(first: int, last: int) -> str:
    return f"entry {first} is" if first == last else f"entries {first}-{last} are"


def _check_entry(entry: AuditEntry, previous: AuditEntry | None, present: set[int]) -> str | None:
    """What is wrong with ``entry`` given the entry before it, or None; checks go from most to least specific."""
    seq = entry.seq
    if previous is None:
        if seq != 1:
            gap = f" ({_span(1, seq - 1)} missing)" if seq > 1 else ""
            return f"log does not start at entry 1: the first entry is {seq}{gap}"
    elif seq <= previous.seq:
        return f"entry {seq}: appears after entry {previous.seq} (entries out of order or duplicated)"
    elif seq != previous.seq + 1:
        missing = range(previous.seq + 1, seq)
        if any(s in present for s in missing):
            return f"entry {seq}: appears before entry {previous.seq + 1} (entries out of order)"
        return f"entry {seq}: follows entry {previous.seq}; {_span(missing[0], missing[-1])} missing (removed?)"
    for name in ("before", "after"):
        if isinstance(getattr(entry, name), _UndecodableJSON):
            return f"entry {seq}: stored {name!r} is not valid JSON (edited?)"
    try:
        expected = entry_hash(
            seq, entry.at, entry.actor, entry.action, entry.target, entry.before, entry.after, entry.reason,
            entry.prev_hash,
        )
    except (TypeError, ValueError):
        expected = None
    if expected != entry.hash:
        return f"entry {seq}: contents do not match its hash (edited?)"
    if previous is None:
        if entry.prev_hash != GENESIS_HASH:
            return f"entry {seq}: previous-hash is not the genesis hash (earlier entries removed, or log rewritten?)"
    elif entry.prev_hash != previous.hash:
        return (
            f"entry {seq}: previous-hash does not match entry {previous.seq} "
            f"(entry {previous.seq} rewritten with a recomputed hash, or entries removed and renumbered?)"
        )
    return None


_HEX_DIGITS = frozenset("0123456789abcdef")


def check_anchor(expected_head: str) -> str:
    """``expected_head`` as a head hash (64 lower-case hex digits, blanks around dropped); ValueError if it is none.

    A mistyped or shortened anchor (the 12 digits :func:`render` shows) is the operator's slip, not evidence:
    reported as "not in the log (newest entries removed?)" it read as tampering."""
    anchor = expected_head.strip().lower()
    if len(anchor) != 64 or not set(anchor) <= _HEX_DIGITS:
        shown = expected_head.strip()
        shown = shown if len(shown) <= 20 else shown[:20] + "…"
        raise ValueError(f"the expected head must be a whole head hash, 64 hex digits; got {len(anchor)} "
                         f"character(s) {shown!r}")
    return anchor


def _check_head(entries: Sequence[AuditEntry], anchor: str) -> str | None:
    if not entries:
        if anchor == GENESIS_HASH:
            return None
        return f"log is empty but the expected head is {anchor[:12]}… (all entries removed?)"
    last = entries[-1]
    if last.hash == anchor:
        return None
    for entry in entries:
        if entry.hash == anchor:
            newer = last.seq - entry.seq
            return (
                f"head is entry {last.seq}, but the expected head is entry {entry.seq}'s hash "
                f"({newer} entr{'y' if newer == 1 else 'ies'} appended since it was recorded?)"
            )
    return (
        f"head is entry {last.seq} ({last.hash[:12]}…), but the expected head {anchor[:12]}… is not in the log "
        f"(newest entries removed, or log rewritten?)"
    )


def verify(entries: Sequence[AuditEntry], expected_head: str | None = None) -> Verification:
    """Walk ``entries`` in the given order (as stored: by seq) and report the first one that breaks the chain.

    Give the *whole* log: a filtered or partial one has gaps by construction.
    ``expected_head`` is an anchor kept outside the database (the head hash an
    operator wrote down); the newest entry's hash must equal it. Without an
    anchor a hash chain cannot detect removal of its newest entries, because
    what remains is itself a valid chain. An anchor that is no hash at all is a ValueError (:func:`check_anchor`).
    """
    anchor = check_anchor(expected_head) if expected_head is not None else None
    head = entries[-1].hash if entries else GENESIS_HASH
    present = {entry.seq for entry in entries}
    previous: AuditEntry | None = None
    for checked, entry in enumerate(entries):
        problem = _check_entry(entry, previous, present)
        if problem is not None:
            return Verification(ok=False, checked=checked, first_bad_seq=entry.seq, problem=problem, head=head)
        previous = entry
    if anchor is not None:
        problem = _check_head(entries, anchor)
        if problem is not None:
            return Verification(ok=False, checked=len(entries), first_bad_seq=None, problem=problem, head=head)
    return Verification(ok=True, checked=len(entries), first_bad_seq=None, problem="", head=head)


def verify_database(conn: sqlite3.Connection, expected_head: str | None = None) -> Verification:
    """Read the whole log in seq order and :func:`verify` it."""
    return verify(read_entries(conn), expected_head=expected_head)


def _plain(text: str) -> str:
    """Escape control and format characters, so stored text cannot fake lines or recolour the terminal.

    A reason containing a newline and ``#13 ...`` would otherwise render as a
    forged entry; bidi overrides could disguise a name.
    """
    return "".join(f"\\u{ord(ch):04x}" if unicodedata.category(ch) in ("Cc", "Cf") else ch for ch in text)


def _show(value: Any) -> str:
    if isinstance(value, _UndecodableJSON):
        return f"(not JSON) {_plain(value)}"
    return _plain(json.dumps(value, sort_keys=True, ensure_ascii=False))


def _diff(before: Any, after: Any) -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        lines = []
        for key in sorted(set(before) | set(after)):
            # Compare as JSON text, not with ==: in Python True == 1 == 1.0, in JSON they differ.
            old = _show(before[key]) if key in before else "(absent)"
            new = _show(after[key]) if key in after else "(absent)"
            if old != new:
                lines.append(f"  {_plain(str(key))}: {old} -> {new}")
        return lines or ["  (no change)"]
    return [f"  before: {_show(before)}", f"  after: {_show(after)}"]


def render(entries: Sequence[AuditEntry]) -> str:
    """Plain text for a terminal: a header line per entry, the reason, what changed, a short hash.

    For dict values only the keys that changed (added, removed or different)
    are shown. "" for no entries.
    """
    blocks = []
    for entry in entries:
        head = "  ".join(_plain(part) for part in (entry.at, entry.actor, entry.action, entry.target))
        lines = [f"#{entry.seq}  {head}"]
        if entry.reason:
            lines.append(f"  reason: {_plain(entry.reason)}")
        lines.extend(_diff(entry.before, entry.after))
        lines.append(f"  hash: {_plain(entry.hash[:12])}…")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + ("\n" if blocks else "")
