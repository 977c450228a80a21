"""``mlgate token create`` as ``make demo`` uses it: the token goes to a 0600 file, never to the output,
and a rerun keeps a valid token but replaces one the state file no longer knows."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.auth import AuthState, Role, check_name
from gateway.errors import BadRequest, Unauthorized
from routing.store import StateStore


def _create(state: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlgate.cli", "token", "create", "--state", str(state),
                           "--name", "demo-admin", "--role", "admin", "--out", str(out), "--if-missing"],
                          capture_output=True, text=True, timeout=60, check=True)


def _authenticates(state: Path, token: str) -> bool:
    store = StateStore(state)
    try:
        return AuthState(store, []).current.require(f"Bearer {token}", Role.ADMIN).name == "demo-admin"
    except Unauthorized:
        return False
    finally:
        store.close()


def test_demo_token_file_is_private_stable_and_repaired(tmp_path: Path) -> None:
    state, out = tmp_path / "state" / "state.db", tmp_path / ".mlgate" / "demo-admin-token"
    first = _create(state, out)
    token = out.read_text().strip()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o600  # SQLite gives its -wal and -shm files the same mode
    assert token not in first.stdout + first.stderr and str(out) in first.stdout
    assert _authenticates(state, token)

    _create(state, out)
    assert out.read_text().strip() == token, "a rerun must keep a token that still works"

    for leftover in state.parent.iterdir():  # the state is lost (a fresh checkout keeps no .mlgate/state.db)
        leftover.unlink()
    _create(state, out)
    replaced = out.read_text().strip()
    assert replaced != token and _authenticates(state, replaced)
    assert not _authenticates(state, token)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlgate.cli", "token", "create", *args],
                          capture_output=True, text=True, timeout=60)


def test_a_mistyped_role_or_an_unwritable_file_changes_nothing(tmp_path: Path) -> None:
    """A mistyped role with --if-missing revoked the existing token before the role was read; an --out that could
    not be written failed with a traceback after the token had been created, so it existed and was never shown."""
    state, out = tmp_path / "state.db", tmp_path / "token"
    _create(state, out)
    token = out.read_text().strip()

    mistyped = _run("--state", str(state), "--name", "demo-admin", "--role", "admn", "--out", str(tmp_path / "other"),
                    "--if-missing")
    assert mistyped.returncode != 0 and "unknown role 'admn'" in mistyped.stdout + mistyped.stderr
    assert _authenticates(state, token), "the existing token must survive a refused command"

    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    unwritable = _run("--state", str(state), "--name", "ci", "--role", "viewer", "--out", str(blocked / "token"))
    output = unwritable.stdout + unwritable.stderr
    assert unwritable.returncode != 0 and "cannot write the token to" in output and "Traceback" not in output
    store = StateStore(state)
    try:
        assert "ci" not in {record.name for record in AuthState(store, []).records}
    finally:
        store.close()


def test_a_token_name_may_not_end_in_a_newline() -> None:
    """re.match with ^...$ let 'alice\\n' through (through the API: 201)."""
    assert check_name("alice") == "alice"
    for name in ("alice\n", "", "-x", "a" * 65):
        with pytest.raises(BadRequest, match="must be 1-64 characters"):
            check_name(name)
