"""The dispatcher on the real database with a fake model (real meshes), in real time with short leases."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
import trimesh
from sqlalchemy.ext.asyncio import AsyncEngine

from deployments.contract import MESH_FORMATS, ErrorCode, GenerationError
from deployments.mesh_io import load_mesh
from serve_app.artifacts import ArtifactStore
from serve_app.config import JobSettings
from serve_app.db import make_engine
from serve_app.jobs import Dispatcher, JobEvent, JobStore
from serve_app.jobs.dispatcher import INTERNAL_ERROR_MESSAGE
from serve_app.schema import upgrade_schema
from tests.jobs.helpers import AGENT_A, AGENT_B, IMAGE, FakeModel, new_job, wait_for_status, wait_until

FAST = JobSettings(
    max_attempts=3,
    dispatcher_concurrency=4,
    lease_s=3.0,
    poll_interval_s=0.05,
    maintenance_interval_s=0.1,
    stop_grace_s=5,
)


def quick(**changes: object) -> JobSettings:
    return FAST.model_copy(update=changes)


@pytest.fixture
def live_store(engine: AsyncEngine, artifacts: ArtifactStore) -> JobStore:
    return JobStore(engine, artifacts, FAST)


@pytest.fixture
async def dispatchers() -> AsyncIterator[list[Dispatcher]]:
    """Dispatchers a test starts; whatever still runs at the end is killed (no writes after the test)."""
    started: list[Dispatcher] = []
    yield started
    for dispatcher in started:
        await dispatcher.kill()


async def _start(
    dispatchers: list[Dispatcher],
    store: JobStore,
    artifacts: ArtifactStore,
    model: FakeModel,
    settings: JobSettings = FAST,
    worker_id: str | None = None,
) -> Dispatcher:
    dispatcher = Dispatcher(store, artifacts, model, settings, worker_id=worker_id)
    dispatchers.append(dispatcher)
    await dispatcher.start()
    return dispatcher


async def test_dispatcher_runs_a_job_to_success(
    live_store: JobStore, artifacts: ArtifactStore, dispatchers: list[Dispatcher]
) -> None:
    model = FakeModel()
    dispatcher = await _start(dispatchers, live_store, artifacts, model, worker_id="worker-1")
    with dispatcher.events.subscribe() as events:
        (job,) = (await live_store.submit(AGENT_A, new_job(seed=11, params={"octree_resolution": 64}))).jobs
        dispatcher.notify()
        done = await wait_for_status(live_store, AGENT_A, job.id, ["succeeded"])
        await dispatcher.stop()

    (request,) = model.calls
    assert (request.job_id, request.image, request.seed, request.params.octree_resolution) == (job.id, IMAGE, 11, 64)
    assert (done.stage, done.progress, done.attempts, done.lease_owner) == ("done", 100, 1, None)
    assert done.error_code is None
    assert done.result_path is not None
    assert re.fullmatch(rf"results/{job.id}/mesh-[0-9a-f]{{16}}\.glb", done.result_path)
    assert done.mesh_stats is not None
    assert (done.mesh_stats["vertices"], done.mesh_stats["faces"], done.mesh_stats["watertight"]) == (42, 80, True)
    assert done.mesh_stats["bounds"] == [[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]
    assert done.timings is not None
    assert set(done.timings) == {"attempt", "queue_s", "generate_s", "store_s", "total_s", "model"}
    assert done.timings["model"] == {"diffusion_s": 0.01, "batch_size": 1, "queue_wait_s": 0.0, "cleanup": {}}
    # The stored mesh and every download format read back as the same mesh.
    for fmt in MESH_FORMATS:
        path = artifacts.mesh_file(done.result_path, fmt)
        loaded = trimesh.load(path, file_type=fmt, force="mesh")
        assert (len(loaded.vertices), len(loaded.faces)) == (42, 80)
    seen = []
    while not events.empty():
        event: JobEvent = events.get_nowait()
        seen.append((event.job_id, event.status, event.stage, event.progress))
    assert seen == [(job.id, "running", "generating", 10), (job.id, "succeeded", "done", 100)]


async def test_dispatcher_calls_the_model_concurrently(
    live_store: JobStore, artifacts: ArtifactStore, dispatchers: list[Dispatcher]
) -> None:
    model = FakeModel(hold=True)
    jobs = (await live_store.submit_batch(AGENT_A, [new_job() for _ in range(6)])).jobs
    dispatcher = await _start(dispatchers, live_store, artifacts, model)

    # Four slots: four calls are in the model at once, the other two wait in the queue.
    await wait_until(lambda: model.active == 4)
    assert await live_store.count_queued() == 2
    model.release()
    for job in jobs:
        await wait_for_status(live_store, AGENT_A, job.id, ["succeeded"])
    await dispatcher.stop()

    assert model.max_active == 4
    assert sorted(call.job_id for call in model.calls) == sorted(job.id for job in jobs)


@pytest.mark.parametrize(
    ("error", "code", "message", "retryable"),
    [
        (GenerationError(ErrorCode.OUT_OF_MEMORY, "CUDA OOM at batch 8"), "out_of_memory", "CUDA OOM at batch 8", True),
        (GenerationError(ErrorCode.EMPTY_SURFACE, "no surface"), "empty_surface", "no surface", False),
        (RuntimeError("boom /secret/path"), "internal_error", INTERNAL_ERROR_MESSAGE, True),
        (
            GenerationError(ErrorCode.INTERNAL_ERROR, "surface extraction: bad index in /srv/x.py"),
            "internal_error",
            INTERNAL_ERROR_MESSAGE,
            True,
        ),
    ],
)
async def test_dispatcher_records_model_failures(
    live_store: JobStore,
    artifacts: ArtifactStore,
    dispatchers: list[Dispatcher],
    error: Exception,
    code: str,
    message: str,
    retryable: bool,
) -> None:
    dispatcher = await _start(dispatchers, live_store, artifacts, FakeModel(error=error))
    (job,) = (await live_store.submit(AGENT_A, new_job())).jobs
    dispatcher.notify()

    failed = await wait_for_status(live_store, AGENT_A, job.id, ["failed"])

    assert (failed.error_code, failed.error_message, failed.retryable) == (code, message, retryable)
    assert failed.stage == "failed"
    assert failed.result_path is None
    assert failed.timings is not None and "total_s" in failed.timings
    assert not (artifacts.root / "results").exists()


async def test_dispatcher_fails_a_job_whose_stored_params_the_model_refuses(
    live_store: JobStore, artifacts: ArtifactStore, dispatchers: list[Dispatcher]
) -> None:
    model = FakeModel()
    await _start(dispatchers, live_store, artifacts, model)
    (job,) = (await live_store.submit(AGENT_A, new_job(params={"num_inference_steps": 0}))).jobs

    failed = await wait_for_status(live_store, AGENT_A, job.id, ["failed"])

    assert (failed.error_code, failed.retryable) == ("invalid_request", False)
    assert failed.error_message == "num_inference_steps must be between 1 and 200, got 0"
    assert model.calls == []  # refused before it reached the model


async def test_dispatcher_requeues_a_job_whose_model_replica_died(
    live_store: JobStore, artifacts: ArtifactStore, dispatchers: list[Dispatcher]
) -> None:
    model = FakeModel(unavailable=2)  # two replicas die under the job; the third run succeeds
    await _start(dispatchers, live_store, artifacts, model)
    (job,) = (await live_store.submit(AGENT_A, new_job())).jobs

    done = await wait_for_status(live_store, AGENT_A, job.id, ["succeeded"])

    assert [call.job_id for call in model.calls] == [job.id] * 3
    assert (done.attempts, done.error_code) == (3, None)


async def test_dispatcher_fails_a_job_whose_model_replica_died_on_every_attempt(
    live_store: JobStore, artifacts: ArtifactStore, dispatchers: list[Dispatcher]
) -> None:
    model = FakeModel(unavailable=100)
    await _start(dispatchers, live_store, artifacts, model)
    (job,) = (await live_store.submit(AGENT_A, new_job())).jobs

    failed = await wait_for_status(live_store, AGENT_A, job.id, ["failed"])

    assert len(model.calls) == 3  # max_attempts
    assert (failed.error_code, failed.retryable, failed.attempts) == ("model_unavailable", True, 3)
    assert failed.error_message == "the model replica failed: ActorDiedError (on all 3 attempts)"


async def test_dispatcher_stops_generating_a_cancelled_job(
    live_store: JobStore, artifacts: ArtifactStore, dispatchers: list[Dispatcher]
) -> None:
    model = FakeModel(hold=True)
    dispatcher = await _start(dispatchers, live_store, artifacts, model, quick(lease_s=0.3))
    (job,) = (await live_store.submit(AGENT_A, new_job())).jobs
    await wait_until(lambda: model.active == 1)

    await live_store.cancel(AGENT_A, job.id)
    await wait_until(lambda: model.cancelled == [job.id])  # noticed at the next heartbeat
    model.release()
    await dispatcher.stop()

    after = await live_store.get(AGENT_A, job.id)
    assert after is not None
    assert (after.status, after.result_path) == ("cancelled", None)
    assert dispatcher.in_flight == frozenset()


async def test_dispatcher_drops_the_mesh_of_a_job_cancelled_while_generating(
    live_store: JobStore, artifacts: ArtifactStore, dispatchers: list[Dispatcher]
) -> None:
    model = FakeModel(hold=True)
    dispatcher = await _start(dispatchers, live_store, artifacts, model)  # heartbeat every second: not first
    (job,) = (await live_store.submit(AGENT_A, new_job())).jobs
    await wait_until(lambda: model.active == 1)

    await live_store.cancel(AGENT_A, job.id)
    model.release()
    await wait_until(lambda: dispatcher.in_flight == frozenset())  # its run ended: completion was refused

    after = await live_store.get(AGENT_A, job.id)
    assert after is not None
    assert (after.status, after.stage, after.result_path) == ("cancelled", "cancelled", None)
    assert list((artifacts.root / "results").rglob("*.glb")) == []


async def test_dispatcher_restart_recovers_a_crashed_job_exactly_once(
    engine: AsyncEngine, artifacts: ArtifactStore, dispatchers: list[Dispatcher]
) -> None:
    store = JobStore(engine, artifacts)
    settings = quick(lease_s=0.5)
    crashed_model = FakeModel(hold=True)
    first = await _start(dispatchers, store, artifacts, crashed_model, settings, worker_id="instance-1")
    (job,) = (await store.submit(AGENT_A, new_job())).jobs
    (other,) = (await store.submit(AGENT_B, new_job())).jobs
    await wait_until(lambda: crashed_model.active == 2)

    await first.kill()  # the process dies mid-generation: nothing is written
    assert (await store.get(AGENT_A, job.id)).lease_owner == "instance-1"  # type: ignore[union-attr]
    model = FakeModel()
    await _start(dispatchers, store, artifacts, model, settings, worker_id="instance-2")
    done = await wait_for_status(store, AGENT_A, job.id, ["succeeded"])
    other_done = await wait_for_status(store, AGENT_B, other.id, ["succeeded"])

    assert sorted(call.job_id for call in model.calls) == sorted([job.id, other.id])
    assert done.attempts == 2
    assert other_done.attempts == 2
    # The crashed instance's late completion is refused; the result stays the new one.
    assert (
        await store.complete(job.id, "instance-1", result_path="results/stale.glb", mesh_stats={}, timings={}) is False
    )
    assert (await store.get(AGENT_A, job.id)).result_path == done.result_path  # type: ignore[union-attr]
    assert len(load_mesh(artifacts.read_bytes(done.result_path), "glb").faces) == 80  # type: ignore[arg-type]
    # Only the completing run left a mesh behind.
    assert [f"results/{job.id}/{p.name}" for p in (artifacts.root / "results" / job.id).iterdir()] == [done.result_path]


async def test_dispatcher_stop_requeues_unfinished_jobs_without_using_an_attempt(
    live_store: JobStore, artifacts: ArtifactStore, dispatchers: list[Dispatcher]
) -> None:
    model = FakeModel(hold=True)
    dispatcher = await _start(dispatchers, live_store, artifacts, model)
    (job,) = (await live_store.submit(AGENT_A, new_job())).jobs
    await wait_until(lambda: model.active == 1)

    await dispatcher.stop(grace_s=0.05)

    requeued = await live_store.get(AGENT_A, job.id)
    assert requeued is not None
    assert (requeued.status, requeued.attempts, requeued.lease_owner) == ("queued", 0, None)
    assert model.cancelled == [job.id]


async def test_dispatcher_stop_waits_for_jobs_in_flight(
    live_store: JobStore, artifacts: ArtifactStore, dispatchers: list[Dispatcher]
) -> None:
    model = FakeModel(hold=True)
    dispatcher = await _start(dispatchers, live_store, artifacts, model)
    (job,) = (await live_store.submit(AGENT_A, new_job())).jobs
    await wait_until(lambda: model.active == 1)

    stopping = asyncio.create_task(dispatcher.stop(grace_s=5))
    await wait_until(lambda: dispatcher.stopping)
    model.release()
    await stopping

    assert (await live_store.get(AGENT_A, job.id)).status == "succeeded"  # type: ignore[union-attr]


async def test_dispatcher_expires_jobs_past_their_deadline(
    live_store: JobStore, artifacts: ArtifactStore, dispatchers: list[Dispatcher]
) -> None:
    model = FakeModel(hold=True)
    await _start(
        dispatchers, live_store, artifacts, model, quick(dispatcher_concurrency=1, maintenance_interval_s=0.05)
    )
    (busy,) = (await live_store.submit(AGENT_A, new_job())).jobs
    await wait_until(lambda: model.active == 1)
    (late,) = (await live_store.submit(AGENT_B, new_job(deadline_s=0.1))).jobs

    expired = await wait_for_status(live_store, AGENT_B, late.id, ["expired"])
    model.release()
    await wait_for_status(live_store, AGENT_A, busy.id, ["succeeded"])

    assert (expired.error_code, expired.attempts) == ("deadline_exceeded", 0)
    assert [call.job_id for call in model.calls] == [busy.id]


async def test_dispatcher_keeps_running_through_database_errors(
    sqlite_url: str, artifacts: ArtifactStore, dispatchers: list[Dispatcher], caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(sqlite_url)  # no schema yet: every round fails, as with a database outage
    store = JobStore(engine, artifacts)
    try:
        await _start(dispatchers, store, artifacts, FakeModel())
        await wait_until(lambda: "round failed" in caplog.text)

        await upgrade_schema(engine)  # the database is back
        (job,) = (await store.submit(AGENT_A, new_job())).jobs

        await wait_for_status(store, AGENT_A, job.id, ["succeeded"])
    finally:
        await dispatchers[0].stop()
        await engine.dispose()
