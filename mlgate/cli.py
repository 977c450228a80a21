"""The ``mlgate`` command line: serve, status, operator commands (split, shadow, audit, token), models, config."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from mlgate.admin_client import AdminError
from mlgate.cli_common import DEFAULT_URL, JsonOption, ReasonOption, TokenOption, UrlOption, reading_answer
from mlgate.cli_common import admin as _admin
from mlgate.cli_common import fail as _fail
from mlgate.config import ConfigError, MlgateConfig, load_config, with_overrides
from mlgate.rollout_cli import rollout_app

if TYPE_CHECKING:
    from routing.store import StateStore

app = typer.Typer(help="mlgate: Open Inference Protocol gateway on Ray Serve and ONNX Runtime.", no_args_is_help=True)
models_app = typer.Typer(help="Model repository commands.", no_args_is_help=True)
config_app = typer.Typer(help="Configuration commands.", no_args_is_help=True)
split_app = typer.Typer(help="Traffic split of a model (admin API, role operator to change).", no_args_is_help=True)
shadow_app = typer.Typer(help="Shadow versions of a model (admin API, role operator).", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log of every change.", no_args_is_help=True)
token_app = typer.Typer(help="Bearer tokens for the admin API.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")
app.add_typer(split_app, name="split")
app.add_typer(shadow_app, name="shadow")
app.add_typer(audit_app, name="audit")
app.add_typer(token_app, name="token")
app.add_typer(rollout_app, name="rollout")

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="YAML configuration file.")]
MAX_STATUS_INTERVAL_S = 300.0


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
    log_level: Annotated[str, typer.Option(help="Logging level: critical, error, warning, info or debug.")] = "info",
) -> None:
    """Serve the models of the configured repository over OIP HTTP and gRPC until SIGTERM/SIGINT."""
    cfg = _load_or_exit(config)
    levels = ("critical", "error", "warning", "info", "debug")
    if log_level.lower() not in levels:  # logging's ValueError was a traceback
        typer.echo(f"error: --log-level: {log_level!r} is not one of {', '.join(levels)}", err=True)
        raise typer.Exit(2)
    server_overrides = {k: v for k, v in
                        {"host": host, "http_port": http_port, "grpc_port": grpc_port}.items() if v is not None}
    try:
        cfg = with_overrides(cfg, **server_overrides)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    from telemetry.logs import setup_logging

    setup_logging(cfg.telemetry.logs.format, log_level, worker=0 if cfg.server.workers > 1 else None)
    if ray_address:
        cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"address": ray_address})})
    if cfg.repository.exists() and not cfg.repository.is_dir():  # was told it "does not exist"
        typer.echo(f"error: {config}: repository: {cfg.repository} is a file, not a folder of models", err=True)
        raise typer.Exit(2)
    if not cfg.repository.is_dir():
        typer.echo(f"error: model repository {cfg.repository} does not exist "
                   f"(build the demo one with: mlgate models build-demo {cfg.repository})", err=True)
        raise typer.Exit(2)
    from mlgate.workers import LOG_LEVEL_ENV, MULTIPROCESS_ENV, shared_metrics_folder

    os.environ[LOG_LEVEL_ENV] = log_level
    if cfg.server.workers == 1:  # one process needs no folder; one left in the environment would add old counts
        os.environ.pop(MULTIPROCESS_ENV, None)
    with shared_metrics_folder() if cfg.server.workers > 1 else contextlib.nullcontext():
        from mlgate.server import StartupError, run  # imports Ray (keep the other commands fast) and, after
        # the metrics folder is set, prometheus_client

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
    model: Annotated[Optional[str], typer.Argument(help="Only this model.")] = None,
    url: UrlOption = DEFAULT_URL,
    interval: Annotated[float, typer.Option(help="Seconds between the two scrapes rates come from (0: none).")] = 1.0,
    as_json: JsonOption = False,
) -> None:
    """Per version: state, role, split, rows/s, fallbacks, shadow agreement; batching and refusals."""
    import http.client
    import urllib.error

    from mlgate.admin_client import not_http_1_1
    from mlgate.status import fetch_status, render_json, render_table

    if not 0 <= interval <= MAX_STATUS_INTERVAL_S:  # inf was an OverflowError traceback, nan and -1 silently 0
        _fail(f"--interval: seconds between the two scrapes must be from 0 to {MAX_STATUS_INTERVAL_S:g} "
              f"(0: no rates), got {interval:g}")
    try:
        statuses = fetch_status(url, model, interval)
    except http.client.BadStatusLine as exc:
        _fail(not_http_1_1(url, exc))
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        typer.echo(f"error: cannot read status from {url}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(render_json(statuses) if as_json else render_table(statuses))


@app.command()
def drift(
    model: Annotated[str, typer.Argument(help="Model to report on.")],
    version: Annotated[Optional[str], typer.Option(help="Only this version.")] = None,
    window: Annotated[str, typer.Option(help="Window to judge, e.g. 60s, 5m (at most 15m).")] = "60s",
    top: Annotated[int, typer.Option(min=1, max=30, help="Features to list per version.")] = 5,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Draw reference vs live histograms of the top "
                                                  "features into this PNG file.")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Input drift per feature (PSI, JS, KS, W1 vs the training reference), prediction drift and agreement."""
    from routing.rollout import parse_duration
    from telemetry.evidence import SLOT_S
    from telemetry.evidence_store import RETENTION_S

    try:
        window_s = parse_duration(window)
    except ValueError as exc:
        _fail(f"--window: {exc}")
    if not SLOT_S <= window_s <= RETENTION_S:  # the gateway keeps whole slots, for a limited time
        _fail(f"--window: must be from {SLOT_S:g}s to {RETENTION_S / 60:g}m, got {window!r}")
    query = f"?window_s={window_s:g}&histograms={top if plot else 0}"
    if version is not None:
        query += f"&version={urllib.parse.quote(version)}"
    try:
        doc = _admin(url, token).get(f"/models/{urllib.parse.quote(model)}/drift{query}")
    except AdminError as exc:
        _fail(str(exc))
    from mlgate.drift_report import plot as draw
    from mlgate.drift_report import render_table

    with reading_answer(url):
        typer.echo(json.dumps(doc, indent=2) if as_json else render_table(doc, top))
        panels = draw(doc, plot) if plot is not None else 0
    if plot is not None:
        if not panels:
            _fail("nothing to plot: no version had input rows with a reference profile in the window")
        typer.echo(f"plotted {panels} histogram(s) to {plot}", err=as_json)


@app.command()
def observe(
    config: ConfigOption,
    port: Annotated[int, typer.Option(help="Port of Prometheus's web UI and API (loopback; not 9090, which a "
                                      "system Prometheus may hold).")] = 9091,
    scrape_interval: Annotated[float, typer.Option(help="Seconds between scrapes.")] = 5.0,
) -> None:
    """Run Prometheus (Debian package) against a running gateway, with mlgate's recording and alert rules."""
    from telemetry.prometheus_server import RULES_FILE, PrometheusError, PrometheusServer

    cfg = _load_or_exit(config)
    host = "127.0.0.1" if cfg.server.host in ("0.0.0.0", "::") else cfg.server.host
    target = f"{host}:{cfg.server.http_port}"
    try:
        server = PrometheusServer([target], scrape_interval, port=port).start()
    except PrometheusError as exc:
        _fail(str(exc))
    typer.echo(f"Prometheus {server.url} scrapes http://{target}/metrics every {scrape_interval:g} s "
               f"(config {server.config_path}, rules {RULES_FILE})")
    typer.echo(f"  alerts:  {server.url}/alerts     rules: {server.url}/rules     targets: {server.url}/targets")
    typer.echo(f"  try:     {server.url}/graph?g0.expr=sum%20by%20(version)(rate(mlgate_requests_total[1m]))")
    typer.echo("  dashboards to import into Grafana: telemetry/grafana/ (README.md there says what each shows)")
    typer.echo("Ctrl-C stops it (its data is temporary).")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def _print_routing(doc: dict[str, Any], url: str, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    with reading_answer(url):
        _print_routing_table(doc)


def _print_routing_table(doc: dict[str, Any]) -> None:
    from routing.champion import version_sort_key
    from routing.policy import RoutingPolicy, variant_of

    policy = RoutingPolicy.model_validate(doc["routing"])
    weights, shares = policy.effective_weights, policy.shares()
    typer.echo(f"model {doc['model']}  revision {doc['revision']}  (by {doc['updated_by']} at {doc['updated_at']})")
    typer.echo(f"{'VERSION':<10}{'ROLE':<12}{'WEIGHT':>8}  SHARE")
    for version in sorted({*weights, policy.champion, *policy.shadows}, key=version_sort_key):
        role = variant_of(policy, version)
        share = f"mirrors {policy.shadows[version]:g}%" if role == "shadow" else f"{shares.get(version, 0.0):.0%}"
        typer.echo(f"{version:<10}{role:<12}{weights.get(version, 0):>8}  {share}")
    typer.echo(f"sticky key: header {policy.sticky.header} or request parameter routing_key")
    for rule in policy.header_rules:
        typer.echo(f"header rule: {rule.header}: {rule.value} -> version {rule.version}")
    fallback = policy.fallback
    timeout = fallback.challenger_timeout_ms
    typer.echo(f"fallback to champion: {'on' if fallback.enabled else 'off'}"
               + (f", challenger timeout {timeout:g} ms" if timeout else "")
               + (", static default response set" if fallback.default_response else ""))


def _routing_path(model: str) -> str:
    return f"/models/{urllib.parse.quote(model, safe='')}/routing"  # a name with a space was an InvalidURL traceback


def _change_routing(url: str, token: str | None, model: str, change: Callable[[dict[str, Any]], None],
                    reason: str | None, as_json: bool) -> None:
    """Read the routing, apply ``change`` to it, write it back based on the revision read (409 if stale)."""
    client = _admin(url, token)
    try:
        current = client.get(_routing_path(model))
        with reading_answer(url):
            routing = current["routing"]
            change(routing)
            revision = current["revision"]
        updated = client.put(_routing_path(model), {"revision": revision, "routing": routing, "reason": reason})
    except AdminError as exc:
        _fail(str(exc))
    _print_routing(updated, url, as_json)


@split_app.command("show")
def split_show(model: str, url: UrlOption = DEFAULT_URL, token: TokenOption = None,
               as_json: JsonOption = False) -> None:
    """A model's split, sticky key, header rules, shadows and fallback, with its revision."""
    try:
        doc = _admin(url, token).get(_routing_path(model))
    except AdminError as exc:
        _fail(str(exc))
    _print_routing(doc, url, as_json)


@split_app.command("set")
def split_set(
    model: str,
    weights: Annotated[list[str], typer.Argument(help="VERSION=WEIGHT pairs, e.g. 1=90 2=10.")],
    url: UrlOption = DEFAULT_URL, token: TokenOption = None, reason: ReasonOption = None, as_json: JsonOption = False,
) -> None:
    """Replace a model's weights (versions left out get no traffic); the rest of its routing stays."""
    from mlgate.admin_client import parse_weights

    try:
        parsed = parse_weights(weights)
    except AdminError as exc:
        _fail(str(exc))
    _change_routing(url, token, model, lambda routing: routing.update(weights=parsed), reason, as_json)


@shadow_app.command("set")
def shadow_set(
    model: str, version: str,
    percent: Annotated[float, typer.Argument(help="Share of the champion's traffic mirrored; 0 removes the shadow.")],
    url: UrlOption = DEFAULT_URL, token: TokenOption = None, reason: ReasonOption = None, as_json: JsonOption = False,
) -> None:
    """Mirror PERCENT of the champion's traffic to VERSION (off the callers' path) and compare answers."""
    def change(routing: dict[str, Any]) -> None:
        shadows = routing.setdefault("shadows", {})
        if percent == 0:
            shadows.pop(version, None)
        else:
            shadows[version] = percent
    _change_routing(url, token, model, change, reason, as_json)


StateOption = Annotated[Optional[Path], typer.Option(
    "--state", help="The state file itself (read locally; no gateway needed).")]
ConfigForStateOption = Annotated[Optional[Path], typer.Option(
    "--config", "-c", help="Read the state file this config names (locally).")]


def _state_path(state: Path | None, config: Path | None) -> Path | None:
    if state is not None:
        if not state.is_file():
            _fail(f"no state file at {state}")
        return state
    if config is not None:
        path = _load_or_exit(config).state.path
        if not path.is_file():
            _fail(f"no state file at {path} (the gateway creates it on first start)")
        return path
    return None


@audit_app.command("show")
def audit_show(
    target: Annotated[Optional[str], typer.Option(help="Only entries about this, e.g. model/breast-cancer.")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="At most this many entries.")] = None,
    state: StateOption = None, config: ConfigForStateOption = None,
    url: UrlOption = DEFAULT_URL, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Print the audit log, oldest first: who changed what, when, why, before and after."""
    from telemetry import audit

    path = _state_path(state, config)
    if path is not None:
        with _sqlite(path) as conn:
            entries = audit.read_entries(conn, target=target, limit=limit)
    else:
        query = urllib.parse.urlencode({k: v for k, v in (("target", target), ("limit", limit)) if v is not None})
        try:
            docs = _admin(url, token).get("/audit" + (f"?{query}" if query else ""))
        except AdminError as exc:
            _fail(str(exc))
        with reading_answer(url):
            if not isinstance(docs, list):  # ({} read as no entries: an empty log, exit 0)
                raise TypeError(f"a list of entries was expected, not {type(docs).__name__}")
            entries = [audit.AuditEntry.from_json(doc) for doc in docs]
    typer.echo(json.dumps([e.to_json() for e in entries], indent=2) if as_json else audit.render(entries))


@audit_app.command("verify")
def audit_verify(
    expected_head: Annotated[Optional[str], typer.Option(
        help="The head hash you recorded earlier: also detects removed newest entries.")] = None,
    state: StateOption = None, config: ConfigForStateOption = None,
    url: UrlOption = DEFAULT_URL, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Check the hash chain; exit 1 and name the first bad entry if any entry was edited, removed or reordered.

    With --state/--config the file is checked here; otherwise the gateway checks its own file.
    """
    from telemetry import audit

    if expected_head is not None:
        try:
            expected_head = audit.check_anchor(expected_head)
        except ValueError as exc:  # a slip, not evidence: it read as "TAMPERED"
            _fail(f"--expected-head: {exc}")
    path = _state_path(state, config)
    if path is not None:
        with _sqlite(path) as conn:
            doc = audit.verify_database(conn, expected_head).to_json()
    else:
        query = "?" + urllib.parse.urlencode({"expected_head": expected_head}) if expected_head else ""
        try:
            doc = _admin(url, token).get(f"/audit/verify{query}")
        except AdminError as exc:
            _fail(str(exc))
    with reading_answer(url):
        ok = bool(doc["ok"])
        line = (f"ok: {doc['checked']} entries, chain intact; head {doc['head']}" if ok
                else f"TAMPERED: {doc['problem']}")
    typer.echo(json.dumps(doc, indent=2) if as_json else line)
    if not ok:
        raise typer.Exit(1)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="Who holds the token (shown in the audit log).")],
    role: Annotated[str, typer.Option(help="viewer, operator or admin.")],
    state: StateOption = None, config: ConfigForStateOption = None,
    out: Annotated[Optional[Path], typer.Option(help="Write the token to this file (mode 0600) instead of "
                                                "printing it.")] = None,
    if_missing: Annotated[bool, typer.Option(help="With --out: keep the file if it holds a token the state file "
                                             "knows; otherwise replace the token of that name.")] = False,
    reason: ReasonOption = None,
) -> None:
    """Create a token directly in the state file (bootstrap: whoever can write the file is an admin)."""
    import getpass

    from gateway.auth import AuthState, Role, create_stored_token, revoke_stored_token
    from gateway.errors import InferenceError
    from routing.store import StateStore

    if state is None and config is None:
        _fail("say which state file: --state FILE or --config FILE")
    if if_missing and out is None:
        _fail("--if-missing needs --out: it keeps the token in that file if the state file knows it")
    path = state if state is not None else _load_or_exit(config).state.path  # type: ignore[arg-type]
    try:
        store = StateStore(path)
    except (OSError, sqlite3.Error) as exc:  # a folder, a file that is no database, a parent that is a file
        _fail(f"cannot open the state file {path}: {exc}")
    try:
        parsed_role = Role.parse(role)  # before anything changes: a mistyped role once cost the existing token
        if out is not None and if_missing and out.exists() and _known_token(store, out, name):
            typer.echo(f"{role} token '{name}' is in {out} (unchanged)")
            return
        if out is not None:  # writable before the token exists: else it would be created, audited and never shown
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                os.close(os.open(out, os.O_WRONLY | os.O_CREAT, 0o600))
            except OSError as exc:
                _fail(f"cannot write the token to {out}: {exc.strerror}")
        actor = f"local:{getpass.getuser()}"
        if if_missing and name in {r.name for r in AuthState(store, []).records}:  # file gone or stale: replace
            revoke_stored_token(store, name, actor, "token file missing or stale; replaced")
        token, record = create_stored_token(store, name, parsed_role, actor, reason)
    except InferenceError as exc:
        _fail(exc.message)
    finally:
        store.close()
    if out is None:
        typer.echo(token)
        return
    descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token + "\n")
    os.chmod(out, 0o600)
    typer.echo(f"{record.role.label} token '{name}' written to {out} (mode 0600)")


def _known_token(store: StateStore, path: Path, name: str) -> bool:
    """Whether the file holds the live token called ``name``."""
    from gateway.auth import AuthState, Role
    from gateway.errors import InferenceError

    try:
        principal = AuthState(store, []).current.require(f"Bearer {path.read_text().strip()}", Role.VIEWER)
    except (InferenceError, OSError):
        return False
    return principal.name == name


@contextlib.contextmanager
def _sqlite(path: Path) -> Iterator[sqlite3.Connection]:
    """The state file, read-only; a clear exit, not a traceback, for a path that is no state file."""
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)  # as_uri escapes '#' and '?'
    except sqlite3.Error as exc:
        _fail(f"cannot open the state file {path}: {exc}")
    try:
        yield conn
    except sqlite3.DatabaseError as exc:
        _fail(f"{path} is not an mlgate state file ({exc})")
    finally:
        conn.close()


if __name__ == "__main__":
    app()
