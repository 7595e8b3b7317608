"""The outbox: written in the job store's terminal transitions, claimed once under concurrency."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from deployments.contract import ErrorCode
from serve_app.artifacts import ArtifactStore
from serve_app.auth.secret import Secret
from serve_app.config import JobSettings
from serve_app.jobs import JobStore
from serve_app.webhooks.endpoints import EndpointStore
from serve_app.webhooks.models import ENDPOINTS
from serve_app.webhooks.outbox import EVENT_TYPES, Outbox
from tests.jobs.helpers import ManualClock, new_job
from tests.webhooks.helpers import AGENT, failed_job, settings, succeeded_job

URL = "http://127.0.0.1:9/hook"


async def test_outbox_one_row_per_matching_active_endpoint(
    engine: AsyncEngine, store: JobStore, endpoints: EndpointStore
) -> None:
    everything, _ = await endpoints.create(AGENT, URL, EVENT_TYPES, limit=10)
    only_failures, _ = await endpoints.create(AGENT, URL, ["job.failed"], limit=10)
    disabled, _ = await endpoints.create(AGENT, URL, EVENT_TYPES, limit=10)
    async with engine.begin() as conn:
        await conn.execute(update(ENDPOINTS).where(ENDPOINTS.c.id == disabled.id).values(status="disabled"))
    await endpoints.create("agent-b", URL, EVENT_TYPES, limit=10)  # another agent's: never sees ours

    ok = await succeeded_job(store)
    bad = await failed_job(store)
    cancelled = (await store.submit(AGENT, new_job())).jobs[0].id
    await store.cancel(AGENT, cancelled)

    rows = await Outbox(engine, settings(), clock=store.now).deliveries()
    seen = sorted((row["endpoint_id"], row["job_id"], row["event_type"]) for row in rows)
    assert seen == sorted(
        [
            (everything.id, ok, "job.succeeded"),
            (everything.id, bad, "job.failed"),
            (everything.id, cancelled, "job.cancelled"),
            (only_failures.id, bad, "job.failed"),
        ]
    )
    assert len({row["id"] for row in rows}) == 4 and all(row["id"].startswith("msg_") for row in rows)
    body = json.loads(next(row["payload"] for row in rows if row["job_id"] == ok))
    assert body["type"] == "job.succeeded"
    assert body["timestamp"].endswith("Z")
    assert body["data"]["job_id"] == ok and body["data"]["status"] == "succeeded"
    assert body["data"]["result_urls"]["glb"] == f"/api/agent/jobs/{ok}/result?format=glb"


async def test_outbox_written_by_expiry_and_give_up(engine: AsyncEngine, tmp_path: Path, master_key: Secret) -> None:
    clock = ManualClock()
    store = JobStore(
        engine,
        ArtifactStore(tmp_path / "data"),
        JobSettings(max_queued=20, default_deadline_s=60, max_attempts=1),
        clock=clock,
    )
    await EndpointStore(engine, master_key, clock=clock).create(AGENT, URL, EVENT_TYPES, limit=10)
    lost = (await store.submit(AGENT, new_job())).jobs[0].id
    await store.claim("w1", 1, lease_s=10)
    requeue_fail = (await store.submit(AGENT, new_job())).jobs[0].id
    assert [j.id for j in await store.claim("w2", 1, lease_s=600)] == [requeue_fail]
    expired = (await store.submit(AGENT, new_job())).jobs[0].id
    assert await store.requeue(requeue_fail, "w2", code=ErrorCode.MODEL_UNAVAILABLE, message="gone") == "failed"
    clock.advance(61)
    assert await store.expire_overdue() == [expired]
    assert (await store.requeue_expired_leases()) == ([], [lost])

    rows = await Outbox(engine, settings(), clock=clock).deliveries()
    assert sorted((row["job_id"], row["event_type"]) for row in rows) == sorted(
        [(lost, "job.failed"), (requeue_fail, "job.failed"), (expired, "job.expired")]
    )


async def test_outbox_concurrent_claims_take_disjoint_rows(
    engine: AsyncEngine, store: JobStore, endpoints: EndpointStore
) -> None:
    for _ in range(8):
        await endpoints.create(AGENT, URL, EVENT_TYPES, limit=10)
    for _ in range(3):
        await succeeded_job(store)
    outbox = Outbox(engine, settings(), clock=store.now)
    claims = await asyncio.gather(*(outbox.claim(f"worker-{n}", 5) for n in range(6)))
    ids = [d.id for batch in claims for d in batch]
    assert len(ids) == 24 and len(set(ids)) == 24
    assert all(d.attempts == 1 for batch in claims for d in batch)
    # all leased: nothing is due until a lease expires
    assert await outbox.claim("late", 50) == []


async def test_outbox_outcome_only_from_the_attempt_holder(
    engine: AsyncEngine, store: JobStore, endpoints: EndpointStore
) -> None:
    await endpoints.create(AGENT, URL, EVENT_TYPES, limit=10)
    await succeeded_job(store)
    clock = ManualClock(store.now())
    outbox = Outbox(engine, settings(lease_s=6.0), clock=clock)
    (first,) = await outbox.claim("w1", 5)
    clock.advance(7)  # w1's lease expired: w2 makes the attempt again, same message id
    (second,) = await outbox.claim("w2", 5)
    assert (second.id, second.attempts) == (first.id, 2)
    assert not await outbox.delivered(first, "w1", status_code=200)  # the late original changes nothing
    assert await outbox.delivered(second, "w2", status_code=200)
    (row,) = await outbox.deliveries()
    assert (row["status"], row["attempts"]) == ("delivered", 2)
