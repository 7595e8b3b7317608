"""Request ids on every response, the shared error shape, and the principal helpers."""

from __future__ import annotations

import uuid

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from serve_app.auth.errors import error_response
from serve_app.auth.principal import Principal, ScopeDenied, get_principal, require_scope
from serve_app.auth.request_id import RequestIdMiddleware


async def _echo_id(request: Request) -> Response:
    return PlainTextResponse(request.state.request_id, headers={"X-Request-ID": "handler-set"})


async def _fail(request: Request) -> Response:
    return error_response(
        409,
        "conflict_error",
        "duplicate",
        "Already exists.",
        False,
        request.state.request_id,
        headers={"Retry-After": "5"},
    )


def _app() -> RequestIdMiddleware:
    return RequestIdMiddleware(Starlette(routes=[Route("/id", _echo_id), Route("/fail", _fail)]))


async def test_request_id_middleware_sets_state_and_header() -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://t") as client:
        honoured = await client.get("/id", headers={"X-Request-ID": "abc-123"})
        generated = await client.get("/id")
    assert honoured.text == "abc-123"
    assert honoured.headers.get_list("x-request-id") == ["abc-123"]  # the middleware's id replaces the handler's
    assert generated.headers["x-request-id"] == generated.text and str(uuid.UUID(generated.text)) == generated.text


async def test_error_response_has_shape_and_headers() -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://t") as client:
        response = await client.get("/fail", headers={"X-Request-ID": "req-9"})
    assert response.status_code == 409
    assert response.json() == {
        "type": "conflict_error",
        "code": "duplicate",
        "message": "Already exists.",
        "retryable": False,
        "request_id": "req-9",
    }
    assert (response.headers["x-request-id"], response.headers["retry-after"]) == ("req-9", "5")


class _Conn:
    def __init__(self, state: dict[str, object]) -> None:
        self.scope = {"state": state}


def test_require_scope_returns_principal_or_raises() -> None:
    principal = Principal(key_id="ak_1", agent="bot", scopes=frozenset({"jobs:read"}))
    conn = _Conn({"principal": principal})
    assert require_scope(conn, "jobs:read") is principal
    with pytest.raises(ScopeDenied, match="key ak_1 lacks scope 'jobs:write'"):
        require_scope(conn, "jobs:write")


def test_get_principal_fails_closed_without_middleware() -> None:
    with pytest.raises(RuntimeError, match="is AgentAuthMiddleware installed"):
        get_principal(_Conn({}))
