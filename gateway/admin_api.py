"""The operators' control plane: ``/admin/v1/...``, beside the OIP data plane on the HTTP port.

FastAPI here (and not on the data plane) because this is where a typed,
self-documenting schema is worth more than microseconds: the OpenAPI document
is served at ``/admin/v1/openapi.json`` and browsable at ``/admin/v1/docs``.

Every endpoint needs a bearer token (``gateway.auth``): ``viewer`` reads,
``operator`` changes routing, ``admin`` manages tokens. Writes use optimistic
concurrency: a routing change names the revision it was based on (body field
``revision`` or ``If-Match``) and a stale one gets 409. Every change is
validated against what this gateway serves (422 with one message per problem),
persisted with its audit entry in one transaction, and applied at once here;
other gateway processes pick it up from the state file within a poll interval.
Errors have the OIP shape ``{"error": "..."}`` (plus ``problems`` on 422).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from gateway.auth import AuthState, Principal, Role, create_stored_token, revoke_stored_token
from gateway.errors import Conflict, InferenceError, NotFound, Unavailable, Unprocessable, quoted, shown
from gateway.http_app import raw_header, refuse_declared_oversize
from gateway.registry import ModelRegistry
from gateway.shadows import ShadowMirror
from gateway.traffic import policy_problems
from routing.controller import RolloutController, RolloutRefused
from routing.live import LiveRouting
from routing.policy import RoutingPolicy, variant_of
from routing.rollout import RolloutRecord, RolloutSettings, RolloutSpec
from routing.store import StaleRevision, StateStore, StoredRouting
from telemetry import audit
from telemetry.drift import DriftView
from telemetry.evidence import SLOT_S
from telemetry.evidence_store import RETENTION_S

PREFIX = "/admin/v1"
log = logging.getLogger(__name__)


class RoutingUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    revision: int | None = Field(
        None, ge=0, description="Revision this change is based on (from GET); a stale one gets 409. "
        "May be given as the If-Match header instead.")
    routing: RoutingPolicy
    reason: str | None = Field(None, max_length=1000, description="Why: kept in the audit log.")


class RolloutRequest(RolloutSettings):
    reason: str | None = Field(None, max_length=1000, description="Why: kept in the audit log.")


class RolloutAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=1000, description="Why: kept in the audit log.")


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Who will hold the token; unique.")
    role: str = Field(description="viewer, operator or admin.")
    reason: str | None = Field(None, max_length=1000)


_bearer = HTTPBearer(auto_error=False, description="Token from 'mlgate token create' or POST /admin/v1/tokens.")


def _role(needed: Role) -> Any:
    """A dependency admitting tokens of ``needed`` role or above (401 without a valid token, 403 below it), then
    refusing query parameters the route does not take (so a caller below the role learns nothing about them)."""
    def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
              request: Request) -> Principal:
        auth_state: AuthState = request.app.state.auth
        principal = auth_state.current.require(request.headers.get("authorization"), needed)
        route = request.scope.get("route")
        if isinstance(route, _UniqueKeysRoute):
            _refuse_unknown_query(request, route.query_names)
        return principal
    return Depends(check)


def _refuse_unknown_query(request: Request, takes: frozenset[str]) -> None:
    """422 for a query parameter the route does not take, or one given twice.

    FastAPI ignores the first and keeps the last of the second: ``/audit?lmit=1`` answered the whole log,
    ``?window_s=60&window_s=900`` judged 900 s, each as if the caller had asked for it."""
    seen: set[str] = set()
    for key, _ in request.query_params.multi_items():
        if key not in takes:
            taken = ", ".join(sorted(takes)) if takes else "no query parameters"
            raise Unprocessable(f"unknown query parameter {quoted(key)}; this endpoint takes: {taken}")
        if key in seen:
            raise Unprocessable(f"query parameter {quoted(key)} is given twice; which one was meant cannot be told")
        seen.add(key)


# Module level, not inside build_admin_app: FastAPI resolves these annotations by name.
Viewer = Annotated[Principal, _role(Role.VIEWER)]
Operator = Annotated[Principal, _role(Role.OPERATOR)]
Admin = Annotated[Principal, _role(Role.ADMIN)]


OPEN_PATHS = frozenset({f"{PREFIX}/openapi.json", f"{PREFIX}/docs", f"{PREFIX}/docs/oauth2-redirect"})
"""The API's description and its browsable page: served without a token, as a browser cannot send one."""


class TokenBeforeBody:
    """The admin app behind a gate that checks the bearer token, and a declared body against the request limit,
    before a byte of the body is read.

    FastAPI reads and parses a route's body before it runs the route's dependencies, the token check among them:
    a caller with no token made the gateway buffer a body of any size (the data plane's ``max_request_bytes`` did
    not apply here) and got 422 for malformed JSON instead of 401. Roles are still checked per route."""

    def __init__(self, app: FastAPI, max_request_bytes: int) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            headers: list[tuple[bytes, bytes]] = scope["headers"]
            try:
                auth_state: AuthState = self.app.state.auth
                auth_state.current.authenticate(raw_header(headers, "authorization"))
                refuse_declared_oversize(headers, self.max_request_bytes)
            except InferenceError as exc:
                await _error(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _RepeatedKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return document


class _UniqueKeysRequest(Request):
    """A request whose JSON body may not repeat a key within an object.

    Python's json keeps the last of ``{"champion": "1", "champion": "3"}`` without a word: an operator's typo in a
    routing change would be applied as the value they did not mean, and audited as if they had."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = json.loads(await self.body(), object_pairs_hook=_unique_keys)
            except _RepeatedKey as exc:  # an HTTPException is the one error FastAPI's body parsing passes on
                raise HTTPException(422, f"request body: key '{exc.key}' appears twice in one JSON object; "
                                         "which one was meant cannot be told") from None
        return self._json


def _query_names(dependant: Dependant) -> frozenset[str]:
    """The query parameters a route takes, its dependencies' included."""
    names = {field.alias for field in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return frozenset(names)


class _UniqueKeysRoute(APIRoute):
    """A route whose JSON body may not repeat a key, and which knows its query parameters (see ``_role``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.query_names = _query_names(self.dependant)

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def with_unique_keys(request: Request) -> Response:
            return await handler(_UniqueKeysRequest(request.scope, request.receive))
        return with_unique_keys


def _problem(error: Any) -> str:
    """One of pydantic's validation errors as ``field.path: what is wrong``; JSON that does not parse says where."""
    if error["type"] == "json_invalid":  # its loc is ("body", character offset), its msg only "JSON decode error"
        return f"request body is not valid JSON: {error['ctx']['error']} at character {error['loc'][-1]}"
    where = ".".join(str(p) for p in error["loc"] if p != "body") or "request body"  # missing: loc is ("body",)
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


def _error(exc: InferenceError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
    body: dict[str, Any] = {"error": exc.message}
    if isinstance(exc, Unprocessable) and exc.problems:
        body["problems"] = exc.problems
    return JSONResponse(body, status_code=exc.http_status, headers=headers)


def build_admin_app(store: StateStore, live: LiveRouting, registry: ModelRegistry, auth_state: AuthState,
                    shadows: ShadowMirror, drift: DriftView | None = None,
                    rollouts: RolloutController | None = None) -> FastAPI:
    app = FastAPI(title="mlgate admin API", version="1", openapi_url=f"{PREFIX}/openapi.json",
                  docs_url=f"{PREFIX}/docs", redoc_url=None)
    app.router.route_class = _UniqueKeysRoute  # before any route is added
    app.state.auth = auth_state

    @app.exception_handler(InferenceError)
    async def _inference_error(request: Request, exc: InferenceError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _framework_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Unknown routes, wrong methods, unreadable bodies: the OIP error shape, as everywhere else."""
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(StaleRevision)
    async def _stale(request: Request, exc: StaleRevision) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=409)

    @app.exception_handler(RolloutRefused)
    async def _refused(request: Request, exc: RolloutRefused) -> JSONResponse:
        body: dict[str, Any] = {"error": str(exc)}
        if exc.problems:
            body["problems"] = exc.problems
        return JSONResponse(body, status_code=exc.status)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("admin API: %s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": "internal server error"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [_problem(err) for err in exc.errors()]
        return JSONResponse({"error": "; ".join(problems), "problems": problems}, status_code=422)

    def model_doc(model: str) -> dict[str, Any]:
        entries = registry.versions_of(model)
        active = live.get(model)
        shares = active.policy.shares() if active is not None else {}
        return {
            "model": model,
            "revision": active.revision if active else None,
            "champion": registry.champions.get(model),  # kept in step with the live routing (on_change)
            "versions": [{
                "version": e.version, "state": e.state.value, "reason": e.reason, "device": e.device,
                "role": variant_of(active.policy, e.version) if active else None,
                "share": shares.get(e.version, 0.0),
                "shadow_percent": active.policy.shadows.get(e.version) if active else None,
            } for e in entries],
            "shadows": {v: t.to_json() for v, t in shadows.tally(model).items()},
        }

    @app.get(f"{PREFIX}/whoami", summary="The caller's token name and role")
    async def whoami(principal: Viewer) -> dict[str, str]:
        return {"name": principal.name, "role": principal.role.label}

    @app.get(f"{PREFIX}/models", summary="Every model with its versions, their state and routing role")
    async def list_models(principal: Viewer) -> list[dict[str, Any]]:
        return [model_doc(m) for m in registry.models()]

    @app.get(f"{PREFIX}/models/{{model}}", summary="One model: versions, state, split and shadow comparison")
    async def get_model(model: str, principal: Viewer) -> dict[str, Any]:
        return model_doc(model)

    @app.get(f"{PREFIX}/models/{{model}}/routing", summary="A model's routing and its revision")
    async def get_routing(model: str, principal: Viewer) -> JSONResponse:
        stored = _stored_or_404(model)
        return JSONResponse(stored.to_json(), headers={"ETag": f'"{stored.revision}"'})

    @app.put(f"{PREFIX}/models/{{model}}/routing", summary="Replace a model's routing (optimistic concurrency)",
             responses={409: {"description": "stale revision"}, 422: {"description": "invalid routing"}})
    async def put_routing(model: str, update: RoutingUpdate, principal: Operator,
                          if_match: Annotated[str | None, Header()] = None) -> JSONResponse:
        registry.versions_of(model)  # 404 for an unknown model
        expected = _expected_revision(update.revision, if_match)
        problems = policy_problems(update.routing, model, registry)
        if problems:
            raise Unprocessable(f"routing of model '{model}' is invalid: " + "; ".join(problems), problems)
        document = update.routing.model_dump(mode="json")
        stored = await asyncio.to_thread(store.replace_routing, model, document, expected, principal.name,
                                         update.reason)
        live.install(stored)
        return JSONResponse(stored.to_json(), headers={"ETag": f'"{stored.revision}"'})

    @app.get(f"{PREFIX}/models/{{model}}/drift", summary="Input and prediction drift of a model's versions")
    async def get_drift(model: str, principal: Viewer, version: str | None = None,
                        window_s: Annotated[float, Query(ge=SLOT_S, le=RETENTION_S, allow_inf_nan=False)] = 60.0,
                        histograms: Annotated[int, Query(ge=0, le=30)] = 0) -> dict[str, Any]:
        """Every version (or ``version``) over the last ``window_s`` seconds, merged across gateway processes;
        ``histograms`` = N adds reference and live bin counts of each version's N most drifted features.
        The window is made of whole slots: less than one would be read as one and shown as asked."""
        if drift is None:
            raise Unavailable("drift monitoring is off in this gateway (monitoring.drift: false)")
        versions = [version] if version is not None else [e.version for e in registry.versions_of(model)]
        if version is not None:
            registry.get(model, version)  # 404 for an unknown version
        champion = registry.champions.get(model)
        reports = await asyncio.to_thread(drift.reports, model, versions, champion, window_s, time.time(), histograms)
        return {"model": model, "champion": champion, "window_s": window_s, "versions": [r.to_json() for r in reports]}

    def controller() -> RolloutController:
        if rollouts is None:
            raise Unavailable("rollouts need drift monitoring, which is off in this gateway (monitoring.drift: false)")
        return rollouts

    async def rollout_call(model: str,
                           call: Callable[[], tuple[RolloutRecord | dict[str, Any], StoredRouting | None]]) -> Any:
        registry.versions_of(model)  # 404 for an unknown model
        record, routing = await asyncio.to_thread(call)
        if routing is not None:
            live.install(routing)
        return record.model_dump(mode="json") if isinstance(record, RolloutRecord) else record

    @app.get(f"{PREFIX}/models/{{model}}/rollout", summary="A model's latest rollout: state, step, judgement, history")
    async def get_rollout(model: str, principal: Viewer) -> Any:
        registry.versions_of(model)
        controller()
        stored = await asyncio.to_thread(store.rollout, model)
        if stored is None:
            raise NotFound(f"model '{model}' has no rollout")
        return stored.record

    @app.post(f"{PREFIX}/models/{{model}}/rollout", status_code=201, summary="Start a rollout (shadow first)",
              responses={409: {"description": "a rollout is running"}, 422: {"description": "invalid"}})
    async def start_rollout(model: str, request: RolloutRequest, principal: Operator) -> Any:
        spec = RolloutSpec(model=model, **request.model_dump(exclude={"reason"}))
        return await rollout_call(model, lambda: controller().start(spec, principal.name, time.time(),
                                                                    request.reason))

    @app.post(f"{PREFIX}/models/{{model}}/rollout/{{action}}", summary="pause, resume, promote or abort a rollout")
    async def act_on_rollout(model: str, action: Literal["pause", "resume", "promote", "abort"],
                             principal: Operator, body: RolloutAction | None = None) -> Any:
        reason = body.reason if body is not None else None
        return await rollout_call(model, lambda: controller().act(model, action, principal.name, time.time(),
                                                                  reason))

    @app.get(f"{PREFIX}/audit", summary="Audit log entries, oldest first")
    async def audit_entries(principal: Viewer, target: str | None = None,
                            since: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
                            limit: Annotated[int | None, Query(ge=1, le=10000)] = None) -> list[dict[str, Any]]:
        def read() -> list[audit.AuditEntry]:
            with store.separate_reader() as conn:
                return audit.read_entries(conn, target=target, since_seq=since, limit=limit)
        return [e.to_json() for e in await asyncio.to_thread(read)]

    @app.get(f"{PREFIX}/audit/verify", summary="Check the audit log's hash chain")
    async def audit_verify(principal: Viewer, expected_head: str | None = None) -> dict[str, Any]:
        try:
            anchor = audit.check_anchor(expected_head) if expected_head is not None else None
        except ValueError as exc:  # a slip, not evidence: not "TAMPERED"
            raise Unprocessable(f"expected_head: {exc}") from None

        def check() -> audit.Verification:
            with store.separate_reader() as conn:
                return audit.verify_database(conn, anchor)
        return (await asyncio.to_thread(check)).to_json()

    @app.get(f"{PREFIX}/tokens", summary="Tokens (names and roles; never the tokens)")
    async def list_tokens(principal: Admin) -> list[dict[str, str]]:
        return [{**r.to_json(), "source": "config" if r in auth_state.configured else "store"}
                for r in auth_state.records]

    @app.post(f"{PREFIX}/tokens", status_code=201, summary="Create a token; the response is the only place it "
              "appears")
    async def create_token(request: TokenRequest, principal: Admin) -> dict[str, str]:
        new_role = Role.parse(request.role)
        if any(record.name == request.name for record in auth_state.configured):
            raise Conflict(f"a token named '{request.name}' is defined in the config file; pick another name")
        token, record = await asyncio.to_thread(create_stored_token, store, request.name, new_role,
                                                principal.name, request.reason)
        auth_state.reload()
        return {**record.to_json(), "token": token}

    @app.delete(f"{PREFIX}/tokens/{{name}}", summary="Revoke a token")
    async def revoke_token(name: str, principal: Admin,
                           reason: Annotated[str | None, Query(max_length=1000)] = None) -> dict[str, str]:
        if any(record.name == name for record in auth_state.configured):  # was 404, though GET /tokens lists it
            raise Conflict(f"the token '{name}' is defined in the config file (auth.tokens): "
                           "remove it there and restart the gateway")
        record = await asyncio.to_thread(revoke_stored_token, store, name, principal.name, reason)
        auth_state.reload()
        return record.to_json()

    def _stored_or_404(model: str) -> StoredRouting:
        registry.versions_of(model)
        active = live.get(model)
        if active is None:
            raise NotFound(f"model '{model}' has no routing yet")
        return active.stored

    return app


def _expected_revision(body_revision: int | None, if_match: str | None) -> int:
    header_revision = None
    if if_match is not None:
        text = if_match.strip().removeprefix("W/").strip('"')
        if not (text.isascii() and text.isdigit() and len(text) <= 18):
            raise Unprocessable(f"If-Match must be a routing revision (an integer), got {shown(if_match)}")
        header_revision = int(text)
    if body_revision is None and header_revision is None:
        raise Unprocessable("say which revision the change is based on: body field 'revision' or If-Match")
    if body_revision is not None and header_revision is not None and body_revision != header_revision:
        raise Unprocessable(f"revision {body_revision} in the body differs from If-Match {header_revision}")
    return body_revision if body_revision is not None else header_revision  # type: ignore[return-value]
