"""Errors that reach a client, each tied to one HTTP status and one gRPC code.

Handlers raise these with a message written for the caller; the HTTP and gRPC
front ends translate them. Anything else that escapes is a bug: it is logged
with its traceback and the caller gets a generic 500/INTERNAL without details.
"""

from __future__ import annotations

import grpc


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
