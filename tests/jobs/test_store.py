from __future__ import annotations

import re
from datetime import datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from serve_app.artifacts import ArtifactStore
from serve_app.config import JobSettings
from serve_app.jobs import JobStore, NewJob, QueueFull
from tests.jobs.helpers import AGENT_A, AGENT_B, IMAGE, ManualClock, new_job

START = datetime(2030, 1, 1, 12, 0, 0)


async def test_submit_persists_a_queued_job(store: JobStore, artifacts: ArtifactStore) -> None:
    submission = await store.submit(AGENT_A, new_job(seed=42, priority="critical"))

    (job,) = submission.jobs
    assert submission.batch_id is None
    assert submission.replayed is False
    assert re.fullmatch(r"job_[0-9a-f]{32}", job.id)
    assert await store.get(AGENT_A, job.id) == job
    assert (job.agent, job.status, job.stage, job.progress) == (AGENT_A, "queued", "queued", 0)
    assert job.priority == "critical"
    assert (job.seed, job.params, job.model, job.attempts) == (42, {"num_inference_steps": 5}, "tiny", 0)
    assert (job.created_at, job.deadline_at, job.started_at, job.finished_at) == (
        START,
        datetime(2030, 1, 1, 12, 10, 0),
        None,
        None,
    )
    # The image is an artifact, the row only points at it.
    assert job.input_path == f"inputs/{job.id}.png"
    assert artifacts.read_bytes(job.input_path) == IMAGE


async def test_submit_without_seed_records_a_drawn_seed(store: JobStore) -> None:
    (first,) = (await store.submit(AGENT_A, new_job(seed=None))).jobs
    (second,) = (await store.submit(AGENT_A, new_job(seed=None))).jobs

    assert 0 <= first.seed < 2**53
    assert first.seed != second.seed
    assert (await store.get(AGENT_A, first.id)).seed == first.seed  # type: ignore[union-attr]


async def test_submit_deadline_override_and_none(
    engine: AsyncEngine, artifacts: ArtifactStore, clock: ManualClock
) -> None:
    store = JobStore(engine, artifacts, JobSettings(default_deadline_s=None), clock=clock)

    (without,) = (await store.submit(AGENT_A, new_job())).jobs
    (with_own,) = (await store.submit(AGENT_A, new_job(deadline_s=30))).jobs

    assert without.deadline_at is None
    assert with_own.deadline_at == datetime(2030, 1, 1, 12, 0, 30)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image": b""}, "image must not be empty"),
        ({"priority": "urgent"}, r"priority must be one of \['normal', 'critical'\], got 'urgent'"),
        ({"seed": -1}, "seed must be an integer between 0 and 9007199254740991, got -1"),
        ({"seed": True}, "seed must be an integer"),
        ({"deadline_s": 0}, "deadline_s must be positive, got 0"),
        ({"image_format": "../png"}, "image_format must be a short lowercase extension"),
    ],
)
def test_new_job_invalid_values_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        new_job(**overrides)


async def test_submit_batch_keeps_item_order(store: JobStore) -> None:
    submission = await store.submit_batch(AGENT_A, [new_job(seed=s) for s in (3, 1, 2)])

    assert submission.batch_id is not None and re.fullmatch(r"batch_[0-9a-f]{32}", submission.batch_id)
    batch = await store.get_batch(AGENT_A, submission.batch_id)
    assert batch is not None
    assert [job.seed for job in batch.jobs] == [3, 1, 2]
    assert [job.batch_index for job in batch.jobs] == [0, 1, 2]
    assert [job.id for job in batch.jobs] == [job.id for job in submission.jobs]
    assert batch.counts == {"queued": 3, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0, "expired": 0}
    assert batch.finished is False


async def test_submit_batch_empty_refused(store: JobStore) -> None:
    with pytest.raises(ValueError, match="a batch needs at least one item"):
        await store.submit_batch(AGENT_A, [])


async def test_get_another_agents_job_is_none(store: JobStore) -> None:
    (job,) = (await store.submit(AGENT_A, new_job())).jobs
    batch = await store.submit_batch(AGENT_A, [new_job()])

    assert await store.get(AGENT_B, job.id) is None
    assert await store.get(AGENT_A, "job_" + "0" * 32) is None
    assert await store.get_batch(AGENT_B, batch.batch_id) is None  # type: ignore[arg-type]
    assert (await store.list_jobs(AGENT_B)).jobs == ()
    assert await store.cancel(AGENT_B, job.id) is None
    assert (await store.get(AGENT_A, job.id)).status == "queued"  # type: ignore[union-attr]


async def test_list_pages_newest_first_with_cursor(store: JobStore, clock: ManualClock) -> None:
    ids = []
    for _ in range(5):
        ids.append((await store.submit(AGENT_A, new_job())).jobs[0].id)
        clock.advance(1)
    await store.submit(AGENT_B, new_job())

    first = await store.list_jobs(AGENT_A, limit=2)
    second = await store.list_jobs(AGENT_A, limit=2, cursor=first.next_cursor)
    third = await store.list_jobs(AGENT_A, limit=2, cursor=second.next_cursor)

    assert [job.id for job in first.jobs + second.jobs + third.jobs] == ids[::-1]
    assert third.next_cursor is None


async def test_list_pages_through_a_batch_with_equal_timestamps(store: JobStore) -> None:
    submission = await store.submit_batch(AGENT_A, [new_job() for _ in range(7)])

    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_jobs(AGENT_A, limit=3, cursor=cursor)
        seen += [job.id for job in page.jobs]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor

    assert sorted(seen) == sorted(job.id for job in submission.jobs)
    assert len(seen) == 7


async def test_list_filters_by_status(store: JobStore) -> None:
    (kept,) = (await store.submit(AGENT_A, new_job())).jobs
    (cancelled,) = (await store.submit(AGENT_A, new_job())).jobs
    await store.cancel(AGENT_A, cancelled.id)

    assert [job.id for job in (await store.list_jobs(AGENT_A, status="queued")).jobs] == [kept.id]
    assert [job.id for job in (await store.list_jobs(AGENT_A, status="cancelled")).jobs] == [cancelled.id]
    assert (await store.list_jobs(AGENT_A, status="running")).jobs == ()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cursor": "not-a-cursor"}, "invalid cursor 'not-a-cursor'"),
        ({"status": "done"}, "status must be one of"),
        ({"limit": 0}, "limit must be between 1 and 200, got 0"),
    ],
)
async def test_list_invalid_arguments_refused(store: JobStore, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await store.list_jobs(AGENT_A, **kwargs)  # type: ignore[arg-type]


async def test_cancel_queued_job(store: JobStore, clock: ManualClock) -> None:
    (job,) = (await store.submit(AGENT_A, new_job())).jobs
    clock.advance(5)

    cancelled = await store.cancel(AGENT_A, job.id)

    assert cancelled is not None
    assert (cancelled.status, cancelled.stage) == ("cancelled", "cancelled")
    assert cancelled.finished_at == START.replace(second=5)
    assert await store.claim("worker-1", 10, lease_s=30) == []


async def test_cancel_finished_job_leaves_it_unchanged(store: JobStore) -> None:
    (job,) = (await store.submit(AGENT_A, new_job())).jobs
    await store.claim("worker-1", 1, lease_s=30)
    await store.complete(job.id, "worker-1", result_path="results/x.glb", mesh_stats={}, timings={})

    after = await store.cancel(AGENT_A, job.id)

    assert after is not None and after.status == "succeeded"


async def test_submit_queue_full_raises_with_retry_after(
    engine: AsyncEngine, artifacts: ArtifactStore, clock: ManualClock
) -> None:
    store = JobStore(engine, artifacts, JobSettings(max_queued=3, queue_full_retry_after_s=7), clock=clock)
    await store.submit_batch(AGENT_A, [new_job(), new_job()])

    with pytest.raises(QueueFull) as raised:
        await store.submit_batch(AGENT_B, [new_job(), new_job()])

    assert (raised.value.queued, raised.value.limit, raised.value.retry_after_s) == (2, 3, 7)
    assert str(raised.value) == "the queue is full (2 queued jobs, limit 3); retry in 7 s"
    # Nothing of the refused batch was kept, not even its images.
    assert await store.count_queued() == 2
    assert len(list((artifacts.root / "inputs").iterdir())) == 2
    # Running jobs do not count against the bound.
    await store.claim("worker-1", 2, lease_s=30)
    assert len((await store.submit_batch(AGENT_B, [new_job(), new_job()])).jobs) == 2


async def test_submit_image_format_names_the_artifact(store: JobStore) -> None:
    (job,) = (await store.submit(AGENT_A, NewJob(image=b"RIFF....WEBP", model="tiny", image_format="webp"))).jobs

    assert job.input_path == f"inputs/{job.id}.webp"


def test_job_settings_invalid_refused() -> None:
    with pytest.raises(ValueError, match="max_queued\n  Input should be greater than or equal to 1"):
        JobSettings(max_queued=0)
