"""The profile's known-answer vector, verified by the server side (middleware + library) at its time."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serve_app.auth.crypto import seal
from serve_app.auth.keys import AgentKeyRow
from serve_app.auth.middleware import auth_middleware
from serve_app.auth.principal import get_principal
from serve_app.auth.request_id import RequestIdMiddleware
from serve_app.auth.secret import Secret
from serve_app.auth.settings import AuthSettings

from .conftest import AuthLog
from .independent_signer import independent_sign
from .test_signing import VECTOR_BODY, VECTOR_DIGEST, VECTOR_INPUT, VECTOR_KEY, VECTOR_SIGNATURE

VECTOR_TIME = 1700000030.0  # within the vector's created..expires


async def _run_tool(request: Request) -> JSONResponse:
    return JSONResponse({"agent": get_principal(request).agent, "body": (await request.body()).decode()})


async def _install_vector_key(engine: AsyncEngine, master_key: Secret) -> None:
    """The vector's key id and secret, sealed exactly as KeyStore seals created keys."""
    async with engine.begin() as conn:
        await conn.execute(
            AgentKeyRow.__table__.insert().values(
                key_id="ak_test_1",
                agent="vector-agent",
                secret_sealed=seal(master_key, Secret(VECTOR_KEY), context=b"ak_test_1"),
                scopes=["tools:run"],
                cidrs=[],
                created_at=dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc),
                expires_at=None,
                revoked_at=None,
            )
        )


def _vector_app(engine: AsyncEngine, master_key: Secret) -> Any:
    settings = AuthSettings(protected_prefix="/v1/", authority="api.example.com")
    return RequestIdMiddleware(
        Starlette(
            routes=[Route("/v1/tools/run", _run_tool, methods=["POST"])],
            middleware=[auth_middleware(engine, settings, master_key, clock=lambda: VECTOR_TIME)],
        )
    )


def _vector_request(client: httpx.AsyncClient, signature: str = VECTOR_SIGNATURE) -> httpx.Request:
    return client.build_request(
        "POST",
        "https://api.example.com/v1/tools/run?dry_run=true",
        content=VECTOR_BODY,
        headers={
            "Content-Type": "application/json",
            "Content-Digest": VECTOR_DIGEST,
            "Signature-Input": VECTOR_INPUT,
            "Signature": signature,
        },
    )


async def test_verifier_accepts_known_answer_vector(engine: AsyncEngine, master_key: Secret, auth_log: AuthLog) -> None:
    await _install_vector_key(engine, master_key)
    transport = httpx.ASGITransport(app=_vector_app(engine, master_key))
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.send(_vector_request(client))
    assert response.status_code == 200
    assert response.json() == {"agent": "vector-agent", "body": VECTOR_BODY.decode()}
    assert auth_log.reasons() == ["ok"]


async def test_verifier_refuses_vector_with_one_bit_flipped(
    engine: AsyncEngine, master_key: Secret, auth_log: AuthLog
) -> None:
    await _install_vector_key(engine, master_key)
    flipped = VECTOR_SIGNATURE.replace("u+/sM3", "u+/sM2")
    transport = httpx.ASGITransport(app=_vector_app(engine, master_key))
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.send(_vector_request(client, flipped))
    assert response.status_code == 401
    assert auth_log.reasons() == ["bad_signature"]


async def test_verifier_accepts_independent_signer_at_vector_time(
    engine: AsyncEngine, master_key: Secret, auth_log: AuthLog
) -> None:
    await _install_vector_key(engine, master_key)
    transport = httpx.ASGITransport(app=_vector_app(engine, master_key))
    async with httpx.AsyncClient(transport=transport) as client:
        request = client.build_request(
            "POST",
            "https://api.example.com/v1/tools/run?dry_run=true",
            content=VECTOR_BODY,
            headers={"Content-Type": "application/json"},
        )
        independent_sign(request, "ak_test_1", VECTOR_KEY, created=int(VECTOR_TIME) - 10)
        response = await client.send(request)
    assert response.status_code == 200
    assert auth_log.reasons() == ["ok"]
