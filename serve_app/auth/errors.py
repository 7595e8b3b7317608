"""The API's JSON error shape, shared by auth and the rest of the app.

Body: ``{"type", "code", "message", "retryable", "request_id"}``; the request id is echoed in the
``X-Request-ID`` header too, so an agent can quote it from either place.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse


def error_body(type: str, code: str, message: str, retryable: bool, request_id: str) -> dict[str, object]:
    return {"type": type, "code": code, "message": message, "retryable": retryable, "request_id": request_id}


def error_response(
    status: int,
    type: str,
    code: str,
    message: str,
    retryable: bool,
    request_id: str,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A JSON error response; ``type`` is the family (e.g. ``authentication_error``), ``code`` the cause.

    The ``X-Request-ID`` header is added by ``RequestIdMiddleware`` (or, behind Ray Serve, by its proxy),
    never here: setting it twice would send it twice.
    """
    return JSONResponse(
        error_body(type, code, message, retryable, request_id), status_code=status, headers=dict(headers or {})
    )
