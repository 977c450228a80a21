"""Bearer tokens with roles, for the admin API and (optionally) the data plane.

Tokens are random (256 bits), so a plain SHA-256 is a sound way to store them:
there is no dictionary to attack, and whoever reads the state file or the
config learns nothing that opens the API. Checking compares the presented
token's digest with every stored digest using ``hmac.compare_digest`` and no
early exit, so timing says nothing about how close a guess was.

Roles are ordered: ``viewer`` reads, ``operator`` also changes routing and
rollouts, ``admin`` also manages tokens and models.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized, quoted
from routing.store import StateStore, utc_now
from telemetry import audit

TOKEN_PREFIX = "mlg_"
TOKENS_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL
);
"""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class Role(enum.IntEnum):
    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.upper()]
        except KeyError:
            raise BadRequest(f"unknown role {quoted(text)}; roles: viewer, operator, admin") from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A stored token: never the token itself, only its digest."""

    name: str
    role: Role
    sha256: str
    created_at: str = ""
    created_by: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "role": self.role.label, "created_at": self.created_at,
                "created_by": self.created_by}


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: Role


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):  # (match with ^...$ lets a trailing newline through)
        raise BadRequest(f"token name {quoted(name)} must be 1-64 characters of letters, digits, '_', '.', '@', '-' "
                         "and start with a letter or digit")
    return name


class Authenticator:
    """Maps an ``Authorization`` header to a principal; swapped whole when the token set changes."""

    def __init__(self, records: Iterable[TokenRecord]) -> None:
        self._records = tuple(records)
        self._digests = tuple(record.sha256.encode() for record in self._records)

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        presented = digest(token).encode()
        found: TokenRecord | None = None
        for record, stored in zip(self._records, self._digests, strict=True):  # all compared: no early exit
            if hmac.compare_digest(presented, stored):
                found = record
        if found is None:
            raise Unauthorized("invalid or revoked token")
        return Principal(found.name, found.role)

    def require(self, authorization: str | None, role: Role) -> Principal:
        principal = self.authenticate(authorization)
        if principal.role < role:
            raise Forbidden(f"token '{principal.name}' has role {principal.role.label}; "
                            f"this needs {role.label} or above")
        return principal


def ensure_schema(conn: sqlite3.Connection) -> None:
    conn.execute(TOKENS_SCHEMA)


def stored_tokens(conn: sqlite3.Connection) -> list[TokenRecord]:
    rows = conn.execute("SELECT name, role, sha256, created_at, created_by FROM tokens ORDER BY name").fetchall()
    return [TokenRecord(row[0], Role.parse(row[1]), row[2], row[3], row[4]) for row in rows]


def insert_token(conn: sqlite3.Connection, name: str, role: Role, created_at: str, created_by: str) -> tuple[
        str, TokenRecord]:
    """Create a token (inside the caller's transaction); returns the token, which is shown once and never stored."""
    check_name(name)
    if conn.execute("SELECT 1 FROM tokens WHERE name = ?", (name,)).fetchone() is not None:
        raise Conflict(f"a token named '{name}' exists already; revoke it first or pick another name")
    token = new_token()
    record = TokenRecord(name, role, digest(token), created_at, created_by)
    conn.execute("INSERT INTO tokens (name, role, sha256, created_at, created_by) VALUES (?, ?, ?, ?, ?)",
                 (name, role.label, record.sha256, created_at, created_by))
    return token, record


def delete_token(conn: sqlite3.Connection, name: str) -> TokenRecord:
    """Revoke a token (inside the caller's transaction); NotFound if there is none of that name."""
    record = next((r for r in stored_tokens(conn) if r.name == name), None)
    if record is None:
        raise NotFound(f"no token named '{name}'")
    conn.execute("DELETE FROM tokens WHERE name = ?", (name,))
    return record


class AuthState:
    """The tokens that open the API: the config's plus the state store's, rebuilt when either changes."""

    def __init__(self, store: StateStore, configured: list[TokenRecord]) -> None:
        self.store = store
        self.configured = configured
        with store.transaction() as conn:
            ensure_schema(conn)
        self.records: list[TokenRecord] = list(configured)
        self.current = Authenticator(configured)
        self.reload()

    def reload(self) -> None:
        with self.store.reading() as conn:
            stored = stored_tokens(conn)
        self.records = [*self.configured, *stored]
        self.current = Authenticator(self.records)


def create_stored_token(store: StateStore, name: str, role: Role, actor: str,
                        reason: str | None) -> tuple[str, TokenRecord]:
    """Create a token and audit it in one transaction (used by the API and by ``mlgate token create``)."""
    with store.transaction() as conn:
        ensure_schema(conn)  # the CLI may create the first token before any gateway has started
        token, record = insert_token(conn, name, role, utc_now(), actor)
        audit.append(conn, actor=actor, action="token.create", target=f"token/{name}", before=None,
                     after=record.to_json(), reason=reason)
    return token, record


def revoke_stored_token(store: StateStore, name: str, actor: str, reason: str | None) -> TokenRecord:
    with store.transaction() as conn:
        record = delete_token(conn, name)
        audit.append(conn, actor=actor, action="token.revoke", target=f"token/{name}", before=record.to_json(),
                     after=None, reason=reason)
    return record
