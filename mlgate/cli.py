"""The ``mlgate`` command line: serve, show status, build the demo models, check a config file."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from mlgate.config import ConfigError, MlgateConfig, load_config

app = typer.Typer(help="mlgate: Open Inference Protocol gateway on Ray Serve and ONNX Runtime.", no_args_is_help=True)
models_app = typer.Typer(help="Model repository commands.", no_args_is_help=True)
config_app = typer.Typer(help="Configuration commands.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="YAML configuration file.")]


def _setup_logging(level: str) -> None:
    logging.Formatter.converter = time.gmtime
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
    )


def _load_or_exit(path: Path) -> MlgateConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: ConfigOption,
    host: Annotated[Optional[str], typer.Option(help="Override server.host (e.g. 0.0.0.0 in a container).")] = None,
    http_port: Annotated[Optional[int], typer.Option(help="Override server.http_port.")] = None,
    grpc_port: Annotated[Optional[int], typer.Option(help="Override server.grpc_port.")] = None,
    ray_address: Annotated[Optional[str], typer.Option(help="Join this Ray cluster instead of starting one.")] = None,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "info",
) -> None:
    """Serve the models of the configured repository over OIP HTTP and gRPC until SIGTERM/SIGINT."""
    _setup_logging(log_level)
    cfg = _load_or_exit(config)
    server_overrides = {k: v for k, v in
                        {"host": host, "http_port": http_port, "grpc_port": grpc_port}.items() if v is not None}
    if server_overrides:
        cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update=server_overrides)})
    if ray_address:
        cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"address": ray_address})})
    if not cfg.repository.is_dir():
        typer.echo(f"error: model repository {cfg.repository} does not exist "
                   f"(build the demo one with: mlgate models build-demo {cfg.repository})", err=True)
        raise typer.Exit(2)
    from mlgate.server import StartupError, run  # imports Ray: keep the other commands fast

    try:
        run(cfg)
    except StartupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@models_app.command("build-demo")
def build_demo(
    directory: Annotated[Path, typer.Argument(help="Repository folder to create or complete.")],
    force: Annotated[bool, typer.Option(help="Rebuild versions that already exist.")] = False,
) -> None:
    """Train the demo models on scikit-learn's bundled breast-cancer data and write them with manifests."""
    from serving.demo_models import build_demo_repository

    started = time.monotonic()
    entries = build_demo_repository(directory, force=force)
    for entry in entries:
        state = "ok" if entry.error is None else f"ERROR: {entry.error}"
        typer.echo(f"{entry.model}/{entry.version}: {state}")
    typer.echo(f"repository {directory} ready in {time.monotonic() - started:.1f} s")
    if any(e.error for e in entries):
        raise typer.Exit(1)


@config_app.command("check")
def config_check(path: Annotated[Path, typer.Argument(help="Configuration file to validate.")]) -> None:
    """Validate a configuration file; print every problem with its location, exit non-zero if any."""
    cfg = _load_or_exit(path)
    typer.echo(f"{path}: ok (repository {cfg.repository}, HTTP {cfg.server.host}:{cfg.server.http_port}, "
               f"gRPC {cfg.server.host}:{cfg.server.grpc_port})")


@app.command()
def status(
    url: Annotated[str, typer.Option(help="Base URL of the gateway's HTTP port.")] = "http://127.0.0.1:8000",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Per deployment: state, batches, rows per batch, execution and queue time, refusals, latency model."""
    import urllib.error

    from mlgate.status import fetch_status, render_json, render_table

    try:
        statuses = fetch_status(url)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        typer.echo(f"error: cannot read status from {url}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(render_json(statuses) if as_json else render_table(statuses))


if __name__ == "__main__":
    app()
