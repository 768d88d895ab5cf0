"""Errors over HTTP in OpenAI's shape: ``{"error": {"message", "type", "code", "param"}}`` with the right status.

ragqa's own errors map by kind (a user mistake is 400, a model server that fails is 502, a full
queue is 429 with ``Retry-After``); anything unexpected is a 500 whose message names no internals
(the traceback goes to the server's log). Never an HTML page, never a traceback to the client.
"""

from __future__ import annotations

import logging
from typing import Any

from ragqa.errors import (
    ConfigError,
    DiskFull,
    InputError,
    MissingDependencyError,
    ModelError,
    ModelTimeout,
    RagqaError,
    ShuttingDown,
    one_line,
)
from ragqa.store.scope import DocumentScopeError
from ragqa.gate import QueueFullError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An HTTP error with OpenAI's error body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", code, param)


def not_found(message: str, code: str = "not_found") -> ApiError:
    return ApiError(404, message, "invalid_request_error", code)


def api_error(exc: BaseException) -> ApiError:
    """Any exception as the ApiError a client should see."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, DiskFull):
        return ApiError(507, one_line(exc), "server_error", "disk_full")
    if isinstance(exc, ShuttingDown):
        return ApiError(503, one_line(exc), "server_error", "shutting_down", headers={"Retry-After": "5"})
    if isinstance(exc, QueueFullError):
        return ApiError(429, str(exc), "rate_limit_error", "rate_limit_exceeded",
                        headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, DocumentScopeError):
        return bad_request(one_line(exc), "documents", "document_not_found")
    if isinstance(exc, (InputError, ConfigError)):
        return bad_request(one_line(exc))
    if isinstance(exc, ModelTimeout):
        return ApiError(504, one_line(exc), "server_error", "model_timeout")
    if isinstance(exc, ModelError):
        return ApiError(502, one_line(exc), "server_error", "model_error")
    if isinstance(exc, MissingDependencyError):
        return ApiError(500, one_line(exc), "server_error", "missing_dependency")
    if isinstance(exc, RagqaError):
        return ApiError(500, one_line(exc), "server_error", "ragqa_error")
    log.error("unexpected error answering an API request", exc_info=exc)
    return ApiError(500, f"internal error ({type(exc).__name__}); the server's log has the details",
                    "server_error", "internal_error")
