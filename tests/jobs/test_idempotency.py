from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from serve_app.artifacts import ArtifactStore
from serve_app.config import JobSettings
from serve_app.jobs import (
    IdempotencyConflict,
    IdempotencyInProgress,
    JobStore,
    QueueFull,
    idempotency,
    request_fingerprint,
)
from tests.jobs.helpers import AGENT_A, AGENT_B, ManualClock, new_job

BODY = request_fingerprint("POST", "/api/agent/jobs", b'{"image": "..."}')
OTHER_BODY = request_fingerprint("POST", "/api/agent/jobs", b'{"image": "...", "seed": 1}')


def test_request_fingerprint_is_length_prefixed() -> None:
    assert request_fingerprint("ab", "c") != request_fingerprint("a", "bc")
    assert request_fingerprint("a", b"b") == request_fingerprint(b"a", "b")
    assert len(BODY) == 64


async def test_submit_same_key_same_body_returns_original(store: JobStore) -> None:
    first = await store.submit(AGENT_A, new_job(), idempotency_key="k1", request_hash=BODY)
    again = await store.submit(AGENT_A, new_job(), idempotency_key="k1", request_hash=BODY)

    assert again.replayed is True
    assert [job.id for job in again.jobs] == [job.id for job in first.jobs]
    assert await store.count_queued() == 1


async def test_submit_same_key_different_body_conflicts(store: JobStore) -> None:
    await store.submit(AGENT_A, new_job(), idempotency_key="k1", request_hash=BODY)

    with pytest.raises(IdempotencyConflict, match="'k1' was already used with a different request body"):
        await store.submit(AGENT_A, new_job(seed=1), idempotency_key="k1", request_hash=OTHER_BODY)
    assert await store.count_queued() == 1


async def test_submit_same_key_while_first_in_flight_is_in_progress(
    store: JobStore, engine: AsyncEngine, clock: ManualClock
) -> None:
    # The first request reserved the key and is still writing its images.
    assert (
        await idempotency.reserve(engine, AGENT_A, "k1", BODY, now=clock(), ttl_s=86400, pending_timeout_s=120) is None
    )

    with pytest.raises(IdempotencyInProgress, match="'k1' is still being processed"):
        await store.submit(AGENT_A, new_job(), idempotency_key="k1", request_hash=BODY)
    assert await store.count_queued() == 0


async def test_submit_same_key_after_pending_timeout_takes_over(
    store: JobStore, engine: AsyncEngine, clock: ManualClock
) -> None:
    await idempotency.reserve(engine, AGENT_A, "k1", BODY, now=clock(), ttl_s=86400, pending_timeout_s=120)
    clock.advance(121)  # the first request died without finishing

    submission = await store.submit(AGENT_A, new_job(), idempotency_key="k1", request_hash=BODY)

    assert submission.replayed is False
    assert len(submission.jobs) == 1


async def test_submit_same_key_after_24h_is_a_new_request(store: JobStore, clock: ManualClock) -> None:
    first = await store.submit(AGENT_A, new_job(), idempotency_key="k1", request_hash=BODY)
    clock.advance(24 * 3600 + 1)

    later = await store.submit(AGENT_A, new_job(seed=1), idempotency_key="k1", request_hash=OTHER_BODY)

    assert later.replayed is False
    assert later.jobs[0].id != first.jobs[0].id


async def test_submit_key_is_scoped_per_agent(store: JobStore) -> None:
    mine = await store.submit(AGENT_A, new_job(), idempotency_key="k1", request_hash=BODY)
    theirs = await store.submit(AGENT_B, new_job(seed=1), idempotency_key="k1", request_hash=OTHER_BODY)

    assert theirs.replayed is False
    assert theirs.jobs[0].id != mine.jobs[0].id


async def test_submit_refused_by_full_queue_frees_the_key(
    engine: AsyncEngine, artifacts: ArtifactStore, clock: ManualClock
) -> None:
    store = JobStore(engine, artifacts, JobSettings(max_queued=1), clock=clock)
    await store.submit(AGENT_B, new_job())
    with pytest.raises(QueueFull):
        await store.submit(AGENT_A, new_job(), idempotency_key="k1", request_hash=BODY)
    await store.claim("worker-1", 1, lease_s=30)

    retried = await store.submit(AGENT_A, new_job(), idempotency_key="k1", request_hash=BODY)

    assert retried.replayed is False
    assert len(retried.jobs) == 1


async def test_submit_batch_replay_returns_the_batch(store: JobStore) -> None:
    first = await store.submit_batch(AGENT_A, [new_job(), new_job()], idempotency_key="b1", request_hash=BODY)
    again = await store.submit_batch(AGENT_A, [new_job(), new_job()], idempotency_key="b1", request_hash=BODY)

    assert again.replayed is True
    assert again.batch_id == first.batch_id
    assert [job.id for job in again.jobs] == [job.id for job in first.jobs]


async def test_submit_concurrent_duplicates_create_one_job(store: JobStore) -> None:
    outcomes = await asyncio.gather(
        *(store.submit(AGENT_A, new_job(), idempotency_key="k1", request_hash=BODY) for _ in range(6)),
        return_exceptions=True,
    )

    created = [o for o in outcomes if not isinstance(o, BaseException) and not o.replayed]
    replayed = [o for o in outcomes if not isinstance(o, BaseException) and o.replayed]
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(created) == 1
    assert all(isinstance(o, IdempotencyInProgress) for o in refused)
    assert all(o.jobs[0].id == created[0].jobs[0].id for o in replayed)
    assert await store.count_queued() == 1


async def test_purge_idempotency_keys_drops_old_records(store: JobStore, clock: ManualClock) -> None:
    await store.submit(AGENT_A, new_job(), idempotency_key="old", request_hash=BODY)
    clock.advance(20 * 3600)
    await store.submit(AGENT_A, new_job(), idempotency_key="new", request_hash=BODY)
    clock.advance(5 * 3600)

    assert await store.purge_idempotency_keys() == 1
    assert (await store.submit(AGENT_A, new_job(), idempotency_key="new", request_hash=BODY)).replayed is True


async def test_submit_key_without_hash_refused(store: JobStore) -> None:
    with pytest.raises(ValueError, match="idempotency_key and request_hash go together"):
        await store.submit(AGENT_A, new_job(), idempotency_key="k1")
