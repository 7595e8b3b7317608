"""What the middleware does before a request is authenticated: header checks before any body byte,
one body deadline, pending caps per client and in total, IPv6 clients counted per /64, and what one
signed call costs the store."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from serve_app.auth.keys import KeyMaterial, KeyStore
from serve_app.auth.secret import Secret
from serve_app.auth.settings import AuthSettings
from serve_app.auth.signing import AgentSigner

from .conftest import AuthLog, build_app, client_for, signer_for
from .test_middleware import error, raw_scope


class Upload:
    """A client driven message by message: ``chunks`` first, then it stalls until ``finish()``."""

    def __init__(self, *chunks: bytes, rest: bytes = b"") -> None:
        self._chunks = list(chunks)
        self._rest = rest
        self.started = asyncio.Event()  # the server asked for the body
        self._finish = asyncio.Event()
        self.sent: list[dict[str, Any]] = []

    def finish(self) -> None:
        self._finish.set()

    async def receive(self) -> dict[str, Any]:
        self.started.set()
        if self._chunks:
            return {"type": "http.request", "body": self._chunks.pop(0), "more_body": True}
        await self._finish.wait()
        return {"type": "http.request", "body": self._rest, "more_body": False}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return self.sent[0]["status"]

    def json(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body"))


def signed_post(signer: AgentSigner, ip: str = "127.0.0.1", body: bytes = b'{"prompt":"a chair"}') -> dict:
    """The scope of a signed POST /api/agent/jobs from ``ip``; its body comes from an :class:`Upload`."""
    headers = {"Content-Type": "application/json"}
    request = httpx.Request("POST", "http://testserver/api/agent/jobs", content=body, headers=headers)
    signer.sign(request)
    scope = raw_scope(request)
    scope["client"] = (ip, 123)
    return scope


@pytest.fixture
def slow_settings() -> AuthSettings:
    return AuthSettings(body_timeout_s=600, max_pending_per_ip=2, max_pending_total=3)


# -- headers before the body ---------------------------------------------------------------------------


async def test_preauth_refuses_bad_headers_without_reading_the_body(
    engine: AsyncEngine, master_key: Secret, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    app = build_app(engine, master_key)
    scope = signed_post(signer_for(agent_key))
    scope["headers"] = [(name, value.replace(b"agent-api-v1", b"agent-api-v0")) for name, value in scope["headers"]]
    upload = Upload()
    await app(scope, upload.receive, upload.send)
    assert upload.status == 400
    assert not upload.started.is_set()
    assert auth_log.reasons() == ["bad_format"]


async def test_preauth_refuses_declared_length_over_limit_without_reading(
    engine: AsyncEngine, master_key: Secret, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    app = build_app(engine, master_key, AuthSettings(max_body_bytes=8))
    upload = Upload()
    await app(signed_post(signer_for(agent_key)), upload.receive, upload.send)
    assert (upload.status, upload.json()["code"]) == (413, "body_too_large")
    assert not upload.started.is_set()


async def test_preauth_unknown_key_answers_exactly_like_bad_hmac_after_the_body(
    engine: AsyncEngine, master_key: Secret, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    """Same status, same body (but the request id), and both wait for the body: whether the server reads
    it must not tell a prober that a key id exists."""
    app = build_app(engine, master_key)
    wrong_secret = base64.b64encode(bytes(32)).decode()
    answers = []
    for signer in (AgentSigner(agent_key.info.key_id, wrong_secret), AgentSigner("ak_live_0000", wrong_secret)):
        upload = Upload(rest=b"{}")
        task = asyncio.create_task(app(signed_post(signer, body=b"{}"), upload.receive, upload.send))
        await upload.started.wait()  # the server wants the body before it answers
        assert upload.sent == []
        upload.finish()
        await task
        answers.append((upload.status, {**upload.json(), "request_id": "(differs)"}))
    bad_signature = {
        "type": "authentication_error",
        "code": "bad_signature",
        "message": "Signature verification failed.",
        "retryable": False,
        "request_id": "(differs)",
    }
    assert answers == [(401, bad_signature), (401, bad_signature)]
    assert auth_log.reasons() == ["bad_signature", "unknown_key"]


# -- the body deadline ---------------------------------------------------------------------------------


async def test_preauth_times_out_a_slow_body_with_408_and_frees_the_slot(
    engine: AsyncEngine, master_key: Secret, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    app = build_app(engine, master_key, AuthSettings(body_timeout_s=0.2, max_pending_per_ip=1))
    upload = Upload(b'{"pro')  # then nothing, ever
    await app(signed_post(signer_for(agent_key)), upload.receive, upload.send)
    assert upload.status == 408
    assert upload.json() == {
        "type": "invalid_request_error",
        "code": "body_timeout",
        "message": "The request body did not arrive within 0.2 s.",
        "retryable": False,
        "request_id": upload.json()["request_id"],
    }
    async with client_for(app, auth=signer_for(agent_key)) as client:  # the one slot is free again
        assert (await client.post("/api/agent/jobs", content=b"{}")).status_code == 201
    assert auth_log.reasons() == ["body_timeout", "ok"]


async def test_preauth_replays_a_chunked_body_unchanged_to_the_app(
    engine: AsyncEngine, master_key: Secret, agent_key: KeyMaterial
) -> None:
    body = b'{"prompt":"a chair, in three chunks"}'
    app = build_app(engine, master_key)
    scope = signed_post(signer_for(agent_key), body=body)
    upload = Upload(body[:5], body[5:20], rest=body[20:])
    upload.finish()
    await app(scope, upload.receive, upload.send)
    assert upload.status == 201
    assert upload.json() == {"agent": "render-bot", "body": body.decode()}


# -- pending caps ----------------------------------------------------------------------------------------


async def _stalled(app: Any, agent_key: KeyMaterial, ip: str) -> tuple[Upload, asyncio.Task[None]]:
    upload = Upload(b"{", rest=b'"prompt":"a chair"}')
    task = asyncio.create_task(app(signed_post(signer_for(agent_key), ip), upload.receive, upload.send))
    await upload.started.wait()
    return upload, task


async def test_preauth_caps_pending_requests_per_client(
    engine: AsyncEngine, master_key: Secret, agent_key: KeyMaterial, slow_settings: AuthSettings, auth_log: AuthLog
) -> None:
    app = build_app(engine, master_key, slow_settings)
    stalled = [await _stalled(app, agent_key, "192.0.2.1") for _ in range(2)]
    async with (
        client_for(app, ip="192.0.2.1", auth=signer_for(agent_key)) as same,
        client_for(app, ip="192.0.2.2", auth=signer_for(agent_key)) as other,
    ):
        refused = await same.post("/api/agent/jobs", content=b"{}")
        accepted = await other.post("/api/agent/jobs", content=b"{}")
        # a request that declares no body receives nothing, so it takes no slot (a GET behind the cap passes)
        bodiless = await same.get("/api/agent/jobs/job_1")
    for upload, task in stalled:
        upload.finish()
        await task
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json() == error(
        "too_many_pending",
        "Too many requests from this address are being authenticated at once; retry shortly.",
        refused,
        type_="rate_limit_error",
        retryable=True,
    )
    assert (accepted.status_code, bodiless.status_code) == (201, 200)
    assert [upload.status for upload, _ in stalled] == [201, 201]
    assert sorted(auth_log.reasons()) == ["ok", "ok", "ok", "ok", "too_many_pending"]


async def test_preauth_caps_pending_requests_in_total(
    engine: AsyncEngine, master_key: Secret, agent_key: KeyMaterial, slow_settings: AuthSettings
) -> None:
    app = build_app(engine, master_key, slow_settings)
    stalled = [await _stalled(app, agent_key, f"192.0.2.{i}") for i in range(3)]
    async with client_for(app, ip="192.0.2.9", auth=signer_for(agent_key)) as client:
        refused = await client.post("/api/agent/jobs", content=b"{}")
    for upload, task in stalled:
        upload.finish()
        await task
    async with client_for(app, ip="192.0.2.9", auth=signer_for(agent_key)) as client:
        later = await client.get("/api/agent/jobs/job_1")
    assert (refused.status_code, refused.headers["retry-after"]) == (503, "1")
    assert refused.json() == error(
        "auth_busy",
        "Too many requests are being authenticated at once; retry shortly.",
        refused,
        type_="unavailable_error",
        retryable=True,
    )
    assert later.status_code == 200


async def test_preauth_pending_caps_do_not_count_as_failures(
    engine: AsyncEngine, master_key: Secret, agent_key: KeyMaterial
) -> None:
    settings = AuthSettings.model_validate({"max_pending_per_ip": 1, "rate_limit": {"max_failures_per_ip": 1}})
    app = build_app(engine, master_key, settings)
    upload, task = await _stalled(app, agent_key, "127.0.0.1")
    async with client_for(app, auth=signer_for(agent_key)) as client:
        refused = [(await client.post("/api/agent/jobs", content=b"{}")).status_code for _ in range(3)]
        upload.finish()
        await task
        after = await client.get("/api/agent/jobs/job_1")
    assert refused == [429, 429, 429]
    assert after.status_code == 200


# -- IPv6 clients per /64 --------------------------------------------------------------------------------


async def test_preauth_counts_ipv6_failures_per_64(
    engine: AsyncEngine, master_key: Secret, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    settings = AuthSettings.model_validate({"rate_limit": {"max_failures_per_ip": 2}})
    app = build_app(engine, master_key, settings)
    for ip in ("2001:db8:0:1::1", "2001:db8:0:1::2"):
        async with client_for(app, ip=ip) as client:
            assert (await client.get("/api/agent/jobs/job_1")).status_code == 401
    async with (
        client_for(app, ip="2001:db8:0:1:ffff::3", auth=signer_for(agent_key)) as same_64,
        client_for(app, ip="2001:db8:0:2::1", auth=signer_for(agent_key)) as next_64,
    ):
        blocked = await same_64.get("/api/agent/jobs/job_1")
        allowed = await next_64.get("/api/agent/jobs/job_1")
    assert blocked.status_code == 429
    assert allowed.status_code == 200
    assert [line["client_ip"] for line in auth_log.lines()][-2:] == ["2001:db8:0:1:ffff::3", "2001:db8:0:2::1"]


async def test_preauth_caps_ipv6_pending_per_64(
    engine: AsyncEngine, master_key: Secret, agent_key: KeyMaterial, slow_settings: AuthSettings
) -> None:
    app = build_app(engine, master_key, slow_settings)
    stalled = [await _stalled(app, agent_key, f"2001:db8::{i}") for i in (1, 2)]
    async with client_for(app, ip="2001:db8::3", auth=signer_for(agent_key)) as client:
        refused = await client.post("/api/agent/jobs", content=b"{}")
    for upload, task in stalled:
        upload.finish()
        await task
    assert refused.status_code == 429


# -- store round trips -----------------------------------------------------------------------------------


class StoreTraffic:
    """SQL statements and transactions an engine runs (``before_cursor_execute`` / ``begin`` events)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.statements: list[str] = []
        self.transactions = 0
        event.listen(engine.sync_engine, "before_cursor_execute", self._statement)
        event.listen(engine.sync_engine, "begin", self._begin)

    def _statement(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement.split()[0].upper())

    def _begin(self, conn: Any) -> None:
        self.transactions += 1

    def reset(self) -> None:
        self.statements.clear()
        self.transactions = 0


async def test_preauth_signed_call_costs_one_store_statement_once_the_key_is_cached(
    any_engine: AsyncEngine, master_key: Secret, auth_log: AuthLog
) -> None:
    material = await KeyStore(any_engine, master_key).create("render-bot", scopes=["jobs:read"])
    app = build_app(any_engine, master_key)
    traffic = StoreTraffic(any_engine)
    async with client_for(app, auth=signer_for(material)) as client:
        first = await client.get("/api/agent/jobs/job_1")  # looks the key up (and purges, once per minute)
        traffic.reset()
        warm = [(await client.get("/api/agent/jobs/job_1")).status_code for _ in range(3)]
        per_call = (list(traffic.statements), traffic.transactions)
    assert first.status_code == 200 and warm == [200, 200, 200]
    # per call: one statement, inserting the nonce and returning the client's block
    assert per_call == (["INSERT"] * 3, 3)


async def test_preauth_cold_key_costs_one_more_query(
    engine: AsyncEngine, master_key: Secret, agent_key: KeyMaterial
) -> None:
    app = build_app(engine, master_key, AuthSettings(key_cache_ttl_s=0))
    async with client_for(app, auth=signer_for(agent_key)) as client:
        await client.get("/api/agent/jobs/job_1")
        traffic = StoreTraffic(engine)
        assert (await client.get("/api/agent/jobs/job_1")).status_code == 200
    assert (traffic.statements, traffic.transactions) == (["SELECT", "INSERT"], 2)


async def test_preauth_wrong_digest_for_a_real_key_answers_like_a_made_up_key(
    engine: AsyncEngine, master_key: Secret, agent_key: KeyMaterial, auth_log: AuthLog
) -> None:
    """Without the secret, a mismatching Content-Digest must not reveal that the key exists: the HMAC is
    checked first, so both get bad_signature."""
    app = build_app(engine, master_key)
    wrong_secret = base64.b64encode(bytes(32)).decode()
    statuses = []
    for signer in (AgentSigner(agent_key.info.key_id, wrong_secret), AgentSigner("ak_live_0000", wrong_secret)):
        scope = signed_post(signer, body=b"{}")
        upload = Upload(rest=b'{"other":"body"}')
        upload.finish()
        await app(scope, upload.receive, upload.send)
        statuses.append((upload.status, upload.json()["code"]))
    assert statuses == [(401, "bad_signature"), (401, "bad_signature")]
    assert auth_log.reasons() == ["bad_signature", "unknown_key"]


async def test_preauth_does_not_receive_a_body_that_http_framing_rules_out(
    engine: AsyncEngine, master_key: Secret, agent_key: KeyMaterial
) -> None:
    # behind Serve's proxy every receive() is a call to the proxy actor: a GET must not make one
    app = build_app(engine, master_key)
    request = httpx.Request("GET", "http://testserver/api/agent/jobs/job_1")
    signer_for(agent_key).sign(request)
    scope = raw_scope(request)
    received: list[Any] = []

    async def receive() -> Any:
        received.append(1)
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == 200 and received == []
