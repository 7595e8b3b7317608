"""API errors: one exception type for handlers, rendered as the shared JSON error body.

Handlers raise :class:`ApiError` (validation turns every ``ValueError`` into one, with a 4xx status) and never build
error responses by hand; the exception handlers installed by :func:`exception_handlers` answer with
``{"type", "code", "message", "retryable", "request_id"}`` and the ``X-Request-ID`` header.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from serve_app.auth.errors import error_response
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
    429: "rate_limit_error",
    503: "unavailable_error",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retryable = retryable
        self.headers = dict(headers or {})


def not_found(what: str, identifier: str) -> ApiError:
    return ApiError(404, f"{what}_not_found", f"no {what} {identifier!r} for this agent")


def _render(request: Request, error: ApiError) -> Response:
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


async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return _render(request, ApiError(500, "internal_error", "internal error; quote the request id", retryable=True))


def exception_handlers() -> dict[type[Exception] | int, object]:
    return {ApiError: _api_error, HTTPException: _http_exception, Exception: _unexpected}
