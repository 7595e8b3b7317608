"""The webhook API through the in-process app (signed requests), and a job's event delivered end to end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from serve_app.webhooks.settings import WebhookSettings
from tests.serve_app.conftest import Api, b64, png_bytes, start_api
from tests.webhooks.helpers import FAST, eventually
from tests.webhooks.receiver import always, receiver

EVENTS = ["job.succeeded", "job.failed"]
URL = "http://127.0.0.1:9/hook"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    api = await start_api(tmp_path, webhooks=WebhookSettings(**FAST, max_endpoints_per_agent=2))
    yield api
    await api.stop()


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code and body["request_id"] and body["retryable"] is False
    return body


async def test_webhooks_create_shows_the_secret_once_then_list_and_delete(api: Api) -> None:
    created = await api.client.post("/api/agent/webhooks", json={"url": URL, "events": EVENTS})
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == {"id", "url", "events", "created_at", "secret"}
    assert body["id"].startswith("wh_") and body["url"] == URL and body["events"] == EVENTS
    assert body["secret"].startswith("whsec_") and len(Webhook(body["secret"])._whsecret) == 32

    listed = (await api.client.get("/api/agent/webhooks")).json()["webhooks"]
    assert [w["id"] for w in listed] == [body["id"]]
    assert "secret" not in listed[0] and body["secret"] not in str(listed)
    assert listed[0]["state"] == "active" and listed[0]["disabled_reason"] is None
    assert listed[0]["delivered_count"] == 0 and listed[0]["last_error"] is None

    # another agent sees none of it
    other = await api.client_for("agent-b")
    assert (await other.get("/api/agent/webhooks")).json() == {"webhooks": []}
    _error(await other.delete(f"/api/agent/webhooks/{body['id']}"), 404, "webhook_not_found")

    assert (await api.client.delete(f"/api/agent/webhooks/{body['id']}")).status_code == 204
    _error(await api.client.delete(f"/api/agent/webhooks/{body['id']}"), 404, "webhook_not_found")
    assert (await api.client.get("/api/agent/webhooks")).json() == {"webhooks": []}


@pytest.mark.parametrize("events", [[], ["job.exploded"], ["job.succeeded", "job.running"], "job.succeeded", None, [1]])
async def test_webhooks_invalid_events(api: Api, events: object) -> None:
    body = _error(
        await api.client.post("/api/agent/webhooks", json={"url": URL, "events": events}), 422, "invalid_events"
    )
    assert "job.succeeded" in body["message"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "never reach"),
        ("http://[::ffff:169.254.169.254]/", "never reach"),
        ("http://2852039166/", "never reach"),
        ("http://10.1.2.3/hook", "not in webhooks.allowed_hosts"),
        ("ftp://127.0.0.1/hook", "scheme must be http or https"),
        ("http://127.0.0.1@10.1.2.3/", "userinfo"),
        ("not a url", "scheme"),
    ],
)
async def test_webhooks_url_not_allowed(api: Api, url: str, reason: str) -> None:
    body = _error(
        await api.client.post("/api/agent/webhooks", json={"url": url, "events": EVENTS}),
        422,
        "webhook_url_not_allowed",
    )
    assert reason in body["message"]


async def test_webhooks_bad_bodies(api: Api) -> None:
    _error(await api.client.post("/api/agent/webhooks", json={"events": EVENTS}), 422, "invalid_webhook")
    _error(
        await api.client.post("/api/agent/webhooks", json={"url": URL, "events": EVENTS, "x": 1}),
        422,
        "invalid_webhook",
    )
    _error(
        await api.client.post("/api/agent/webhooks", json={"url": 5, "events": EVENTS}), 422, "webhook_url_not_allowed"
    )
    _error(await api.client.post("/api/agent/webhooks", json=[URL]), 400, "invalid_json")
    _error(
        await api.client.post("/api/agent/webhooks", content=b"{", headers={"content-type": "application/json"}),
        400,
        "invalid_json",
    )
    _error(await api.client.post("/api/agent/webhooks", content=b"url=x"), 415, "unsupported_content_type")


async def test_webhooks_per_agent_limit(api: Api) -> None:
    for _ in range(2):
        assert (await api.client.post("/api/agent/webhooks", json={"url": URL, "events": EVENTS})).status_code == 201
    _error(
        await api.client.post("/api/agent/webhooks", json={"url": URL, "events": EVENTS}), 409, "webhook_limit_reached"
    )
    # the limit is the agent's own
    other = await api.client_for("agent-b")
    assert (await other.post("/api/agent/webhooks", json={"url": URL, "events": EVENTS})).status_code == 201


async def test_webhooks_scopes(api: Api) -> None:
    reader = await api.client_for("reader", scopes=("jobs:read",))
    assert (await reader.post("/api/agent/webhooks", json={"url": URL, "events": EVENTS})).status_code == 403
    assert (await reader.delete("/api/agent/webhooks/wh_x")).status_code == 403
    assert (await reader.get("/api/agent/webhooks")).status_code == 200
    writer = await api.client_for("writer", scopes=("jobs:write",))
    assert (await writer.get("/api/agent/webhooks")).status_code == 403


async def test_webhooks_job_event_delivered_end_to_end(api: Api) -> None:
    with receiver(always(200)) as target:
        created = (
            await api.client.post("/api/agent/webhooks", json={"url": target.url, "events": ["job.succeeded"]})
        ).json()
        job = (await api.client.post("/api/agent/jobs", json={"image": b64(png_bytes())})).json()
        finished = await api.wait_finished(job["job_id"])
        assert finished["status"] == "succeeded"
        (got,) = await target.wait_for(1)

        async def listed_delivered() -> bool:
            (view,) = (await api.client.get("/api/agent/webhooks")).json()["webhooks"]
            return view["delivered_count"] == 1

        await eventually(listed_delivered)
    event = Webhook(created["secret"]).verify(got.body, got.headers)
    assert event["type"] == "job.succeeded"
    assert event["data"]["job_id"] == job["job_id"] and event["data"]["status"] == "succeeded"
    assert event["data"]["result_urls"] == finished["result_urls"]
