"""``mlgate rollout``: start a progressive rollout, watch it, and pause, resume, promote or abort it."""

from __future__ import annotations

import json
import math
import time
import urllib.parse
from typing import Annotated, Any, Optional

import typer

from mlgate.admin_client import AdminError
from mlgate.cli_common import DEFAULT_URL, JsonOption, ReasonOption, TokenOption, UrlOption, admin, fail, reading_answer

rollout_app = typer.Typer(help="Progressive rollouts: shadow, canary steps, automatic promotion or rollback "
                               "(admin API, role operator to change).", no_args_is_help=True)

def _path(model: str) -> str:
    return f"/models/{urllib.parse.quote(model, safe='')}/rollout"


@rollout_app.command("start")
def rollout_start(
    model: str,
    challenger: Annotated[str, typer.Option(help="Version to roll out.")],
    steps: Annotated[Optional[str], typer.Option(help="Live traffic percentages, ending at 100 "
                                                 "(default 5,25,50,100).")] = None,
    interval: Annotated[Optional[str], typer.Option(help="Passing time each step is held, e.g. 30s, 2m "
                                                    "(default 30s).")] = None,
    shadow: Annotated[Optional[str], typer.Option(help="Passing time in shadow first (default: --interval).")] = None,
    mirror: Annotated[Optional[float], typer.Option(help="Percent of the champion's traffic mirrored for "
                                                    "comparison (default 100).")] = None,
    act_on_input_drift: Annotated[bool, typer.Option(help="Roll back on input PSI above input_psi.act (0.25 "
                                                     "unless --checks says otherwise) too.")] = False,
    checks: Annotated[Optional[str], typer.Option(help="Check settings as JSON, e.g. "
                                                  "'{\"disagreement\": {\"threshold\": 0.05}}'.")] = None,
    reason: ReasonOption = None,
    url: UrlOption = DEFAULT_URL, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Shadow the challenger, then give it each step of live traffic while every check passes."""
    from routing.rollout import parse_duration, parse_steps

    body: dict[str, Any] = {"challenger": challenger, "reason": reason}  # unset options: the server's defaults
    option = ""  # which one a ValueError is about: "'x' is not a duration" alone did not say
    try:
        if steps is not None:
            body["steps"] = parse_steps(steps)  # (its messages name steps already)
        if interval is not None:
            option = "--interval"
            body["interval_s"] = parse_duration(interval)
        if shadow is not None:
            option = "--shadow"
            body["shadow_s"] = parse_duration(shadow)
        if mirror is not None:
            body["mirror_percent"] = mirror
        option = "--checks"
        check_doc = json.loads(checks) if checks else {}
        if not isinstance(check_doc, dict):
            raise ValueError("must be a JSON object, e.g. '{\"disagreement\": {\"threshold\": 0.05}}'")
    except ValueError as exc:
        fail(f"{option}: {exc}" if option else str(exc))
    if act_on_input_drift:
        check_doc["act_on_input_drift"] = True
    body["checks"] = check_doc
    try:
        record = admin(url, token).post(_path(model), body)
    except AdminError as exc:
        fail(str(exc))
    with reading_answer(url):
        typer.echo(json.dumps(record, indent=2) if as_json else render(record))


@rollout_app.command("status")
def rollout_status(
    model: str,
    watch: Annotated[float, typer.Option(help="Print again every this many seconds until the rollout ends "
                                              "(0: once).")] = 0.0,
    url: UrlOption = DEFAULT_URL, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """State, step, share, the latest judgement of every check, and every transition with its reason."""
    from routing.rollout import RolloutState

    if not (math.isfinite(watch) and watch >= 0):  # nan and inf ended in a traceback from time.sleep
        fail(f"--watch: {watch:g} is not a number of seconds >= 0 (0: print once)")
    client = admin(url, token)
    while True:
        try:
            record = client.get(_path(model))
        except AdminError as exc:
            fail(str(exc))
        with reading_answer(url):
            typer.echo(json.dumps(_status_json(record), indent=2) if as_json else render(record))
            ended = RolloutState(record["state"]).terminal
        if watch <= 0 or ended:
            return
        time.sleep(watch)
        if not as_json:
            typer.echo("")


def _action(action: str, model: str, reason: str | None, url: str, token: str | None, as_json: bool) -> None:
    try:
        record = admin(url, token).post(f"{_path(model)}/{action}", {"reason": reason})
    except AdminError as exc:
        fail(str(exc))
    with reading_answer(url):
        typer.echo(json.dumps(_status_json(record), indent=2) if as_json else render(record))


@rollout_app.command("pause")
def rollout_pause(model: str, reason: ReasonOption = None, url: UrlOption = DEFAULT_URL, token: TokenOption = None,
                  as_json: JsonOption = False) -> None:
    """Hold traffic where it is and stop judging until resumed."""
    _action("pause", model, reason, url, token, as_json)


@rollout_app.command("resume")
def rollout_resume(model: str, reason: ReasonOption = None, url: UrlOption = DEFAULT_URL,
                   token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Continue a paused rollout from where it was paused."""
    _action("resume", model, reason, url, token, as_json)


@rollout_app.command("promote")
def rollout_promote(model: str, reason: ReasonOption = None, url: UrlOption = DEFAULT_URL,
                    token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Make the challenger the champion now, whatever the evidence."""
    _action("promote", model, reason, url, token, as_json)


@rollout_app.command("abort")
def rollout_abort(model: str, reason: ReasonOption = None, url: UrlOption = DEFAULT_URL,
                  token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Roll back now: the challenger loses its live traffic and its mirror."""
    _action("abort", model, reason, url, token, as_json)


def _unread(record: dict[str, Any]) -> list[str]:
    """Why the gateway's stored record does not read (one written by an older mlgate, say); empty if it reads."""
    from pydantic import ValidationError

    from routing.rollout import RolloutRecord, problems_of

    try:
        RolloutRecord.model_validate(record)
    except ValidationError as exc:
        return problems_of(exc)
    return []


def _status_json(record: dict[str, Any]) -> dict[str, Any]:
    """The record with the fields scripts look for first at the top level (only the state and why not, for a
    record that does not read)."""
    if problems := _unread(record):
        return {"state": record["state"], "unreadable": problems, "record": record}
    spec = record["spec"]
    return {"model": spec["model"], "state": record["state"], "step": record["step"],
            "steps": spec["steps"], "challenger": spec["challenger"], "champion": record["champion"],
            "challenger_percent": record["challenger_percent"], "reason": record["reason"],
            "started_at": record["started_at"], "updated_at": record["updated_at"],
            "transitions": record["transitions"], "checks": record["last_judgement"], "record": record}


def render(record: dict[str, Any]) -> str:
    from routing.rollout import ENDED, RolloutRecord

    if problems := _unread(record):  # it was "not what an mlgate gateway sends": it is, from another version
        return "\n".join([f"state {record['state']}: the stored record cannot be read: {'; '.join(problems)}",
                          f"reason: {record.get('reason')}", "a new rollout replaces it" if record["state"] in ENDED
                          else "abort rolls it back; nothing else can act on it"])
    hold = RolloutRecord.model_validate(record).hold_s
    spec = record["spec"]
    steps = spec["steps"]
    step = record["step"]
    where = "shadow" if step < 0 else f"step {step + 1}/{len(steps)}"
    lines = [
        f"rollout of model {spec['model']}: version {spec['challenger']} against champion {record['champion']}",
        f"state {record['state']}  {where}  {record['challenger_percent']}% live  "
        f"held {record['held_s']:.0f} of {hold:g} s  mirror {spec['mirror_percent']:g}%",
        f"reason: {record['reason']}",
    ]
    if record["last_judgement"]:
        lines.append(f"checks (last {spec['checks']['window_s']:g} s window):")
        for check in record["last_judgement"]:
            failing = record["failing"].get(check["name"], 0)
            streak = f"  failing {failing} window(s) in a row" if failing else ""
            lines.append(f"  {check['name']:<22}{check['status']:<13}{check['detail']}{streak}")
    lines.append("transitions:")
    for t in record["transitions"]:
        lines.append(f"  {t['at']}  {t['from_state'] or 'start'} -> {t['to_state']}  {t['challenger_percent']}% live"
                     f"  by {t['actor']}: {t['reason']}")
    return "\n".join(lines)
