"""A small client of the admin API for the ``mlgate`` operator commands.

Standard library only (urllib), so the CLI starts fast. Every failure becomes
one ``AdminError`` line: the API's own error message when it sent one, else
what went wrong on the way.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any

NOT_MLGATE = "is --url the HTTP port of an mlgate gateway?"
"""The hint for an answer no mlgate gateway gives: most often --url names another server, or the gRPC port."""


class AdminError(Exception):
    """One line for the operator: what failed and why."""


def not_http_1_1(url: str, exc: http.client.HTTPException) -> str:
    """What to say when the server at ``url`` does not answer in HTTP/1.1 (the gRPC port speaks HTTP/2)."""
    return f"the server at {url} answered, but not HTTP/1.1 ({type(exc).__name__}); {NOT_MLGATE}"


class AdminClient:
    def __init__(self, url: str, token: str | None, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def get(self, path: str) -> Any:
        return self._call("GET", path)

    def put(self, path: str, body: Any) -> Any:
        return self._call("PUT", path, body)

    def post(self, path: str, body: Any) -> Any:
        return self._call("POST", path, body)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        if not self.token:
            raise AdminError("no token: pass --token or set MLGATE_TOKEN")
        if not self.token.isascii() or not self.token.isprintable() or " " in self.token:
            raise AdminError("the token holds a space, a line break or other characters no token has: "
                             "check --token or MLGATE_TOKEN")  # (never echoed: it is a secret)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            request = urllib.request.Request(f"{self.url}/admin/v1{path}", data=data, headers=headers, method=method)
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise AdminError(f"{method} {path}: {exc.code} {_error_text(exc.read())}") from None
        except http.client.BadStatusLine as exc:  # (RemoteDisconnected too: a server that hung up on HTTP/1.1)
            raise AdminError(not_http_1_1(self.url, exc)) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:  # (a bad port in the
            # URL is http.client.InvalidURL, a ValueError)
            reason = getattr(exc, "reason", exc)
            raise AdminError(f"cannot reach the gateway at {self.url}: {reason}") from None
        try:
            return json.loads(raw or b"null")
        except ValueError:
            raise AdminError(f"{method} {path}: the answer is not JSON; {NOT_MLGATE}") from None


def _error_text(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:300]
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return str(doc["error"])
    return json.dumps(doc)[:300]


def parse_weights(pairs: list[str]) -> dict[str, int]:
    """``["1=90", "2=10"]`` -> ``{"1": 90, "2": 10}``; AdminError naming the bad pair."""
    weights: dict[str, int] = {}
    for pair in pairs:
        version, sep, weight = pair.partition("=")
        if not sep or not version or not (weight.strip().isascii() and weight.strip().isdigit()):
            raise AdminError(f"'{pair}' is not VERSION=WEIGHT with a non-negative integer weight (e.g. 2=10)")
        if version in weights:
            raise AdminError(f"version '{version}' is given twice")
        weights[version] = int(weight)
    if not weights:
        raise AdminError("give at least one VERSION=WEIGHT")
    return weights
