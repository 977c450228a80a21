"""The operator CLI on common mistakes: a clear message and exit 1, never a traceback (no gateway needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _mlgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlgate.cli", *args], capture_output=True, text=True, timeout=60)


def _fails_cleanly(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in output, output
    return output


@pytest.mark.parametrize("content", ["models: {}\n", ""])
def test_a_state_option_naming_no_state_file(tmp_path: Path, content: str) -> None:
    """A YAML file was a DatabaseError traceback, an empty one 'no such table'."""
    wrong = tmp_path / "mlgate.yaml"
    wrong.write_text(content)
    for command in (("audit", "show"), ("audit", "verify")):
        _fails_cleanly(_mlgate(*command, "--state", str(wrong)), "is not an mlgate state file")


@pytest.mark.parametrize("args", [
    ("split", "show", "my model", "--url", "http://127.0.0.1:9", "--token", "t"),  # a space: was InvalidURL
    ("audit", "show", "--target", "model/a b", "--url", "http://127.0.0.1:9", "--token", "t"),
    ("split", "show", "m", "--url", "http://127.0.0.1:abc", "--token", "t"),  # a bad port: was InvalidURL
])
def test_names_and_urls_that_were_tracebacks(args: tuple[str, ...]) -> None:
    _fails_cleanly(_mlgate(*args), "cannot reach the gateway at")


def test_a_token_with_a_line_break_is_named_as_such_and_not_echoed() -> None:
    """It was reported as 'the gateway's answer is not JSON'."""
    output = _fails_cleanly(_mlgate("split", "show", "m", "--url", "http://127.0.0.1:9", "--token", "mlg_secret\n"),
                            "the token holds a space, a line break")
    assert "mlg_secret" not in output
