"""Auth through Ray Serve's real HTTP proxy: the client address is the TCP peer whatever X-Forwarded-For
says, a slow body gets 408 after the body deadline and frees its slot, and signed calls from other clients
keep working meanwhile.

Only the ingress is deployed (a stub stands in for the job worker): no model, so it starts in seconds.
Each test speaks from its own loopback address (127.0.0.x), so per-client counters do not mix.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest
from ray import serve

from serve_app.auth.settings import AuthSettings, RateLimitSettings
from serve_app.auth.signing import AgentSigner
from serve_app.config import AppConfig

pytestmark = [pytest.mark.ray, pytest.mark.slow]

APP_NAME = "orfeas-proxy-auth"
BODY_TIMEOUT_S = 8.0
PENDING_PER_IP = 3
FAILURES_PER_IP = 5
WAIT_S = 60.0  # generous bound for anything the loaded test machine must do


@serve.deployment(ray_actor_options={"num_cpus": 0})
class StubWorker:
    def notify(self) -> None:
        """No jobs run here: the tests below submit none that matter."""


@dataclass
class ProxyApp:
    base_url: str
    config: AppConfig
    dev: AgentSigner
    fenced: AgentSigner  # a key whose allowlist is 203.0.113.0/24

    def client(self, source: str, signer: AgentSigner | None = None) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=source)
        return httpx.Client(base_url=self.base_url, auth=signer, transport=transport, timeout=WAIT_S)

    def audit(self) -> list[dict]:
        path = self.config.auth_audit_path
        assert path is not None
        return [json.loads(line) for line in path.read_text().splitlines()]


def _fenced_key(config: AppConfig) -> AgentSigner:
    from serve_app.auth.crypto import load_master_key
    from serve_app.auth.keys import KeyStore
    from serve_app.db import make_engine

    async def create() -> AgentSigner:
        engine = make_engine(config.resolved_database_url)
        try:
            keys = KeyStore(engine, load_master_key(AuthSettings(master_key_file=config.dev_master_key_file)))
            material = await keys.create("fenced-agent", scopes=["jobs:read", "jobs:write"], cidrs=["203.0.113.0/24"])
        finally:
            await engine.dispose()
        return AgentSigner(material.info.key_id, material.secret_b64())

    return asyncio.run(create())


@pytest.fixture(scope="module")
def proxy_app(ray_session: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyApp]:
    from serve_app.ingress import AgentIngress

    auth = AuthSettings(
        body_timeout_s=BODY_TIMEOUT_S,
        max_pending_per_ip=PENDING_PER_IP,
        rate_limit=RateLimitSettings(max_failures_per_ip=FAILURES_PER_IP),
    )
    config = AppConfig(mode="dev", data_dir=tmp_path_factory.mktemp("orfeas-proxy"), auth=auth)
    no_cpu = {"ray_actor_options": {"num_cpus": 0}}
    serve.run(AgentIngress.options(**no_cpu).bind(StubWorker.bind(), config), name=APP_NAME, route_prefix="/")
    try:
        dev = json.loads(config.dev_key_file.read_text())
        yield ProxyApp(ray_session, config, AgentSigner(dev["key_id"], dev["secret"]), _fenced_key(config))
    finally:
        serve.delete(APP_NAME)


def test_proxy_refuses_spoofed_forwarded_for_from_loopback(proxy_app: ProxyApp) -> None:
    with proxy_app.client("127.0.0.4", proxy_app.fenced) as client:
        response = client.get("/api/agent/capabilities", headers={"X-Forwarded-For": "203.0.113.9"})
    assert response.status_code == 403
    body = response.json()
    assert (body["code"], body["message"]) == ("ip_denied", "Requests from this address are not allowed.")
    [line] = [line for line in proxy_app.audit() if line["request_id"] == body["request_id"]]
    assert (line["client_ip"], line["reason"], line["detail"]) == (
        "127.0.0.4",
        "ip_denied",
        "not in the key's CIDR allowlist",
    )


def test_proxy_blocks_the_real_peer_whatever_it_forwards(proxy_app: ProxyApp) -> None:
    impostor = AgentSigner(proxy_app.dev.key_id, "A" * 43 + "=")  # the dev key's id, a wrong secret
    with proxy_app.client("127.0.0.3", impostor) as client:
        statuses = [
            client.get("/api/agent/capabilities", headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code
            for i in range(FAILURES_PER_IP)
        ]
    with proxy_app.client("127.0.0.3", proxy_app.dev) as client:
        blocked = client.get("/api/agent/capabilities", headers={"X-Forwarded-For": "198.51.100.200"})
    with proxy_app.client("127.0.0.5", proxy_app.dev) as client:
        other_peer = client.get("/api/agent/capabilities")
    assert statuses == [401] * FAILURES_PER_IP
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    assert blocked.json()["code"] == "rate_limited"
    assert other_peer.status_code == 200  # the key itself was never blocked


def _slow_post(base_url: str, signer: AgentSigner) -> socket.socket:
    """Headers of a signed 1 MB POST and its first 100 bytes, over a raw socket from 127.0.0.1; the rest
    never comes. The proxy's own timeout is switched off, as any client may."""
    body = b"{" + b" " * 999_998 + b"}"
    request = httpx.Request("POST", f"{base_url}/api/agent/jobs", content=body)
    request.headers["Content-Type"] = "application/json"
    request.headers["X-Request-Timeout-Seconds"] = "0"
    signer.sign(request)
    url = urlsplit(base_url)
    head = [b"POST /api/agent/jobs HTTP/1.1"]
    head += [name + b": " + value for name, value in request.headers.raw]
    sock = socket.create_connection((url.hostname, url.port), timeout=WAIT_S, source_address=("127.0.0.1", 0))
    sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body[:100])
    return sock


def _response_of(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def _until_refused(client: httpx.Client, path: str) -> httpx.Response:
    """POST a small body to ``path`` until it is refused with 429 (the slow bodies reached the replica),
    within WAIT_S. (A bodiless GET takes no pending slot: it is never refused by the cap.)"""
    deadline = time.monotonic() + WAIT_S
    while True:
        response = client.post(path, json={})
        if response.status_code == 429 or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def test_proxy_times_out_slow_bodies_and_keeps_serving_signed_calls(proxy_app: ProxyApp) -> None:
    started = time.monotonic()
    slow = [_slow_post(proxy_app.base_url, proxy_app.dev) for _ in range(PENDING_PER_IP)]
    with proxy_app.client("127.0.0.1", proxy_app.dev) as same_peer:
        # the slow bodies hold every pending slot of 127.0.0.1 ...
        over_cap = _until_refused(same_peer, "/api/agent/jobs")
        bodiless = same_peer.get("/api/agent/capabilities")  # receives nothing: takes no slot
        # ... while another client's signed call goes through
        with proxy_app.client("127.0.0.2", proxy_app.dev) as other:
            meanwhile = other.get("/api/agent/jobs/job_does_not_exist")
        answers = [_response_of(sock) for sock in slow]
        answered_after = time.monotonic() - started
        after = same_peer.get("/api/agent/capabilities")  # the slots were freed
    assert over_cap.status_code == 429 and over_cap.json()["code"] == "too_many_pending"
    assert over_cap.headers["retry-after"] == "1"
    assert bodiless.status_code == 200
    assert meanwhile.status_code == 404
    assert answered_after >= BODY_TIMEOUT_S  # not before the deadline (an upper bound would be timing-flaky)
    message = f"The request body did not arrive within {BODY_TIMEOUT_S:g} s."
    assert [(status, body["code"], body["message"]) for status, body in answers] == [
        (408, "body_timeout", message)
    ] * PENDING_PER_IP
    assert after.status_code == 200
