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


class Unavailable(InferenceError):
    """The request was fine but the model cannot answer now (not loaded, replica failed)."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(InferenceError):
    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
