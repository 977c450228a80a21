"""Errors that reach a client, each tied to one HTTP status and one gRPC code.

Handlers raise these with a message written for the caller; the HTTP and gRPC
front ends translate them. Anything else that escapes is a bug: it is logged
with its traceback and the caller gets a generic 500/INTERNAL without details.
"""

from __future__ import annotations

import json
from typing import Any

import grpc

SHOWN_CHARS = 64
"""Most characters of a caller's name or value an error message repeats. Messages quoted what they refused whole:
a 1 MB routing key, tensor name or datatype came back as a 1 MB HTTP error body (gRPC already cut its status
details to 4 KiB: ``grpc_server.status_message``)."""


def quoted(name: str) -> str:
    """A name the caller sent (a model, version, tensor, token, role, query parameter or content coding), as
    error messages show it: in single quotes, cut to ``SHOWN_CHARS`` with its full length said."""
    if len(name) <= SHOWN_CHARS:
        return f"'{name}'"
    return f"'{name[:SHOWN_CHARS]}...' ({len(name):,} characters)"


def shown(value: Any, depth: int = 0) -> str:
    """A value the caller sent, as error messages show it: in JSON's spelling (``true``, ``null``, ``"soon"``, not
    Python's ``True``, ``None``, ``'soon'``: the caller wrote JSON, or protobuf fields JSON spells the same), cut to
    about ``SHOWN_CHARS`` with its full length said. Lists show their first items, two levels deep."""
    if isinstance(value, str):
        text = json.dumps(value[:SHOWN_CHARS], ensure_ascii=False)
        return text if len(value) <= SHOWN_CHARS else f"{text[:-1]}...\" ({len(value):,} characters)"
    if isinstance(value, list):
        if depth >= 2:
            return "[...]" if value else "[]"
        items: list[str] = []
        length = 0
        for item in value:
            if length > SHOWN_CHARS:
                break
            items.append(shown(item, depth + 1))
            length += len(items[-1]) + 2
        if len(items) == len(value):
            return f"[{', '.join(items)}]"
        return f"[{', '.join(items)}, ...] ({len(value):,} items)"
    if isinstance(value, dict):
        return f"an object with {len(value):,} key{'' if len(value) == 1 else 's'}"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value) if abs(value) < 10**SHOWN_CHARS else f"an integer of over {SHOWN_CHARS} digits"
    if isinstance(value, float):
        return json.dumps(value)
    return f"a value of type {type(value).__name__}"


class InferenceError(Exception):
    """Base class: a failure the caller is told about, precisely."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class BadRequest(InferenceError):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(InferenceError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class MethodNotAllowed(InferenceError):
    http_status = 405
    grpc_code = grpc.StatusCode.UNIMPLEMENTED

    def __init__(self, method: str, allowed: str) -> None:
        super().__init__(f"method {method} not allowed here; use {allowed}")
        self.allowed = allowed


class PayloadTooLarge(InferenceError):
    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnsupportedMediaType(InferenceError):
    http_status = 415
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class Overloaded(InferenceError):
    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineUnreachable(Overloaded):
    """Refused at once because the request could not be answered within its own deadline (429, like any
    shedding; the distinction lets a router treat it as "too slow", not "too busy")."""


class Unavailable(InferenceError):
    """The request was fine but the model cannot answer now (not loaded, replica failed)."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(InferenceError):
    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthorized(InferenceError):
    """No credentials, or credentials that match no token (HTTP sends ``WWW-Authenticate: Bearer``)."""

    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class Forbidden(InferenceError):
    """A valid token whose role does not allow the operation."""

    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class Conflict(InferenceError):
    """A write based on a stale revision (optimistic concurrency)."""

    http_status = 409
    grpc_code = grpc.StatusCode.ABORTED


class Unprocessable(InferenceError):
    """Well-formed input that describes an invalid state (e.g. routing to a version that is not ready)."""

    http_status = 422
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []
