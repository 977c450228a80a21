"""The admin API, tokens, the audit log, the operator CLI and persistence, against a real gateway.

Every refusal path the issue names (401, 403, 409, 422) with its message; tokens created and
revoked through the API; the audit log checked through ``mlgate audit verify`` on copies of the
state file with an edited, a deleted and a swapped entry; and a second gateway started on a copy
of the state file, which must come back with the same routing (and, configured so, refuse
inference without a token).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import RunningGateway, free_port, start_gateway, stop_gateway
from tests.routing.support import INFER, MODEL, Tokens, admin, body, routing_config, set_routing


def _put(client: httpx.Client, routing: dict[str, Any], revision: int | None = None, **extra: Any) -> httpx.Response:
    if revision is None:
        revision = client.get(f"/models/{MODEL}/routing").json()["revision"]
    return client.put(f"/models/{MODEL}/routing", json={"revision": revision, "routing": routing, **extra})


def test_openapi_documents_the_admin_api(routed: RunningGateway) -> None:
    schema = httpx.get(f"http://{routed.http_url}/admin/v1/openapi.json").json()
    assert "put" in schema["paths"]["/admin/v1/models/{model}/routing"]
    assert "bearer" in str(schema["components"]["securitySchemes"]).lower()


@pytest.mark.parametrize("authorization, message", [
    (None, "missing bearer token"),
    ("Bearer mlg_not-a-real-token", "invalid or revoked token"),
    (f"Basic {Tokens.admin}", "must be 'Bearer <token>'"),
])
def test_no_or_bad_token_is_401(routed: RunningGateway, authorization: str | None, message: str) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.get(f"http://{routed.http_url}/admin/v1/models", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert message in response.json()["error"]


def test_roles_are_enforced_with_403(routed: RunningGateway) -> None:
    with admin(routed, Tokens.viewer) as viewer:
        assert viewer.get(f"/models/{MODEL}/routing").status_code == 200
        refused = _put(viewer, {"champion": "1"})
        assert refused.status_code == 403
        assert "role viewer" in refused.json()["error"] and "operator" in refused.json()["error"]
    with admin(routed, Tokens.operator) as operator:
        refused = operator.get("/tokens")
        assert refused.status_code == 403
        assert "admin" in refused.json()["error"]


def test_a_stale_revision_gets_409(routed: RunningGateway) -> None:
    with admin(routed, Tokens.operator) as client:
        current = client.get(f"/models/{MODEL}/routing")
        revision = current.json()["revision"]
        assert current.headers["etag"] == f'"{revision}"'
        assert _put(client, {"champion": "1", "weights": {"1": 100}}, revision).status_code == 200
        stale = _put(client, {"champion": "1", "weights": {"1": 50, "2": 50}}, revision)
        assert stale.status_code == 409
        assert f"revision {revision + 1}, not {revision}" in stale.json()["error"]
        by_header = client.put(f"/models/{MODEL}/routing", headers={"If-Match": f'"{revision}"'},
                               json={"routing": {"champion": "1"}})
        assert by_header.status_code == 409
        fresh = client.put(f"/models/{MODEL}/routing", headers={"If-Match": f'"{revision + 1}"'},
                           json={"routing": {"champion": "1"}})
        assert fresh.status_code == 200 and fresh.json()["revision"] == revision + 2
        superscript_three = '"\u00b3"'.encode("latin-1")  # isdigit() says yes; int() says no
        odd = client.put(f"/models/{MODEL}/routing", headers={"If-Match": superscript_three},
                         json={"routing": {"champion": "1"}})
        assert odd.status_code == 422 and "If-Match must be a routing revision" in odd.json()["error"]


@pytest.mark.parametrize("routing, message", [
    ({"champion": "1", "weights": {"1": 0, "2": 0}}, "at least one weight must be positive"),
    ({"champion": "1", "weights": {"1": -5}}, "weights.1: weight must be from 0 to 1,000,000, got -5"),
    # a 400-digit weight was stored, then overflowed the router's floats: 500 here, every other process unable
    # to load the revision, a restart unable to start
    ({"champion": "1", "weights": {"1": int("9" * 400)}}, "weights.1: weight must be from 0 to 1,000,000"),
    ({"champion": "1", "weights": {"1": True}}, "weights.1: Input should be a valid integer"),
    ({"champion": "1", "weights": {"7": 100}}, "weights.7: version '7' does not exist; versions: 1, 2, 3, 4, 5"),
    ({"champion": "9"}, "champion: version '9' does not exist"),
    ({"champion": "1", "shadows": {"1": 10}}, "shadows.1: version '1' is the champion"),
    ({"champion": "1", "shadows": {"3": 150}}, "shadows.3: percent must be in (0, 100]"),
    ({"champion": "1", "header_rules": [{"header": "x-t", "value": "y", "version": "8"}]},
     "header_rules[0].version: version '8' does not exist"),
    ({"champion": "1", "fallback": {"default_response": {"label": [[0, 1]]}}},
     "fallback.default_response.label: a one-row answer must have shape [1]"),
    ({"champion": "1", "fallback": {"default_response": {"label": [0]}}},
     "fallback.default_response: missing output 'probabilities'"),
    # a label beyond INT64 was a 500; an FP32 probability of 1e39 was stored and answered as infinity
    ({"champion": "1", "fallback": {"default_response": {"label": [10**30], "probabilities": [[0.5, 0.5]]}}},
     "fallback.default_response.label: a value is out of range for INT64"),
    ({"champion": "1", "fallback": {"default_response": {"label": [0], "probabilities": [[1e39, 0.5]]}}},
     "fallback.default_response.probabilities: a value is out of range for FP32"),
    ({"champion": "1", "splitt": {}}, "splitt: Extra inputs are not permitted"),
])
def test_invalid_routing_gets_422_naming_the_problem(routed: RunningGateway, routing: dict[str, Any],
                                                     message: str) -> None:
    with admin(routed, Tokens.operator) as client:
        before = client.get(f"/models/{MODEL}/routing").json()
        response = _put(client, routing)
        assert response.status_code == 422, response.text
        assert message in response.json()["error"], response.json()
        assert client.get(f"/models/{MODEL}/routing").json() == before, "a refused change must change nothing"


def test_the_token_is_checked_before_the_body_is_read(routed: RunningGateway) -> None:
    """FastAPI parses a body before a route's token check: without a token, malformed JSON got 422, and a body of
    any size was read (the request limit did not apply to the admin API)."""
    url = f"http://{routed.http_url}/admin/v1/models/{MODEL}/routing"
    no_token = httpx.put(url, content=b"{not json", headers={"Content-Type": "application/json"})
    assert no_token.status_code == 401 and "missing bearer token" in no_token.json()["error"]
    host, port = routed.http_url.rsplit(":", 1)
    for authorization, status in ((b"", b"401"), (f"Authorization: Bearer {Tokens.operator}\r\n".encode(), b"413")):
        with socket.create_connection((host, int(port)), timeout=10) as conn:  # declares 1 GB, sends none of it
            conn.sendall(b"PUT /admin/v1/models/" + MODEL.encode() + b"/routing HTTP/1.1\r\nHost: x\r\n"
                         + authorization + b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n")
            assert conn.recv(4096).split(b" ")[1] == status
    with admin(routed, Tokens.viewer) as viewer:
        unknown = viewer.get("/no/such/route")
        assert unknown.status_code == 404 and unknown.json() == {"error": "Not Found"}  # the OIP error shape


def test_out_of_range_values_are_422_not_500(routed: RunningGateway) -> None:
    with admin(routed, Tokens.operator) as client:
        revision = client.get(f"/models/{MODEL}/routing").json()["revision"]
        huge = client.put(f"/models/{MODEL}/routing", headers={"If-Match": '"' + "9" * 5000 + '"'},
                          json={"routing": {"champion": "1"}})
        assert huge.status_code == 422 and "If-Match must be a routing revision" in huge.json()["error"]
        assert huge.json()["error"].endswith('..." (5,002 characters)')  # quoted in part, not 5 KB of nines
        infinite = client.put(f"/models/{MODEL}/routing", headers={"Content-Type": "application/json"},
                              content=b'{"revision": %d, "routing": {"champion": "1", "fallback": '
                                      b'{"challenger_timeout_ms": 1e999}}}' % revision)
        assert infinite.status_code == 422 and "challenger_timeout_ms" in infinite.json()["error"]
        not_a_number = client.put(f"/models/{MODEL}/routing", headers={"Content-Type": "application/json"},
                                  content=b'{"revision": %d, "routing": {"champion": "1", "fallback": '
                                          b'{"default_response": {"label": [0], "probabilities": [[NaN, 1]]}}}}'
                                          % revision)
        assert not_a_number.status_code == 422, not_a_number.text  # was stored, then answered as null
        assert "default_response.probabilities: values must be finite" in not_a_number.json()["error"]
    with admin(routed, Tokens.viewer) as viewer:
        beyond = viewer.get("/audit", params={"since": 2**63})
        assert beyond.status_code == 422 and "since" in beyond.json()["error"]


def test_read_side_query_values_are_checked(routed: RunningGateway) -> None:
    """Each of these was answered 200 (or 404, or 'TAMPERED') as if it meant something else."""
    drift = f"/models/{MODEL}/drift"
    with admin(routed, Tokens.viewer) as viewer:
        for query, message in [
            ("window_s=0.001", "window_s: Input should be greater than or equal to 1"),  # read as 1 s, shown as asked
            ("window_s=nan", "window_s: Input should be a finite number"),  # was "less than or equal to 900"
            ("window=300", "unknown query parameter 'window'; this endpoint takes: histograms, version, window_s"),
            ("window_s=60&window_s=900", "query parameter 'window_s' is given twice"),  # 900 was used
        ]:
            refused = viewer.get(f"{drift}?{query}")
            assert refused.status_code == 422 and message in refused.json()["error"], (query, refused.text)
        typo = viewer.get("/audit?lmit=1")  # was the whole log
        assert typo.status_code == 422 and "unknown query parameter 'lmit'" in typo.json()["error"]
        short = viewer.get("/audit/verify", params={"expected_head": "abc"})  # was ok: false, "newest ... removed?"
        assert short.status_code == 422 and "64 hex digits" in short.json()["error"]
        assert viewer.get("/tokens?x=1").status_code == 403  # the role is checked first
        assert viewer.get(f"{drift}?window_s=1&version=1").status_code == 200
    with admin(routed) as client:
        configured = client.delete("/tokens/ada")  # was 404 "no token named 'ada'", though GET /tokens lists it
        assert configured.status_code == 409 and "defined in the config file" in configured.json()["error"]
        long_reason = client.delete("/tokens/nobody", params={"reason": "r" * 1001})  # bodies have this limit
        assert long_reason.status_code == 422 and "reason" in long_reason.json()["error"]
        assert client.delete("/tokens/nobody").status_code == 404


def test_other_refusals(routed: RunningGateway) -> None:
    with admin(routed, Tokens.operator) as client:
        unknown = client.put("/models/nope/routing", json={"revision": 1, "routing": {"champion": "1"}})
        assert unknown.status_code == 404 and "unknown model 'nope'" in unknown.json()["error"]
        no_revision = client.put(f"/models/{MODEL}/routing", json={"routing": {"champion": "1"}})
        assert no_revision.status_code == 422 and "which revision" in no_revision.json()["error"]
        not_json = client.put(f"/models/{MODEL}/routing", content=b"{", headers={"Content-Type": "application/json"})
        assert not_json.status_code == 422
        assert not_json.json()["error"] == ("request body is not valid JSON: Expecting property name enclosed in "
                                            "double quotes at character 1")  # was "1: JSON decode error"
        empty = client.put(f"/models/{MODEL}/routing", headers={"Content-Type": "application/json"})
        assert empty.status_code == 422 and empty.json()["error"] == "request body: Field required"  # was ": Field..."


@pytest.mark.parametrize(("body", "key"), [
    (b'{"revision": %d, "routing": {"champion": "1", "champion": "3"}}', "champion"),
    (b'{"revision": %d, "routing": {"champion": "1", "weights": {"2": 90, "2": 10}}}', "2"),
    (b'{"revision": %d, "revision": 0, "routing": {"champion": "1"}}', "revision"),
])
def test_a_key_repeated_in_a_json_object_is_refused(routed: RunningGateway, body: bytes, key: str) -> None:
    """Python's json kept the last value: the routing that was applied and audited was not the one meant."""
    with admin(routed, Tokens.operator) as client:
        before = client.get(f"/models/{MODEL}/routing").json()
        response = client.put(f"/models/{MODEL}/routing", content=body % before["revision"],
                              headers={"Content-Type": "application/json"})
        assert response.status_code == 422, response.text
        assert response.json()["error"] == (f"request body: key '{key}' appears twice in one JSON object; which "
                                            "one was meant cannot be told")
        assert client.get(f"/models/{MODEL}/routing").json() == before


def test_tokens_are_created_shown_once_and_revoked(routed: RunningGateway) -> None:
    with admin(routed) as client:
        created = client.post("/tokens", json={"name": "bob", "role": "operator", "reason": "on call"})
        assert created.status_code == 201, created.text
        token = created.json()["token"]
        listed = client.get("/tokens").json()
        assert {"name": "bob", "role": "operator"}.items() <= next(t for t in listed if t["name"] == "bob").items()
        assert token not in str(listed)
        assert client.post("/tokens", json={"name": "bob", "role": "viewer"}).status_code == 409
        assert client.post("/tokens", json={"name": "ada", "role": "viewer"}).status_code == 409  # in the config
        assert client.post("/tokens", json={"name": "eve", "role": "root"}).status_code == 400
        with admin(routed, token) as bob:
            assert bob.get("/whoami").json() == {"name": "bob", "role": "operator"}
            assert _put(bob, {"champion": "1"}, reason="bob was here").status_code == 200
        assert client.delete("/tokens/bob").status_code == 200
        with admin(routed, token) as bob:
            assert bob.get("/whoami").status_code == 401
        entries = client.get("/audit").json()
        assert [e["action"] for e in entries if e["target"] == "token/bob"] == ["token.create", "token.revoke"]
        assert token not in str(entries)
        change = [e for e in entries if e["actor"] == "bob"][-1]
        assert change["action"] == "routing.replace" and change["reason"] == "bob was here"
        assert client.get("/audit/verify").json()["ok"] is True


def _mlgate(*args: str, token: str | None = None, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLGATE_TOKEN", "MLGATE_URL")}
    if token is not None:
        env["MLGATE_TOKEN"] = token
    if url is not None:
        env["MLGATE_URL"] = url
    return subprocess.run([sys.executable, "-m", "mlgate.cli", *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def test_operator_cli(routed: RunningGateway) -> None:
    url = f"http://{routed.http_url}"
    done = _mlgate("split", "set", MODEL, "1=90", "2=10", "--reason", "canary 10%", token=Tokens.operator, url=url)
    assert done.returncode == 0, done.stderr
    assert "90%" in done.stdout and "10%" in done.stdout
    shadow = _mlgate("shadow", "set", MODEL, "3", "25", "--json", token=Tokens.operator, url=url)
    assert shadow.returncode == 0, shadow.stderr
    assert json_of(shadow.stdout)["routing"]["shadows"] == {"3": 25.0}
    shown = _mlgate("split", "show", MODEL, "--json", token=Tokens.viewer, url=url)
    assert json_of(shown.stdout)["routing"]["weights"] == {"1": 90, "2": 10}
    refused = _mlgate("split", "set", MODEL, "1=100", token=Tokens.viewer, url=url)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "error: PUT /models/breast-cancer/routing: 403 token 'vera' has role viewer; this needs operator or above"]
    bad = _mlgate("split", "set", MODEL, "1=ninety", token=Tokens.operator, url=url)
    assert bad.returncode == 1 and "'1=ninety' is not VERSION=WEIGHT" in bad.stderr
    unreachable = _mlgate("split", "show", MODEL, token=Tokens.viewer, url="http://127.0.0.1:9")
    assert unreachable.returncode == 1 and "cannot reach the gateway" in unreachable.stderr
    status = _mlgate("status", MODEL, "--url", url, "--interval", "0")
    assert status.returncode == 0
    roles = {line.split()[1]: line.split()[3] for line in status.stdout.split("\n\n")[0].splitlines()[1:]}
    assert roles == {"1": "champion", "2": "challenger", "3": "shadow", "4": "-", "5": "-"}
    log = _mlgate("audit", "show", "--target", f"model/{MODEL}", token=Tokens.viewer, url=url)
    assert "reason: canary 10%" in log.stdout and "weights:" in log.stdout


def json_of(text: str) -> Any:
    import json

    return json.loads(text)


def _snapshot(routed: RunningGateway, target: Path) -> Path:
    """A consistent copy of the live state file (SQLite's backup API, safe while the gateway writes)."""
    source = sqlite3.connect(routed.log_path.parent / "state.db")
    copy = sqlite3.connect(target)
    with copy:
        source.backup(copy)
    source.close()
    copy.close()
    return target


def _tamper(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    with conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()


@pytest.mark.parametrize("tampering, named", [
    (("UPDATE audit_log SET reason = 'nothing to see' WHERE seq = 3",), "entry 3"),
    (("DELETE FROM audit_log WHERE seq = 3",), "entry 4"),
    (("UPDATE audit_log SET seq = -1 WHERE seq = 2", "UPDATE audit_log SET seq = 2 WHERE seq = 3",
      "UPDATE audit_log SET seq = 3 WHERE seq = -1"), "entry 2"),
])
def test_audit_verify_names_the_first_tampered_entry(routed: RunningGateway, tmp_path: Path,
                                                     tampering: tuple[str, ...], named: str) -> None:
    for n in range(3):  # entries 1-4 exist even when this test runs alone
        set_routing(routed, weights={"1": 100}, reason=f"entry {n}")
    intact = _snapshot(routed, tmp_path / "intact.db")
    ok = _mlgate("audit", "verify", "--state", str(intact))
    assert ok.returncode == 0 and ok.stdout.startswith("ok:"), ok.stdout + ok.stderr
    tampered = _snapshot(routed, tmp_path / "tampered.db")
    _tamper(tampered, *tampering)
    caught = _mlgate("audit", "verify", "--state", str(tampered))
    assert caught.returncode == 1
    assert caught.stdout.startswith(f"TAMPERED: {named}"), caught.stdout


def test_state_survives_a_restart_and_the_data_plane_can_require_a_token(
        routed: RunningGateway, routing_repository: Path, tmp_path: Path, dataset: np.ndarray) -> None:
    doc = set_routing(routed, weights={"2": 100}, shadows={"3": 5}, reason="before the restart")
    workdir = tmp_path / "restarted"
    workdir.mkdir()
    state = _snapshot(routed, workdir / "state.db")
    http_port, grpc_port = free_port(), free_port()
    config = routing_config(routing_repository, state, http_port, grpc_port,
                            extra="  require_token_for_inference: true")
    restarted = start_gateway(config, workdir, http_port, grpc_port, routing_repository)
    try:
        with admin(restarted, Tokens.viewer) as client:
            routing = client.get(f"/models/{MODEL}/routing").json()
            assert routing["revision"] == doc["revision"]
            assert routing["routing"] == doc["routing"]
            assert client.get("/audit/verify").json()["ok"] is True
        with httpx.Client(base_url=f"http://{restarted.http_url}", timeout=10) as data:
            refused = data.post(INFER, content=body(dataset[:1]))
            assert refused.status_code == 401 and "bearer token" in refused.json()["error"]
            answered = data.post(INFER, content=body(dataset[:1]),
                                 headers={"Authorization": f"Bearer {Tokens.viewer}"})
            assert answered.status_code == 200 and answered.json()["model_version"] == "2"
    finally:
        assert stop_gateway(restarted) == 0
