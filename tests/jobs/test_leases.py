from __future__ import annotations

import asyncio
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from deployments.contract import ErrorCode
from serve_app.artifacts import ArtifactStore
from serve_app.config import JobSettings
from serve_app.db import make_engine
from serve_app.jobs import JobStore
from tests.jobs.helpers import AGENT_A, AGENT_B, ManualClock, new_job

RESULT = {"result_path": "results/job/mesh-1.glb", "mesh_stats": {"faces": 80}, "timings": {"total_s": 1.0}}


async def test_claim_leases_the_job_to_the_worker(store: JobStore) -> None:
    (job,) = (await store.submit(AGENT_A, new_job())).jobs

    (claimed,) = await store.claim("worker-1", 5, lease_s=30)

    assert claimed.id == job.id
    assert (claimed.status, claimed.stage, claimed.progress, claimed.attempts) == ("running", "generating", 10, 1)
    assert claimed.lease_owner == "worker-1"
    assert claimed.lease_expires_at == datetime(2030, 1, 1, 12, 0, 30)
    assert claimed.started_at == claimed.claimed_at == datetime(2030, 1, 1, 12, 0, 0)
    assert await store.claim("worker-2", 5, lease_s=30) == []


async def test_claim_races_never_claim_a_job_twice(db_url: str, store: JobStore, artifacts: ArtifactStore) -> None:
    await store.submit_batch(AGENT_A, [new_job() for _ in range(12)])
    await store.submit_batch(AGENT_B, [new_job() for _ in range(8)])
    # Each claimer has its own engine, as separate replicas would.
    engines = [make_engine(db_url) for _ in range(5)]
    claimers = [JobStore(engine, artifacts, store.settings) for engine in engines]

    async def claim_until_empty(claimer: JobStore, worker_id: str) -> list[str]:
        mine: list[str] = []
        while True:
            got = await claimer.claim(worker_id, 3, lease_s=60)
            mine += [job.id for job in got]
            if not got and await claimer.count_queued() == 0:
                return mine

    try:
        claimed = await asyncio.gather(*(claim_until_empty(c, f"worker-{i}") for i, c in enumerate(claimers)))
    finally:
        await asyncio.gather(*(engine.dispose() for engine in engines))

    every = [job_id for mine in claimed for job_id in mine]
    assert len(every) == 20
    assert len(set(every)) == 20
    # Everything ended with exactly one owner, the one that claimed it.
    for worker, mine in enumerate(claimed):
        for job_id in mine:
            job = await store.get(AGENT_A, job_id) or await store.get(AGENT_B, job_id)
            assert job is not None and (job.lease_owner, job.attempts) == (f"worker-{worker}", 1)


async def test_heartbeat_extends_only_held_leases(store: JobStore, clock: ManualClock) -> None:
    first, second = (await store.submit_batch(AGENT_A, [new_job(), new_job()])).jobs
    await store.claim("worker-1", 2, lease_s=30)
    await store.cancel(AGENT_A, second.id)
    clock.advance(20)

    held = await store.heartbeat("worker-1", [first.id, second.id], lease_s=30)

    assert held == {first.id}
    renewed = await store.get(AGENT_A, first.id)
    assert renewed is not None and renewed.lease_expires_at == datetime(2030, 1, 1, 12, 0, 50)
    assert await store.heartbeat("worker-2", [first.id], lease_s=30) == set()


async def test_expired_lease_is_requeued_and_stale_worker_cannot_complete(store: JobStore, clock: ManualClock) -> None:
    (job,) = (await store.submit(AGENT_A, new_job())).jobs
    await store.claim("worker-1", 1, lease_s=30)
    clock.advance(29)
    assert await store.requeue_expired_leases() == ([], [])
    clock.advance(2)

    assert await store.requeue_expired_leases() == ([job.id], [])
    requeued = await store.get(AGENT_A, job.id)
    assert requeued is not None
    assert (requeued.status, requeued.stage, requeued.lease_owner, requeued.attempts) == ("queued", "queued", None, 1)

    (reclaimed,) = await store.claim("worker-2", 1, lease_s=30)
    assert (reclaimed.attempts, reclaimed.started_at) == (2, datetime(2030, 1, 1, 12, 0, 0))
    # The first worker comes back from a long pause: every write of it is refused.
    assert await store.heartbeat("worker-1", [job.id], lease_s=30) == set()
    assert await store.complete(job.id, "worker-1", **RESULT) is False
    assert await store.fail(job.id, "worker-1", code=ErrorCode.INTERNAL_ERROR, message="x") is False
    # The current owner completes, once.
    assert await store.complete(job.id, "worker-2", **RESULT) is True
    assert await store.complete(job.id, "worker-2", **RESULT) is False
    done = await store.get(AGENT_A, job.id)
    assert done is not None
    assert (done.status, done.stage, done.progress, done.lease_owner) == ("succeeded", "done", 100, None)
    assert (done.result_path, done.mesh_stats, done.timings) == (
        "results/job/mesh-1.glb",
        {"faces": 80},
        {"total_s": 1.0},
    )
    assert done.finished_at == datetime(2030, 1, 1, 12, 0, 31)


async def test_lease_lost_too_often_fails_the_job(
    engine: AsyncEngine, artifacts: ArtifactStore, clock: ManualClock
) -> None:
    store = JobStore(engine, artifacts, JobSettings(max_attempts=2), clock=clock)
    (job,) = (await store.submit(AGENT_A, new_job())).jobs
    for attempt in (1, 2):
        await store.claim(f"worker-{attempt}", 1, lease_s=10)
        clock.advance(11)
        outcome = await store.requeue_expired_leases()
        assert outcome == (([job.id], []) if attempt == 1 else ([], [job.id]))

    failed = await store.get(AGENT_A, job.id)
    assert failed is not None
    assert (failed.status, failed.error_code, failed.retryable, failed.attempts) == ("failed", "worker_lost", True, 2)
    assert failed.error_message == "the worker running this job stopped responding 2 times; giving up"


async def test_fail_records_code_message_and_retryable(store: JobStore) -> None:
    (job,) = (await store.submit(AGENT_A, new_job())).jobs
    await store.claim("worker-1", 1, lease_s=30)

    assert await store.fail(job.id, "worker-1", code=ErrorCode.OUT_OF_MEMORY, message="OOM") is True

    failed = await store.get(AGENT_A, job.id)
    assert failed is not None
    assert (failed.status, failed.error_code, failed.error_message, failed.retryable) == (
        "failed",
        "out_of_memory",
        "OOM",
        True,
    )
    assert await store.complete(job.id, "worker-1", **RESULT) is False


async def test_cancel_running_job_refuses_the_workers_completion(store: JobStore) -> None:
    (job,) = (await store.submit(AGENT_A, new_job())).jobs
    await store.claim("worker-1", 1, lease_s=30)

    cancelled = await store.cancel(AGENT_A, job.id)

    assert cancelled is not None and cancelled.status == "cancelled"
    assert await store.complete(job.id, "worker-1", **RESULT) is False
    assert (await store.get(AGENT_A, job.id)).status == "cancelled"  # type: ignore[union-attr]


async def test_release_requeues_without_counting_the_attempt(store: JobStore) -> None:
    (job,) = (await store.submit(AGENT_A, new_job())).jobs
    await store.claim("worker-1", 1, lease_s=30)

    assert await store.release(job.id, "worker-2") is False
    assert await store.release(job.id, "worker-1") is True

    released = await store.get(AGENT_A, job.id)
    assert released is not None
    assert (released.status, released.attempts, released.lease_owner) == ("queued", 0, None)


async def test_expire_overdue_marks_unstarted_jobs_expired(store: JobStore, clock: ManualClock) -> None:
    (late,) = (await store.submit(AGENT_A, new_job(deadline_s=60))).jobs
    (patient,) = (await store.submit(AGENT_A, new_job(deadline_s=3600))).jobs
    clock.advance(61)

    # A claim never starts an overdue job, even before expiry ran.
    (claimed,) = await store.claim("worker-1", 5, lease_s=30)
    assert claimed.id == patient.id
    assert await store.expire_overdue() == [late.id]

    expired = await store.get(AGENT_A, late.id)
    assert expired is not None
    assert (expired.status, expired.error_code, expired.retryable) == ("expired", "deadline_exceeded", True)
    assert expired.finished_at == datetime(2030, 1, 1, 12, 1, 1)
    assert await store.expire_overdue() == []


async def test_requeued_job_past_its_deadline_still_runs(store: JobStore, clock: ManualClock) -> None:
    (job,) = (await store.submit(AGENT_A, new_job(deadline_s=60))).jobs
    await store.claim("worker-1", 1, lease_s=120)
    clock.advance(121)  # the worker died; by now the deadline is past too
    await store.requeue_expired_leases()

    assert await store.expire_overdue() == []
    (reclaimed,) = await store.claim("worker-2", 1, lease_s=30)
    assert reclaimed.id == job.id
