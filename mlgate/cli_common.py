"""Options and helpers every operator command shares (connection to the admin API, one-line errors)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer

from mlgate.admin_client import NOT_MLGATE

if TYPE_CHECKING:
    from mlgate.admin_client import AdminClient

UrlOption = Annotated[str, typer.Option(envvar="MLGATE_URL", help="Base URL of the gateway's HTTP port.")]
TokenOption = Annotated[Optional[str], typer.Option(envvar="MLGATE_TOKEN", help="Bearer token (env MLGATE_TOKEN).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ReasonOption = Annotated[Optional[str], typer.Option(help="Why: kept in the audit log.")]
DEFAULT_URL = "http://127.0.0.1:8000"


def admin(url: str, token: str | None) -> AdminClient:
    from mlgate.admin_client import AdminClient

    return AdminClient(url, token)


def fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@contextlib.contextmanager
def reading_answer(url: str) -> Iterator[None]:
    """Around code that reads the fields of a gateway's answer: an answer without them is one line, not a traceback.

    A server that is not mlgate may well answer 200 with JSON (``{}``, a list): reading it was a KeyError or
    TypeError traceback, or worse, an empty audit log printed with exit 0."""
    try:
        yield
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:  # (pydantic's errors are ValueErrors)
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        fail(f"the answer from {url} is not what an mlgate gateway sends ({detail}); {NOT_MLGATE}")
