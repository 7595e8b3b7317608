"""Per-agent quotas through the agent API in-process: real service, auth and SQLite; no job worker runs, so
jobs stay queued and streams stay open until a test cancels their job."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from serve_app.dev_setup import DEV_AGENT
from serve_app.quota_store import SlotKind, StreamSlots
from serve_app.quotas import AgentQuota, Limits, QuotaSettings, ratelimit_headers

from .conftest import Api, b64, png_bytes, start_api

JOB = {"image": b64(png_bytes()), "seed": 3}
QUOTAS = QuotaSettings(
    max_queued_jobs=2,
    max_event_streams=2,
    max_long_polls=2,
    retry_after_s=7,
    agents={"bulk-agent": AgentQuota(max_queued_jobs=5), "no-streams": AgentQuota(max_event_streams=0)},
)


@pytest.fixture
async def quota_api(tmp_path: Path) -> AsyncIterator[Api]:
    api = await start_api(tmp_path, dispatcher=False, quotas=QUOTAS)
    yield api
    await api.stop()


def _slots(api: Api) -> StreamSlots:
    return StreamSlots(api.service.engine, lease_s=QUOTAS.slot_lease_s)


async def _wait_live(api: Api, kind: SlotKind, count: int, agent: str = DEV_AGENT) -> None:
    """Until the agent holds ``count`` live slots of ``kind`` (event-driven: generous deadline)."""
    slots = _slots(api)
    deadline = time.monotonic() + 30
    while await slots.live(agent, kind) != count:
        assert time.monotonic() < deadline, f"{kind} slots never reached {count}"
        await asyncio.sleep(0.02)


def _refusal(response: httpx.Response, code: str) -> dict:
    body = response.json()
    assert response.status_code == 429, response.text
    assert body == {
        "type": "rate_limit_error",
        "code": code,
        "message": body["message"],
        "retryable": True,
        "request_id": response.headers["x-request-id"],
    }
    return body


# ---- settings and headers -------------------------------------------------------------------------------


def test_quota_settings_override_sets_only_the_limits_it_names() -> None:
    assert QUOTAS.for_agent("bulk-agent") == Limits(max_queued_jobs=5, max_event_streams=2, max_long_polls=2)
    assert QUOTAS.for_agent("no-streams") == Limits(max_queued_jobs=2, max_event_streams=0, max_long_polls=2)
    assert QUOTAS.for_agent("anyone-else") == Limits(max_queued_jobs=2, max_event_streams=2, max_long_polls=2)


def test_quota_settings_refuse_unknown_and_negative_limits() -> None:
    with pytest.raises(ValidationError):
        QuotaSettings.model_validate({"agents": {"a": {"max_streams": 3}}})
    with pytest.raises(ValidationError):
        QuotaSettings(max_long_polls=-1)


def test_quota_ratelimit_headers_follow_the_draft_syntax() -> None:
    assert ratelimit_headers("queued-jobs", 100, 37) == {
        "RateLimit-Policy": '"queued-jobs";q=100',
        "RateLimit": '"queued-jobs";r=37',
    }
    assert ratelimit_headers("long-polls", 8, 0, retry_after_s=5) == {
        "Retry-After": "5",
        "RateLimit-Policy": '"long-polls";q=8;qu="concurrent-requests"',
        "RateLimit": '"long-polls";r=0;t=5',
    }


# ---- queued jobs ----------------------------------------------------------------------------------------


async def test_quota_api_agent_queue_full_is_429_and_another_agent_still_submits(quota_api: Api) -> None:
    first = await quota_api.client.post("/api/agent/jobs", json=JOB)
    assert first.status_code == 202
    assert (first.headers["ratelimit-policy"], first.headers["ratelimit"]) == ('"queued-jobs";q=2', '"queued-jobs";r=1')
    assert (await quota_api.client.post("/api/agent/jobs", json=JOB)).headers["ratelimit"] == '"queued-jobs";r=0'

    refused = await quota_api.client.post("/api/agent/jobs", json=JOB)

    body = _refusal(refused, "agent_queue_full")
    assert body["message"] == (
        "this agent has 2 queued jobs and its quota is 2; 1 more do not fit. Wait for some to start, or cancel some"
    )
    assert refused.headers["retry-after"] == "7"
    assert (refused.headers["ratelimit-policy"], refused.headers["ratelimit"]) == (
        '"queued-jobs";q=2',
        '"queued-jobs";r=0;t=7',
    )
    other = await quota_api.client_for("other-agent")
    assert (await other.post("/api/agent/jobs", json=JOB)).status_code == 202
    bulk = await quota_api.client_for("bulk-agent")
    accepted = await bulk.post("/api/agent/batches", json={"items": [JOB] * 5})
    assert accepted.status_code == 202 and accepted.headers["ratelimit"] == '"queued-jobs";r=0'


async def test_quota_api_batch_counts_its_items(quota_api: Api) -> None:
    assert (await quota_api.client.post("/api/agent/jobs", json=JOB)).status_code == 202

    refused = await quota_api.client.post("/api/agent/batches", json={"items": [JOB, JOB]})

    _refusal(refused, "agent_queue_full")
    assert refused.headers["ratelimit"] == '"queued-jobs";r=1;t=7'  # one would fit, the batch of two does not
    assert len((await quota_api.client.get("/api/agent/jobs")).json()["jobs"]) == 1


async def test_quota_api_idempotent_replay_is_not_refused(quota_api: Api) -> None:
    headers = {"Idempotency-Key": "order-7"}
    first = await quota_api.client.post("/api/agent/jobs", json=JOB, headers=headers)
    assert (await quota_api.client.post("/api/agent/jobs", json={**JOB, "seed": 4})).status_code == 202

    again = await quota_api.client.post("/api/agent/jobs", json=JOB, headers=headers)

    assert again.status_code == 202 and again.json()["job_id"] == first.json()["job_id"]
    assert again.headers["idempotent-replayed"] == "true" and "ratelimit" not in again.headers


async def test_quota_api_capabilities_report_the_agents_own_quotas(quota_api: Api) -> None:
    default = (await quota_api.client.get("/api/agent/capabilities")).json()["quotas"]
    bulk = await quota_api.client_for("bulk-agent")

    override = (await bulk.get("/api/agent/capabilities")).json()["quotas"]

    assert default == {"max_queued_jobs": 2, "max_event_streams": 2, "max_long_polls": 2}
    assert override == {"max_queued_jobs": 5, "max_event_streams": 2, "max_long_polls": 2}


# ---- event streams and long-polls -----------------------------------------------------------------------


async def _queued_job(api: Api, client: httpx.AsyncClient | None = None) -> str:
    response = await (client or api.client).post("/api/agent/jobs", json=JOB)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


async def _read_stream(client: httpx.AsyncClient, job_id: str) -> list[str]:
    """The statuses of the stream's ``job`` events, until it ends."""
    async with client.stream("GET", f"/api/agent/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    return [json.loads(line.removeprefix("data: "))["status"] for line in lines]


async def test_quota_api_third_event_stream_is_429_and_a_finished_stream_frees_its_slot(quota_api: Api) -> None:
    first, second = await _queued_job(quota_api), await _queued_job(quota_api)
    streams = [asyncio.create_task(_read_stream(quota_api.client, job)) for job in (first, second)]
    await _wait_live(quota_api, "event_stream", 2)

    refused = await quota_api.client.get(f"/api/agent/jobs/{first}/events")

    _refusal(refused, "too_many_streams")
    assert refused.headers["retry-after"] == "7"
    assert refused.headers["ratelimit-policy"] == '"event-streams";q=2;qu="concurrent-requests"'
    assert refused.headers["ratelimit"] == '"event-streams";r=0;t=7'
    # cancelling a job ends its stream, and the stream's slot goes with it
    assert (await quota_api.client.delete(f"/api/agent/jobs/{first}")).status_code == 200
    assert await asyncio.wait_for(streams[0], timeout=60) == ["queued", "cancelled"]
    await _wait_live(quota_api, "event_stream", 1)
    streams.append(asyncio.create_task(_read_stream(quota_api.client, second)))
    await _wait_live(quota_api, "event_stream", 2)
    assert (await quota_api.client.delete(f"/api/agent/jobs/{second}")).status_code == 200
    outcomes = await asyncio.wait_for(asyncio.gather(*streams[1:]), timeout=60)
    assert outcomes == [["queued", "cancelled"], ["queued", "cancelled"]]
    await _wait_live(quota_api, "event_stream", 0)


async def test_quota_api_finished_jobs_stream_without_a_slot(quota_api: Api) -> None:
    client = await quota_api.client_for("no-streams")
    job = await _queued_job(quota_api, client)
    refused = await client.get(f"/api/agent/jobs/{job}/events")
    assert refused.headers["ratelimit-policy"] == '"event-streams";q=0;qu="concurrent-requests"'
    _refusal(refused, "too_many_streams")
    assert (await client.delete(f"/api/agent/jobs/{job}")).status_code == 200

    events = await _read_stream(client, job)  # one final event; nothing to hold a slot for

    assert events == ["cancelled"]


async def _long_poll(client: httpx.AsyncClient, job_id: str) -> httpx.Response:
    return await client.get(f"/api/agent/jobs/{job_id}", params={"wait": 25})


async def test_quota_api_third_long_poll_is_429_and_plain_polls_are_free(quota_api: Api) -> None:
    job = await _queued_job(quota_api)
    polls = [asyncio.create_task(_long_poll(quota_api.client, job)) for _ in range(2)]
    await _wait_live(quota_api, "long_poll", 2)

    refused = await _long_poll(quota_api.client, job)

    _refusal(refused, "too_many_long_polls")
    assert refused.headers["retry-after"] == "7"
    assert refused.headers["ratelimit-policy"] == '"long-polls";q=2;qu="concurrent-requests"'
    assert refused.headers["ratelimit"] == '"long-polls";r=0;t=7'
    plain = await quota_api.client.get(f"/api/agent/jobs/{job}", params={"wait": 0})
    assert plain.status_code == 200 and plain.json()["status"] == "queued"
    other = await quota_api.client_for("other-agent")
    other_job = await _queued_job(quota_api, other)
    assert (await other.get(f"/api/agent/jobs/{other_job}", params={"wait": 0.1})).status_code == 200
    # the job finishing answers the long-polls, and their slots go with them
    assert (await quota_api.client.delete(f"/api/agent/jobs/{job}")).status_code == 200
    answers = await asyncio.wait_for(asyncio.gather(*polls), timeout=60)
    assert [(a.status_code, a.json()["status"]) for a in answers] == [(200, "cancelled"), (200, "cancelled")]
    await _wait_live(quota_api, "long_poll", 0)


async def test_quota_api_slots_of_a_crashed_replica_free_themselves(quota_api: Api) -> None:
    job = await _queued_job(quota_api)
    # two long-polls a replica took a minute ago and never released (it crashed): their 30 s lease is over
    minute_ago = quota_api.service.store.now() - timedelta(seconds=60)
    crashed = StreamSlots(quota_api.service.engine, lease_s=30, clock=lambda: minute_ago)
    for _ in range(2):
        await crashed.acquire(DEV_AGENT, "long_poll", 2)

    answer = await quota_api.client.get(f"/api/agent/jobs/{job}", params={"wait": 0.2})

    assert answer.status_code == 200 and answer.json()["status"] == "queued"
