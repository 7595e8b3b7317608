"""API errors: one exception type for handlers, rendered as the shared JSON error body.

Handlers raise :class:`ApiError` (validation turns every ``ValueError`` into one, with a 4xx status) and never build
error responses by hand; the exception handlers installed by :func:`exception_handlers` answer with
``{"type", "code", "message", "retryable", "request_id"}`` and the ``X-Request-ID`` header.

Failures of the durable side are the service's, not the request's, and temporary: a database error (SQLAlchemy,
the drivers) or a storage ``OSError`` answers ``503 storage_unavailable``, a full disk ``507 insufficient_storage``,
both retryable with ``Retry-After``. No error body ever carries exception text, SQL or a path: those go to the
log, under the request id the agent can quote.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from collections.abc import Mapping

import asyncpg
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serve_app.auth.errors import error_body, error_response
from serve_app.auth.request_id import request_id_of

logger = logging.getLogger("orfeas.api")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    410: "not_found_error",
    429: "rate_limit_error",
    503: "unavailable_error",
    507: "unavailable_error",
}

# What the database and the artifact store raise when they, not the request, failed.
STORAGE_ERRORS: tuple[type[Exception], ...] = (
    SQLAlchemyError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    sqlite3.Error,
    OSError,
)
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_POSTGRES_DISK_FULL = "53100"  # SQLSTATE disk_full


def _disk_full(exc: BaseException) -> bool:
    """A full disk under the artifacts (``ENOSPC``/``EDQUOT``) or under the database (SQLite's
    ``SQLITE_FULL``, Postgres's ``disk_full``), however the driver wraps it."""
    if isinstance(exc, OSError):
        return exc.errno in _DISK_FULL
    cause = getattr(exc, "orig", None) or exc
    if getattr(cause, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return True
    return getattr(cause, "sqlstate", None) == _POSTGRES_DISK_FULL


_DEFAULT_STORAGE_RETRY_AFTER_S = 30


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retryable = retryable
        self.headers = dict(headers or {})
        # fields of the body beyond the shared five, for an agent to act on (e.g. `models` of unknown_model)
        self.extra = dict(extra or {})


def not_found(what: str, identifier: str) -> ApiError:
    return ApiError(404, f"{what}_not_found", f"no {what} {identifier!r} for this agent")


def storage_error(exc: BaseException, retry_after_s: int = _DEFAULT_STORAGE_RETRY_AFTER_S) -> ApiError:
    """The answer to a failure of the database or the artifact store; says nothing about its internals."""
    headers = {"Retry-After": str(retry_after_s)}
    if _disk_full(exc):
        return ApiError(
            507,
            "insufficient_storage",
            "the service's storage is full; nothing was stored, retry later",
            retryable=True,
            headers=headers,
        )
    return ApiError(
        503,
        "storage_unavailable",
        "the service's storage is temporarily unavailable; retry later",
        retryable=True,
        headers=headers,
    )


def _storage_retry_after(request: Request) -> int:
    service = getattr(request.app.state, "service", None)
    if service is None:
        return _DEFAULT_STORAGE_RETRY_AFTER_S
    retry_after: int = service.config.retention.storage_retry_after_s
    return retry_after


def _render(request: Request, error: ApiError) -> Response:
    if error.extra:
        body = error_body(
            _TYPES.get(error.status, "api_error"),
            error.code,
            error.message,
            error.retryable,
            request_id_of(request.scope),
        )
        return JSONResponse({**error.extra, **body}, status_code=error.status, headers=error.headers)
    return error_response(
        error.status,
        _TYPES.get(error.status, "api_error"),
        error.code,
        error.message,
        error.retryable,
        request_id_of(request.scope),
        headers=error.headers,
    )


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _render(request, exc)


async def _http_exception(request: Request, exc: Exception) -> Response:
    # Starlette's own 404/405 for unknown routes and methods, in our error shape
    assert isinstance(exc, HTTPException)
    code = {404: "route_not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _render(request, ApiError(exc.status_code, code, str(exc.detail), headers=exc.headers))


async def _storage_failure(request: Request, exc: Exception) -> Response:
    # logged with the traceback for the operator; the agent gets the code and the request id only
    logger.error(
        "storage failure on %s %s [%s]", request.method, request.url.path, request_id_of(request.scope), exc_info=exc
    )
    return _render(request, storage_error(exc, _storage_retry_after(request)))


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Errors raised in a middleware (outside the router's handlers) arrive here: a store failure is still one.
    if isinstance(exc, STORAGE_ERRORS):
        return await _storage_failure(request, exc)
    logger.exception("unhandled error on %s %s [%s]", request.method, request.url.path, request_id_of(request.scope))
    return _render(request, ApiError(500, "internal_error", "internal error; quote the request id", retryable=True))


def exception_handlers() -> dict[type[Exception] | int, object]:
    handlers: dict[type[Exception] | int, object] = {ApiError: _api_error, HTTPException: _http_exception}
    handlers.update(dict.fromkeys(STORAGE_ERRORS, _storage_failure))
    handlers[Exception] = _unexpected
    return handlers
