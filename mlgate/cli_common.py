"""Options and helpers every operator command shares (connection to the admin API, one-line errors)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer

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
