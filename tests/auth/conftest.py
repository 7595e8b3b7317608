"""Fixtures for the auth tests: a real database, a real key store, and a small Starlette app
protected by the real middleware, reached over in-process ASGI with httpx."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from serve_app.auth.keys import KeyMaterial, KeyStore
from serve_app.auth.middleware import auth_middleware
from serve_app.auth.principal import get_principal, require_scope
from serve_app.auth.request_id import RequestIdMiddleware
from serve_app.auth.secret import Secret
from serve_app.auth.settings import AuthSettings
from serve_app.auth.signing import AgentSigner
from tests.conftest import engine_with_schema


async def _create_job(request: Request) -> JSONResponse:
    principal = require_scope(request, "jobs:write")
    body = await request.body()
    return JSONResponse({"agent": principal.agent, "body": body.decode()}, status_code=201)


async def _get_job(request: Request) -> JSONResponse:
    principal = require_scope(request, "jobs:read")
    return JSONResponse({"agent": principal.agent, "job_id": request.path_params["job_id"], "query": request.url.query})


async def _delete_job(request: Request) -> JSONResponse:
    require_scope(request, "jobs:write")
    return JSONResponse({"deleted": request.path_params["job_id"]})


async def _whoami(request: Request) -> JSONResponse:
    principal = get_principal(request)
    return JSONResponse({"key_id": principal.key_id, "scopes": sorted(principal.scopes)})


async def _healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def build_app(
    engine: AsyncEngine,
    master_key: Secret,
    settings: AuthSettings | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> ASGIApp:
    """The mounting the ingress uses: request ids outermost, auth inside the Starlette app."""
    routes = [
        Route("/api/agent/jobs", _create_job, methods=["POST"]),
        Route("/api/agent/jobs/{job_id}", _get_job, methods=["GET"]),
        Route("/api/agent/jobs/{job_id}", _delete_job, methods=["DELETE"]),
        Route("/api/agent/whoami", _whoami, methods=["GET"]),
        Route("/healthz", _healthz, methods=["GET"]),
    ]
    middleware = [auth_middleware(engine, settings or AuthSettings(), master_key, clock=clock)]
    return RequestIdMiddleware(Starlette(routes=routes, middleware=middleware))


def client_for(app: ASGIApp, ip: str = "127.0.0.1", **kwargs: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 123))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver", **kwargs)


def signer_for(material: KeyMaterial, **kwargs: Any) -> AgentSigner:
    return AgentSigner(material.info.key_id, material.secret_b64(), **kwargs)


class AuthLog:
    """The ``orfeas.auth`` decision lines captured by caplog, as parsed dictionaries."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self._caplog = caplog

    def lines(self) -> list[dict[str, Any]]:
        return [record.auth for record in self._caplog.records if record.name == "orfeas.auth"]  # type: ignore[attr-defined]

    def reasons(self) -> list[str]:
        return [line["reason"] for line in self.lines()]

    def clear(self) -> None:
        self._caplog.clear()


@pytest.fixture
def auth_log(caplog: pytest.LogCaptureFixture) -> AuthLog:
    caplog.set_level(logging.INFO, logger="orfeas.auth")
    return AuthLog(caplog)


@pytest.fixture
async def engine(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    async with engine_with_schema(sqlite_url) as engine:
        yield engine


@pytest.fixture
def master_key() -> Secret:
    return Secret(os.urandom(32))


@pytest.fixture
def key_store(engine: AsyncEngine, master_key: Secret) -> KeyStore:
    return KeyStore(engine, master_key)


@pytest.fixture
async def agent_key(key_store: KeyStore) -> KeyMaterial:
    return await key_store.create("render-bot", scopes=["jobs:read", "jobs:write"])
