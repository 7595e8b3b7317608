"""Per-agent queued-jobs quota in the store's submit transaction, on SQLite and on the local Postgres."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from serve_app.artifacts import ArtifactStore
from serve_app.config import JobSettings
from serve_app.jobs import AgentQueueFull, JobStore, QueueQuota, request_fingerprint

from .helpers import AGENT_A, AGENT_B, ManualClock, new_job


async def test_quota_refuses_past_the_agents_limit_and_another_agent_still_submits(
    store: JobStore, artifacts: ArtifactStore
) -> None:
    for queued in (1, 2):
        submission = await store.submit(AGENT_A, new_job(), agent_quota=2)
        assert submission.quota == QueueQuota(limit=2, queued=queued)

    with pytest.raises(AgentQueueFull) as raised:
        await store.submit(AGENT_A, new_job(), agent_quota=2)

    assert (raised.value.queued, raised.value.requested, raised.value.limit) == (2, 1, 2)
    assert str(raised.value) == (
        "this agent has 2 queued jobs and its quota is 2; 1 more do not fit. Wait for some to start, or cancel some"
    )
    other = await store.submit(AGENT_B, new_job(), agent_quota=2)
    assert other.quota == QueueQuota(limit=2, queued=1)
    assert await store.count_queued() == 3
    assert len(list((artifacts.root / "inputs").iterdir())) == 3  # the refused job left no image behind


async def test_quota_counts_a_batch_by_its_items(store: JobStore, artifacts: ArtifactStore) -> None:
    await store.submit(AGENT_A, new_job(), agent_quota=3)

    with pytest.raises(AgentQueueFull) as raised:
        await store.submit_batch(AGENT_A, [new_job(), new_job(), new_job()], agent_quota=3)

    assert (raised.value.queued, raised.value.requested) == (1, 3)
    batch = await store.submit_batch(AGENT_A, [new_job(), new_job()], agent_quota=3)
    assert batch.quota == QueueQuota(limit=3, queued=3) and batch.quota.remaining == 0
    assert len(list((artifacts.root / "inputs").iterdir())) == 3


async def test_quota_does_not_refuse_an_idempotent_replay(store: JobStore) -> None:
    fingerprint = request_fingerprint("POST", "/api/agent/jobs", b"{}")
    first = await store.submit(AGENT_A, new_job(), idempotency_key="k-1", request_hash=fingerprint, agent_quota=1)

    replay = await store.submit(AGENT_A, new_job(), idempotency_key="k-1", request_hash=fingerprint, agent_quota=1)

    assert replay.replayed and replay.jobs == first.jobs and replay.quota is None
    with pytest.raises(AgentQueueFull):
        await store.submit(AGENT_A, new_job(), idempotency_key="k-2", request_hash=fingerprint, agent_quota=1)
    # the refused key was released: the same request may be retried once there is room
    await store.cancel(AGENT_A, first.jobs[0].id)
    retried = await store.submit(AGENT_A, new_job(), idempotency_key="k-2", request_hash=fingerprint, agent_quota=1)
    assert not retried.replayed and retried.quota == QueueQuota(limit=1, queued=1)


async def test_quota_counts_queued_jobs_only(store: JobStore) -> None:
    await store.submit_batch(AGENT_A, [new_job(), new_job()], agent_quota=2)

    await store.claim("worker-1", 2, lease_s=30)

    assert (await store.submit(AGENT_A, new_job(), agent_quota=2)).quota == QueueQuota(limit=2, queued=1)


async def test_quota_zero_refuses_every_submission(store: JobStore) -> None:
    with pytest.raises(AgentQueueFull):
        await store.submit(AGENT_A, new_job(), agent_quota=0)
    assert (await store.submit(AGENT_A, new_job())).quota is None  # no quota given: no per-agent bound


async def test_quota_is_exact_under_concurrent_submits(
    engine: AsyncEngine, artifacts: ArtifactStore, clock: ManualClock
) -> None:
    # Postgres runs these in parallel transactions: without the agent's advisory lock several would each
    # count 2 queued and pass; SQLite serialises them on its write lock.
    store = JobStore(engine, artifacts, JobSettings(max_queued=100), clock=clock)
    await store.submit_batch(AGENT_A, [new_job(), new_job()], agent_quota=5)

    outcomes = await asyncio.gather(
        *(store.submit(AGENT_A, new_job(), agent_quota=5) for _ in range(8)), return_exceptions=True
    )

    accepted = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, AgentQueueFull)]
    assert (len(accepted), len(refused)) == (3, 5)
    assert sorted(s.quota.queued for s in accepted if s.quota is not None) == [3, 4, 5]
    assert len((await store.list_jobs(AGENT_A, status="queued")).jobs) == 5
