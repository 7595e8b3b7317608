"""The middleware over real ASGI: every protected endpoint refuses each kind of bad request with the
right status and body, and logs exactly one decision line with the right reason."""

from __future__ import annotations

import base64
import datetime as dt
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from serve_app.auth.keys import KeyMaterial, KeyStore
from serve_app.auth.secret import Secret
from serve_app.auth.settings import AuthSettings
from serve_app.auth.signing import AgentSigner

from .conftest import AuthLog, build_app, client_for, signer_for
from .independent_signer import independent_sign


@dataclass(frozen=True)
class Endpoint:
    method: str
    url: str
    ok_status: int
    ok_body: dict[str, Any]
    content: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


POST_JOB = Endpoint(
    "POST",
    "/api/agent/jobs",
    201,
    {"agent": "render-bot", "body": '{"prompt":"a chair"}'},
    content=b'{"prompt":"a chair"}',
    headers={"Content-Type": "application/json", "Idempotency-Key": "idem-1"},
)
GET_JOB = Endpoint(
    "GET",
    "/api/agent/jobs/job_1?verbose=1",
    200,
    {"agent": "render-bot", "job_id": "job_1", "query": "verbose=1"},
    headers={"Idempotency-Key": "idem-1"},
)
DELETE_JOB = Endpoint(
    "DELETE", "/api/agent/jobs/job_1", 200, {"deleted": "job_1"}, headers={"Idempotency-Key": "idem-1"}
)
ENDPOINTS = [
    pytest.param(POST_JOB, id="POST-jobs"),
    pytest.param(GET_JOB, id="GET-job"),
    pytest.param(DELETE_JOB, id="DELETE-job"),
]

OTHER_METHOD = {"POST": "PUT", "GET": "DELETE", "DELETE": "GET"}


def sign(client: httpx.AsyncClient, signer: AgentSigner, endpoint: Endpoint) -> httpx.Request:
    request = client.build_request(endpoint.method, endpoint.url, content=endpoint.content, headers=endpoint.headers)
    signer.sign(request)
    return request


def rebuild(
    request: httpx.Request,
    *,
    method: str | None = None,
    url: str | None = None,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
) -> httpx.Request:
    """The signed request with one part changed after signing, as an attacker on the path would."""
    new_headers = httpx.Headers(request.headers)
    new_headers.update(headers or {})
    body = request.content if content is None else content
    if content is not None:
        new_headers["Content-Length"] = str(len(body))
    return httpx.Request(method or request.method, url or request.url, headers=new_headers, content=body)


def error(
    code: str, message: str, response: httpx.Response, *, type_: str = "authentication_error", retryable: bool = False
) -> dict[str, Any]:
    return {
        "type": type_,
        "code": code,
        "message": message,
        "retryable": retryable,
        "request_id": response.headers["x-request-id"],
    }


BAD_SIGNATURE = ("bad_signature", "Signature verification failed.")


def raw_scope(request: httpx.Request, *, drop: tuple[str, ...] = (), add: tuple[tuple[bytes, bytes], ...] = ()) -> dict:
    """The ASGI scope of a (signed) httpx request, for tests that drive the body message by message."""
    headers = [(name.lower(), value) for name, value in request.headers.raw if name.lower().decode() not in drop]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.url.path,
        "raw_path": request.url.raw_path.split(b"?", 1)[0],
        "query_string": request.url.query,
        "root_path": "",
        "headers": [*headers, *add],
        "client": ("127.0.0.1", 123),
        "server": ("testserver", 80),
    }


def assert_refused(
    response: httpx.Response,
    auth_log: AuthLog,
    *,
    status: int,
    code: str,
    message: str,
    reason: str,
    type_: str = "authentication_error",
) -> None:
    assert response.status_code == status
    assert response.json() == error(code, message, response, type_=type_)
    lines = auth_log.lines()
    assert [line["reason"] for line in lines] == [reason]
    assert lines[0]["status"] == status
    assert lines[0]["request_id"] == response.headers["x-request-id"]


@pytest.fixture
def app(engine: AsyncEngine, master_key: Secret) -> Any:
    return build_app(engine, master_key)


# -- accepted --------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_middleware_accepts_signed_request(
    endpoint: Endpoint, app: Any, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    async with client_for(app) as client:
        response = await client.send(sign(client, signer_for(agent_key), endpoint))
    assert response.status_code == endpoint.ok_status
    assert response.json() == endpoint.ok_body
    [line] = auth_log.lines()
    assert line["reason"] == "ok" and line["decision"] == "allow"
    assert line["key_id"] == agent_key.info.key_id and line["agent"] == "render-bot"
    assert line["client_ip"] == "127.0.0.1" and line["method"] == endpoint.method
    assert line["status"] == endpoint.ok_status


async def test_middleware_accepts_signer_as_httpx_auth_and_replays_body_unchanged(
    app: Any, agent_key: KeyMaterial
) -> None:
    payload = {"prompt": "une chaise \u00e9l\u00e9gante", "n": list(range(500))}
    async with client_for(app, auth=signer_for(agent_key)) as client:
        response = await client.post("/api/agent/jobs", json=payload)
    assert response.status_code == 201
    assert response.json()["body"] == httpx.Request("POST", "http://x", json=payload).content.decode()


async def test_middleware_signs_raw_percent_encoded_path(app: Any, agent_key: KeyMaterial) -> None:
    async with client_for(app, auth=signer_for(agent_key)) as client:
        response = await client.get("/api/agent/jobs/a%20b", params={"q": "x y"})
    assert response.status_code == 200
    assert response.json() == {"agent": "render-bot", "job_id": "a b", "query": "q=x+y"}


async def test_middleware_leaves_public_paths_open(app: Any, auth_log: AuthLog) -> None:
    async with client_for(app) as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert response.headers["x-request-id"]
    assert auth_log.lines() == []


# -- replay, window, keys --------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_middleware_refuses_replayed_request(
    endpoint: Endpoint, app: Any, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    async with client_for(app) as client:
        request = sign(client, signer_for(agent_key), endpoint)
        first = await client.send(request)
        auth_log.clear()
        again = await client.send(rebuild(request))
    assert first.status_code == endpoint.ok_status
    assert_refused(
        again,
        auth_log,
        status=401,
        code="replay",
        reason="replay",
        message="This nonce was already used; sign every request with a fresh nonce.",
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_middleware_refuses_expired_request(
    endpoint: Endpoint, app: Any, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    signer = signer_for(agent_key, clock=lambda: time.time() - 400)
    async with client_for(app) as client:
        response = await client.send(sign(client, signer, endpoint))
    assert_refused(
        response,
        auth_log,
        status=401,
        code="expired",
        reason="expired",
        message="Signature has expired; sign each request just before sending it.",
    )


async def test_middleware_refuses_request_past_its_expires(app: Any, agent_key: KeyMaterial, auth_log: AuthLog) -> None:
    signer = signer_for(agent_key, clock=lambda: time.time() - 100, lifetime_s=60)
    async with client_for(app) as client:
        response = await client.send(sign(client, signer, POST_JOB))
    assert_refused(
        response,
        auth_log,
        status=401,
        code="expired",
        reason="expired",
        message="Signature has expired; sign each request just before sending it.",
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_middleware_refuses_future_dated_request(
    endpoint: Endpoint, app: Any, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    signer = signer_for(agent_key, clock=lambda: time.time() + 120)
    async with client_for(app) as client:
        response = await client.send(sign(client, signer, endpoint))
    assert_refused(
        response,
        auth_log,
        status=401,
        code="clock_skew",
        reason="clock_skew",
        message="Signature is dated in the future; check the agent's clock.",
    )


async def test_middleware_accepts_created_within_future_skew(app: Any, agent_key: KeyMaterial) -> None:
    signer = signer_for(agent_key, clock=lambda: time.time() + 45)
    async with client_for(app) as client:
        response = await client.send(sign(client, signer, GET_JOB))
    assert response.status_code == 200


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_middleware_refuses_unknown_key_like_bad_signature(
    endpoint: Endpoint, app: Any, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    signer = AgentSigner("ak_live_00000000000000000000", agent_key.secret_b64())
    async with client_for(app) as client:
        response = await client.send(sign(client, signer, endpoint))
    assert_refused(
        response, auth_log, status=401, code=BAD_SIGNATURE[0], message=BAD_SIGNATURE[1], reason="unknown_key"
    )
    assert auth_log.lines()[0]["key_id"] == "ak_live_00000000000000000000"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_middleware_refuses_revoked_key_like_bad_signature(
    endpoint: Endpoint, app: Any, key_store: KeyStore, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    await key_store.revoke(agent_key.info.key_id)
    async with client_for(app) as client:
        response = await client.send(sign(client, signer_for(agent_key), endpoint))
    assert_refused(
        response, auth_log, status=401, code=BAD_SIGNATURE[0], message=BAD_SIGNATURE[1], reason="revoked_key"
    )
    assert auth_log.lines()[0]["agent"] == "render-bot"


async def test_middleware_refuses_expired_key_like_bad_signature(
    engine: AsyncEngine, master_key: Secret, app: Any, auth_log: AuthLog
) -> None:
    yesterday = KeyStore(engine, master_key, clock=lambda: time.time() - 86400)
    material = await yesterday.create("render-bot", scopes=["jobs:read"], expires_in=dt.timedelta(hours=1))
    async with client_for(app) as client:
        response = await client.send(sign(client, signer_for(material), GET_JOB))
    assert_refused(
        response, auth_log, status=401, code=BAD_SIGNATURE[0], message=BAD_SIGNATURE[1], reason="expired_key"
    )


# -- client addresses ------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_middleware_refuses_ip_outside_key_cidrs(
    endpoint: Endpoint, app: Any, key_store: KeyStore, auth_log: AuthLog
) -> None:
    material = await key_store.create("render-bot", scopes=["jobs:read", "jobs:write"], cidrs=["10.0.0.0/8"])
    async with client_for(app, ip="203.0.113.9") as client:
        response = await client.send(sign(client, signer_for(material), endpoint))
    assert_refused(
        response,
        auth_log,
        status=403,
        code="ip_denied",
        reason="ip_denied",
        type_="permission_error",
        message="Requests from this address are not allowed.",
    )
    assert auth_log.lines()[0]["client_ip"] == "203.0.113.9"
    assert auth_log.lines()[0]["key_id"] == material.info.key_id


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_middleware_refuses_ip_outside_global_allowlist(
    endpoint: Endpoint, engine: AsyncEngine, master_key: Secret, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    app = build_app(engine, master_key, AuthSettings(global_allowlist=["10.0.0.0/8"]))
    async with client_for(app, ip="203.0.113.9") as client:
        response = await client.send(sign(client, signer_for(agent_key), endpoint))
    assert_refused(
        response,
        auth_log,
        status=403,
        code="ip_denied",
        reason="ip_denied",
        type_="permission_error",
        message="Requests from this address are not allowed.",
    )


async def test_middleware_normalizes_ipv4_mapped_ipv6_client(app: Any, key_store: KeyStore, auth_log: AuthLog) -> None:
    material = await key_store.create("render-bot", scopes=["jobs:write"], cidrs=["10.0.0.0/8"])
    async with client_for(app, ip="::ffff:10.1.2.3") as client:
        response = await client.send(sign(client, signer_for(material), POST_JOB))
    assert response.status_code == 201
    assert auth_log.lines()[0]["client_ip"] == "10.1.2.3"


async def test_middleware_takes_client_from_forwarded_for_only_behind_trusted_proxy(
    engine: AsyncEngine, master_key: Secret, key_store: KeyStore, auth_log: AuthLog
) -> None:
    material = await key_store.create("render-bot", scopes=["jobs:write"], cidrs=["203.0.113.0/24"])
    app = build_app(engine, master_key, AuthSettings(trusted_proxies=["10.0.0.0/8"]))
    # The client's own claim (left) is ignored; the right-most hop not a trusted proxy is the client.
    forwarded = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7, 10.0.0.2"}
    async with client_for(app, ip="10.0.0.1") as via_proxy, client_for(app, ip="198.51.100.1") as direct:
        behind_proxy = await via_proxy.send(rebuild(sign(via_proxy, signer_for(material), POST_JOB), headers=forwarded))
        spoofed = await direct.send(
            rebuild(sign(direct, signer_for(material), POST_JOB), headers={"X-Forwarded-For": "203.0.113.7"})
        )
    assert behind_proxy.status_code == 201
    assert spoofed.status_code == 403
    assert [(line["client_ip"], line["reason"]) for line in auth_log.lines()] == [
        ("203.0.113.7", "ok"),
        ("198.51.100.1", "ip_denied"),
    ]


# -- tampering after signing -----------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_middleware_refuses_tampered_method(
    endpoint: Endpoint, app: Any, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    async with client_for(app) as client:
        request = sign(client, signer_for(agent_key), endpoint)
        response = await client.send(rebuild(request, method=OTHER_METHOD[endpoint.method]))
    assert_refused(
        response, auth_log, status=401, code=BAD_SIGNATURE[0], message=BAD_SIGNATURE[1], reason="bad_signature"
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_middleware_refuses_tampered_path(
    endpoint: Endpoint, app: Any, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    async with client_for(app) as client:
        request = sign(client, signer_for(agent_key), endpoint)
        url = str(request.url).replace("/api/agent/jobs", "/api/agent/jobz")
        response = await client.send(rebuild(request, url=url))
    assert_refused(
        response, auth_log, status=401, code=BAD_SIGNATURE[0], message=BAD_SIGNATURE[1], reason="bad_signature"
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_middleware_refuses_tampered_query(
    endpoint: Endpoint, app: Any, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    async with client_for(app) as client:
        request = sign(client, signer_for(agent_key), endpoint)
        url = str(request.url) + ("&" if request.url.query else "?") + "admin=1"
        response = await client.send(rebuild(request, url=url))
    assert_refused(
        response, auth_log, status=401, code=BAD_SIGNATURE[0], message=BAD_SIGNATURE[1], reason="bad_signature"
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_middleware_refuses_tampered_idempotency_key(
    endpoint: Endpoint, app: Any, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    async with client_for(app) as client:
        request = sign(client, signer_for(agent_key), endpoint)
        response = await client.send(rebuild(request, headers={"Idempotency-Key": "idem-2"}))
    assert_refused(
        response, auth_log, status=401, code=BAD_SIGNATURE[0], message=BAD_SIGNATURE[1], reason="bad_signature"
    )


async def test_middleware_refuses_tampered_content_type(app: Any, agent_key: KeyMaterial, auth_log: AuthLog) -> None:
    async with client_for(app) as client:
        request = sign(client, signer_for(agent_key), POST_JOB)
        response = await client.send(rebuild(request, headers={"Content-Type": "text/plain"}))
    assert_refused(
        response, auth_log, status=401, code=BAD_SIGNATURE[0], message=BAD_SIGNATURE[1], reason="bad_signature"
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_middleware_refuses_content_type_added_after_signing(
    endpoint: Endpoint, app: Any, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    headers = {name: value for name, value in endpoint.headers.items() if name != "Content-Type"}
    async with client_for(app) as client:
        request = client.build_request(endpoint.method, endpoint.url, content=endpoint.content, headers=headers)
        signer_for(agent_key).sign(request)
        response = await client.send(rebuild(request, headers={"Content-Type": "text/plain"}))
    assert_refused(
        response,
        auth_log,
        status=400,
        code="bad_format",
        reason="bad_format",
        type_="invalid_request_error",
        message="The signature must also cover ['content-type'].",
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_middleware_refuses_tampered_body(
    endpoint: Endpoint, app: Any, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    async with client_for(app) as client:
        request = sign(client, signer_for(agent_key), endpoint)
        response = await client.send(rebuild(request, content=b'{"prompt":"a throne"}'))
    assert_refused(
        response,
        auth_log,
        status=401,
        code="digest_mismatch",
        reason="digest_mismatch",
        message="Content-Digest does not match the request body.",
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_middleware_refuses_tampered_body_with_recomputed_digest(
    endpoint: Endpoint, app: Any, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    from http_message_signatures import ContentDigest

    body = b'{"prompt":"a throne"}'
    async with client_for(app) as client:
        request = sign(client, signer_for(agent_key), endpoint)
        response = await client.send(
            rebuild(request, content=body, headers={"Content-Digest": ContentDigest.create(body)})
        )
    assert_refused(
        response, auth_log, status=401, code=BAD_SIGNATURE[0], message=BAD_SIGNATURE[1], reason="bad_signature"
    )


# -- signature format --------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_middleware_refuses_missing_signature(endpoint: Endpoint, app: Any, auth_log: AuthLog) -> None:
    async with client_for(app) as client:
        response = await client.request(
            endpoint.method, endpoint.url, content=endpoint.content, headers=endpoint.headers
        )
    assert_refused(
        response,
        auth_log,
        status=401,
        code="signature_required",
        reason="bad_format",
        message="This endpoint requires an RFC 9421 signature (profile agent-api-v1).",
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_middleware_refuses_extra_signature(
    endpoint: Endpoint, app: Any, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    async with client_for(app) as client:
        request = sign(client, signer_for(agent_key), endpoint)
        second_input = request.headers["Signature-Input"].replace("sig1=", "sig2=")
        second_signature = request.headers["Signature"].replace("sig1=", "sig2=")
        response = await client.send(
            rebuild(
                request,
                headers={
                    "Signature-Input": f"{request.headers['Signature-Input']}, {second_input}",
                    "Signature": f"{request.headers['Signature']}, {second_signature}",
                },
            )
        )
    assert_refused(
        response,
        auth_log,
        status=400,
        code="bad_format",
        reason="bad_format",
        type_="invalid_request_error",
        message="Send exactly one signature: one Signature-Input member and its Signature.",
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_middleware_refuses_wrong_tag(
    endpoint: Endpoint, app: Any, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    async with client_for(app) as client:
        response = await client.send(sign(client, signer_for(agent_key, tag="agent-api-v0"), endpoint))
    assert_refused(
        response,
        auth_log,
        status=400,
        code="bad_format",
        reason="bad_format",
        type_="invalid_request_error",
        message='The signature must carry tag="agent-api-v1".',
    )
    assert auth_log.lines()[0]["key_id"] == agent_key.info.key_id


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        ((";tag=", ';alg="ed25519";tag='), 'Parameter alg must be absent or "hmac-sha256".'),
        (('nonce="', 'nonce="!'), "Parameter nonce must be base64url of 16 random bytes."),
        ((' "content-digest"', ""), "The signature must also cover ['content-digest']."),
        (("created=", "old=1;created="), "Unexpected signature parameters ['old']."),
        ((";expires=", ";expires=9999999999;x-expires="), "Unexpected signature parameters ['x-expires']."),
    ],
    ids=["alg", "nonce", "digest-uncovered", "unknown-param", "second-unknown-param"],
)
async def test_middleware_refuses_malformed_signature_input(
    replace: tuple[str, str], message: str, app: Any, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    async with client_for(app) as client:
        request = sign(client, signer_for(agent_key), POST_JOB)
        tampered = request.headers["Signature-Input"].replace(*replace)
        response = await client.send(rebuild(request, headers={"Signature-Input": tampered}))
    assert_refused(
        response,
        auth_log,
        status=400,
        code="bad_format",
        reason="bad_format",
        type_="invalid_request_error",
        message=message,
    )


async def test_middleware_refuses_missing_content_digest(app: Any, agent_key: KeyMaterial, auth_log: AuthLog) -> None:
    async with client_for(app) as client:
        request = sign(client, signer_for(agent_key), GET_JOB)
        del request.headers["Content-Digest"]
        response = await client.send(request)
    assert_refused(
        response,
        auth_log,
        status=400,
        code="bad_format",
        reason="bad_format",
        type_="invalid_request_error",
        message="Content-Digest (RFC 9530, sha-256) is required, also for empty bodies.",
    )


async def test_middleware_accepts_independent_library_signature(app: Any, agent_key: KeyMaterial) -> None:
    """A signer written directly on http-message-signatures: the library's default label ("pyhms"),
    its own parameter order (created, keyid, alg, expires, ...) and an explicit alg."""
    async with client_for(app) as client:
        request = client.build_request(
            "POST", "/api/agent/jobs", content=b"{}", headers={"Content-Type": "application/json"}
        )
        independent_sign(request, agent_key.info.key_id, agent_key.secret.reveal(), created=int(time.time()))
        assert request.headers["Signature-Input"].startswith('pyhms=("@method"')
        response = await client.send(request)
    assert response.status_code == 201


# -- body, scopes, store -----------------------------------------------------------------------------


async def test_middleware_refuses_body_over_limit_by_content_length(
    engine: AsyncEngine, master_key: Secret, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    app = build_app(engine, master_key, AuthSettings(max_body_bytes=16))
    async with client_for(app) as client:
        response = await client.send(sign(client, signer_for(agent_key), POST_JOB))
    assert_refused(
        response,
        auth_log,
        status=413,
        code="body_too_large",
        reason="body_too_large",
        type_="invalid_request_error",
        message="Request body exceeds 16 bytes.",
    )


async def test_middleware_refuses_streamed_body_over_limit(
    engine: AsyncEngine, master_key: Secret, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    """No Content-Length: the limit is enforced while the chunks arrive (raw ASGI, chunked upload)."""
    app = build_app(engine, master_key, AuthSettings(max_body_bytes=16))
    chunks = [{"type": "http.request", "body": b"x" * 10, "more_body": True}] * 3
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async with client_for(app) as client:
        request = sign(client, signer_for(agent_key), POST_JOB)
    scope = raw_scope(request, drop=("content-length",), add=((b"transfer-encoding", b"chunked"),))
    await app(scope, receive, send)
    assert sent[0]["status"] == 413
    assert auth_log.reasons() == ["body_too_large"]


async def test_middleware_refuses_missing_scope(app: Any, key_store: KeyStore, auth_log: AuthLog) -> None:
    reader = await key_store.create("viewer", scopes=["jobs:read"])
    async with client_for(app) as client:
        allowed = await client.send(sign(client, signer_for(reader), GET_JOB))
        auth_log.clear()
        response = await client.send(sign(client, signer_for(reader), POST_JOB))
    assert allowed.status_code == 200
    assert_refused(
        response,
        auth_log,
        status=403,
        code="scope_denied",
        reason="scope_denied",
        type_="permission_error",
        message="This key lacks the scope 'jobs:write' that this endpoint requires.",
    )


async def test_middleware_exposes_principal_to_handlers(app: Any, agent_key: KeyMaterial) -> None:
    async with client_for(app, auth=signer_for(agent_key)) as client:
        response = await client.get("/api/agent/whoami")
    assert response.json() == {"key_id": agent_key.info.key_id, "scopes": ["jobs:read", "jobs:write"]}


async def test_middleware_fails_closed_when_nonce_store_fails(
    engine: AsyncEngine, app: Any, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    async with engine.begin() as conn:
        await conn.exec_driver_sql("DROP TABLE auth_nonces")
    async with client_for(app) as client:
        response = await client.send(sign(client, signer_for(agent_key), POST_JOB))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json() == error(
        "storage_unavailable",
        "Authentication is temporarily unavailable; retry shortly.",
        response,
        type_="unavailable_error",
        retryable=True,
    )
    [line] = auth_log.lines()
    assert (line["reason"], line["detail"]) == ("store_error", "OperationalError")


# -- failure rate limits ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def test_middleware_backs_off_ip_after_failures(
    engine: AsyncEngine, master_key: Secret, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    clock = Clock()
    settings = AuthSettings.model_validate({"rate_limit": {"max_failures_per_ip": 3, "backoff_base_s": 30}})
    app = build_app(engine, master_key, settings, clock=clock)
    async with client_for(app) as client:
        refused = [await client.get("/api/agent/jobs/job_1") for _ in range(3)]
        auth_log.clear()
        blocked = await client.send(sign(client, signer_for(agent_key), GET_JOB))
        clock.now += 31
        after_backoff = await client.send(sign(client, signer_for(agent_key), GET_JOB))
    assert [response.status_code for response in refused] == [401, 401, 401]
    assert blocked.status_code == 429
    assert blocked.headers["retry-after"] == "30"
    assert blocked.json() == error(
        "rate_limited",
        "Too many failed authentication attempts; retry later.",
        blocked,
        type_="rate_limit_error",
        retryable=True,
    )
    assert after_backoff.status_code == 200
    assert auth_log.reasons() == ["rate_limited", "ok"]


async def test_middleware_never_blocks_key_for_strangers_bad_signatures(
    engine: AsyncEngine, master_key: Secret, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    """The lockout of issue 9: key ids are not secret, so wrong-secret requests from elsewhere block the
    sender, never the key (same status and body for the stranger's unknown-key and bad-HMAC probes)."""
    settings = AuthSettings.model_validate({"rate_limit": {"max_failures_per_ip": 3}})
    app = build_app(engine, master_key, settings)
    impostor = AgentSigner(agent_key.info.key_id, base64.b64encode(bytes(32)).decode())
    async with client_for(app, ip="198.51.100.7") as stranger:
        refused = [(await stranger.send(sign(stranger, impostor, GET_JOB))) for _ in range(3)]
        blocked = await stranger.send(sign(stranger, impostor, GET_JOB))
    auth_log.clear()
    async with client_for(app, ip="192.0.2.10") as agent:
        accepted = [(await agent.send(sign(agent, signer_for(agent_key), GET_JOB))).status_code for _ in range(3)]
    assert [response.status_code for response in refused] == [401, 401, 401]
    assert refused[0].json() == error(*BAD_SIGNATURE, refused[0])
    assert (blocked.status_code, blocked.headers["retry-after"]) == (429, "30")
    assert accepted == [200, 200, 200]
    assert auth_log.reasons() == ["ok", "ok", "ok"]


async def test_middleware_counts_foreign_ip_and_replay_against_the_sender_only(
    engine: AsyncEngine, master_key: Secret, key_store: KeyStore, auth_log: AuthLog
) -> None:
    material = await key_store.create("render-bot", scopes=["jobs:read"], cidrs=["192.0.2.0/24"])
    settings = AuthSettings.model_validate({"rate_limit": {"max_failures_per_ip": 2}})
    app = build_app(engine, master_key, settings)
    async with client_for(app, ip="192.0.2.10") as agent, client_for(app, ip="203.0.113.9") as eavesdropper:
        original = sign(agent, signer_for(material), GET_JOB)
        assert (await agent.send(original)).status_code == 200
        replayed = await eavesdropper.send(rebuild(original))  # a captured request, sent from elsewhere
        foreign = await eavesdropper.send(sign(eavesdropper, signer_for(material), GET_JOB))
        blocked = await eavesdropper.send(sign(eavesdropper, signer_for(material), GET_JOB))
        still_ok = await agent.send(sign(agent, signer_for(material), GET_JOB))
    assert (replayed.status_code, foreign.status_code, blocked.status_code) == (403, 403, 429)
    assert still_ok.status_code == 200
    assert auth_log.reasons() == ["ok", "ip_denied", "ip_denied", "rate_limited", "ok"]


async def test_middleware_does_not_count_successes(
    engine: AsyncEngine, master_key: Secret, agent_key: KeyMaterial
) -> None:
    settings = AuthSettings.model_validate({"rate_limit": {"max_failures_per_ip": 1}})
    app = build_app(engine, master_key, settings)
    async with client_for(app, auth=signer_for(agent_key)) as client:
        statuses = [(await client.get("/api/agent/jobs/job_1")).status_code for _ in range(5)]
    assert statuses == [200] * 5


# -- request ids, logging ---------------------------------------------------------------------------


async def test_middleware_echoes_sane_request_id_on_refusal(app: Any, auth_log: AuthLog) -> None:
    async with client_for(app) as client:
        response = await client.get("/api/agent/jobs/job_1", headers={"X-Request-ID": "agent-run-7:step.3"})
    assert response.headers["x-request-id"] == "agent-run-7:step.3"
    assert response.json()["request_id"] == "agent-run-7:step.3"
    assert auth_log.lines()[0]["request_id"] == "agent-run-7:step.3"


@pytest.mark.parametrize("incoming", ["has space", "x" * 200, "semi;colon", "-leading-dash"])
async def test_middleware_replaces_insane_request_id(incoming: str, app: Any) -> None:
    async with client_for(app) as client:
        response = await client.get("/healthz", headers={"X-Request-ID": incoming})
    assert response.headers["x-request-id"] != incoming
    assert str(uuid.UUID(response.headers["x-request-id"])) == response.headers["x-request-id"]


async def test_middleware_never_logs_secret_or_signature(
    app: Any, agent_key: KeyMaterial, caplog: pytest.LogCaptureFixture, auth_log: AuthLog
) -> None:
    async with client_for(app) as client:
        request = sign(client, signer_for(agent_key), POST_JOB)
        await client.send(request)
        await client.send(rebuild(request))  # replay: a refusal with a valid signature
    signature = request.headers["Signature"].removeprefix("sig1=:").removesuffix(":")
    assert auth_log.reasons() == ["ok", "replay"]
    assert agent_key.secret_b64() not in caplog.text
    assert signature not in caplog.text
    assert agent_key.secret.reveal().hex() not in caplog.text


# -- deployment shape: configured authority, several replicas, Postgres --------------------------------


async def test_middleware_uses_configured_authority_not_host_header(
    engine: AsyncEngine, master_key: Secret, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    app = build_app(engine, master_key, AuthSettings(authority="api.example.com"))
    async with client_for(app) as client:
        # Signed for the public name and delivered with an internal Host header: accepted.
        public = client.build_request("GET", "https://api.example.com/api/agent/jobs/job_1")
        signer_for(agent_key).sign(public)
        internal = rebuild(
            public, url="http://testserver/api/agent/jobs/job_1", headers={"Host": "ingress.internal:8000"}
        )
        accepted = await client.send(internal)
        # Signed for another host (as the Host header says): refused.
        other = await client.send(sign(client, signer_for(agent_key), GET_JOB))
    assert accepted.status_code == 200
    assert other.status_code == 401
    assert auth_log.reasons() == ["ok", "bad_signature"]


async def test_middleware_replicas_share_replay_protection(
    sqlite_url: str, engine: AsyncEngine, master_key: Secret, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    from serve_app.db import make_engine

    other_engine = make_engine(sqlite_url)  # a second replica: own engine, own connections, same database
    try:
        replica_a, replica_b = build_app(engine, master_key), build_app(other_engine, master_key)
        async with client_for(replica_a) as client_a, client_for(replica_b) as client_b:
            request = sign(client_a, signer_for(agent_key), POST_JOB)
            first = await client_a.send(request)
            again = await client_b.send(rebuild(request))
    finally:
        await other_engine.dispose()
    assert (first.status_code, again.status_code) == (201, 401)
    assert auth_log.reasons() == ["ok", "replay"]


async def test_middleware_on_both_backends_accepts_then_refuses_replay(
    any_engine: AsyncEngine, master_key: Secret, auth_log: AuthLog
) -> None:
    material = await KeyStore(any_engine, master_key).create("render-bot", scopes=["jobs:write"])
    app = build_app(any_engine, master_key)
    async with client_for(app) as client:
        request = sign(client, signer_for(material), POST_JOB)
        first = await client.send(request)
        again = await client.send(rebuild(request))
        tampered = await client.send(rebuild(sign(client, signer_for(material), POST_JOB), method="PUT"))
    assert (first.status_code, again.status_code, tampered.status_code) == (201, 401, 401)
    assert auth_log.reasons() == ["ok", "replay", "bad_signature"]


# -- edges -----------------------------------------------------------------------------------------------


async def test_middleware_refuses_lifetime_over_profile_maximum(
    app: Any, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    async with client_for(app) as client:
        request = client.build_request("GET", "/api/agent/jobs/job_1")
        independent_sign(
            request, agent_key.info.key_id, agent_key.secret.reveal(), created=int(time.time()), lifetime_s=400
        )
        response = await client.send(request)
    assert_refused(
        response,
        auth_log,
        status=400,
        code="bad_format",
        reason="bad_format",
        type_="invalid_request_error",
        message="Parameter expires must be after created and at most 300 s later.",
    )


async def test_middleware_refuses_without_usable_host(app: Any, agent_key: KeyMaterial, auth_log: AuthLog) -> None:
    async with client_for(app) as client:
        response = await client.send(rebuild(sign(client, signer_for(agent_key), GET_JOB), headers={"Host": "a b"}))
    assert_refused(
        response,
        auth_log,
        status=400,
        code="bad_format",
        reason="bad_format",
        type_="invalid_request_error",
        message="A Host header is required.",
    )


async def test_middleware_logs_allowed_request_once_when_handler_fails(
    engine: AsyncEngine, master_key: Secret, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Route

    from serve_app.auth.middleware import auth_middleware

    async def boom(request: Any) -> Any:
        raise RuntimeError("handler bug")

    app = Starlette(
        routes=[Route("/api/agent/boom", boom)], middleware=[auth_middleware(engine, AuthSettings(), master_key)]
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", auth=signer_for(agent_key)
    ) as client:
        response = await client.get("/api/agent/boom")
    assert response.status_code == 500
    assert [(line["reason"], line["status"]) for line in auth_log.lines()] == [("ok", 500)]


async def test_middleware_stays_silent_when_client_disconnects_mid_body(
    app: Any, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async with client_for(app) as client:
        request = sign(client, signer_for(agent_key), POST_JOB)
    await app(raw_scope(request), receive, send)
    assert sent == []
    assert auth_log.lines() == []


async def test_middleware_keeps_refusing_denied_ip_with_403_not_429(
    engine: AsyncEngine, master_key: Secret, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    settings = AuthSettings.model_validate(
        {"global_allowlist": ["10.0.0.0/8"], "rate_limit": {"max_failures_per_ip": 1}}
    )
    app = build_app(engine, master_key, settings)
    async with client_for(app, ip="203.0.113.9") as client:
        statuses = [(await client.send(sign(client, signer_for(agent_key), GET_JOB))).status_code for _ in range(3)]
    assert statuses == [403, 403, 403]
    assert auth_log.reasons() == ["ip_denied"] * 3
