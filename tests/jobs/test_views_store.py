"""Multiview jobs in the store (SQLite and Postgres): each extra view is an input artifact beside the image,
recorded on the row, read back by the dispatcher for the model, and deleted with the image by every terminal
transition and by the retention sweeper."""

from __future__ import annotations

import os
import time

import pytest

from deployments.contract import ErrorCode
from serve_app.artifacts import ArtifactStore
from serve_app.config import JobSettings
from serve_app.jobs import Dispatcher, JobStore, QueueFull
from serve_app.jobs.records import NewJob, ViewImage
from serve_app.retention import RetentionSettings, Sweeper, input_owner, input_relpath
from tests.jobs.helpers import AGENT_A, IMAGE, FakeModel, ManualClock, new_job, wait_for_status

LEFT = b"left view bytes"
BACK = b"back view bytes, a JPEG"


def _multiview(**overrides: object) -> NewJob:
    return new_job(views={"left": ViewImage(LEFT), "back": ViewImage(BACK, "jpg")}, **overrides)


async def test_views_store_writes_each_view_beside_the_image(store: JobStore, artifacts: ArtifactStore) -> None:
    (job,) = (await store.submit(AGENT_A, _multiview())).jobs

    assert job.view_paths == {"left": f"inputs/{job.id}.left.png", "back": f"inputs/{job.id}.back.jpg"}
    assert job.view_names == ("front", "left", "back")
    stored = await store.get(AGENT_A, job.id)
    assert stored is not None and stored.view_paths == job.view_paths
    assert artifacts.read_bytes(job.input_path) == IMAGE
    assert artifacts.read_bytes(job.view_paths["left"]) == LEFT
    assert artifacts.read_bytes(job.view_paths["back"]) == BACK


async def test_views_store_single_image_job_has_no_view_paths(store: JobStore) -> None:
    (job,) = (await store.submit(AGENT_A, new_job())).jobs

    stored = await store.get(AGENT_A, job.id)
    assert stored is not None
    assert (stored.view_paths, stored.view_names, stored.input_paths) == (None, ("front",), (job.input_path,))


async def test_views_store_refused_submission_leaves_no_view_behind(
    engine, artifacts: ArtifactStore, clock: ManualClock
) -> None:
    store = JobStore(engine, artifacts, JobSettings(max_queued=1), clock=clock)
    await store.submit(AGENT_A, new_job())

    with pytest.raises(QueueFull):
        await store.submit(AGENT_A, _multiview())

    assert len(artifacts.list_files("inputs")) == 1  # the first job's image only


async def test_views_store_cancel_deletes_every_view(store: JobStore, artifacts: ArtifactStore) -> None:
    (job,) = (await store.submit(AGENT_A, _multiview())).jobs

    await store.cancel(AGENT_A, job.id)

    assert artifacts.list_files("inputs") == []


async def test_views_store_requeue_keeps_the_views_then_giving_up_deletes_them(
    store: JobStore, artifacts: ArtifactStore
) -> None:
    (job,) = (await store.submit(AGENT_A, _multiview())).jobs
    for attempt in range(store.settings.max_attempts):
        (claimed,) = await store.claim("w1", 1, 60)
        status = await store.requeue(claimed.id, "w1", code=ErrorCode.MODEL_UNAVAILABLE, message="lost")
        left_alone = attempt < store.settings.max_attempts - 1
        assert status == ("queued" if left_alone else "failed")
        assert all(artifacts.exists(relpath) for relpath in job.input_paths) == left_alone


async def test_views_dispatcher_hands_each_view_to_the_model(store: JobStore, artifacts: ArtifactStore) -> None:
    model = FakeModel()
    (job,) = (await store.submit(AGENT_A, _multiview(seed=11))).jobs
    dispatcher = Dispatcher(store, artifacts, model, JobSettings(poll_interval_s=0.02))
    await dispatcher.start()
    try:
        done = await wait_for_status(store, AGENT_A, job.id, ["succeeded", "failed"])
    finally:
        await dispatcher.stop()

    assert done.status == "succeeded"
    (request,) = model.calls
    assert (request.image, dict(request.views), request.seed) == (IMAGE, {"left": LEFT, "back": BACK}, 11)
    assert not any(artifacts.exists(relpath) for relpath in job.input_paths)


async def test_views_sweeper_deletes_views_a_crash_left_behind(
    engine, artifacts: ArtifactStore, clock: ManualClock
) -> None:
    store = JobStore(engine, artifacts, JobSettings(max_queued=20), clock=clock, retention=RetentionSettings())
    (queued,) = (await store.submit(AGENT_A, _multiview())).jobs
    (ended,) = (await store.submit(AGENT_A, _multiview())).jobs
    await store.cancel(AGENT_A, ended.id)
    for relpath in ended.input_paths:  # a crash between the transition and its deletes
        artifacts.put_bytes(relpath, b"left behind")
    orphan = "job_" + "0" * 32  # a crash between writing the inputs and committing the row
    for relpath in (input_relpath(orphan, "png"), input_relpath(orphan, "png", "right")):
        artifacts.put_bytes(relpath, b"no row")
        os.utime(artifacts.path(relpath), (time.time() - 7200, time.time() - 7200))

    report = await Sweeper(store, artifacts, store.retention).sweep()

    assert report.inputs == 5
    assert sorted(f.relpath for f in artifacts.list_files("inputs")) == sorted(queued.input_paths)


def test_views_input_paths_name_their_job() -> None:
    job_id = "job_" + "ab" * 16
    assert input_relpath(job_id, "png") == f"inputs/{job_id}.png"
    assert input_relpath(job_id, "jpg", "left") == f"inputs/{job_id}.left.jpg"
    assert input_owner(input_relpath(job_id, "jpg", "left")) == job_id
    assert input_owner(input_relpath(job_id, "png")) == job_id


def test_views_new_job_refuses_front_and_unknown_views() -> None:
    with pytest.raises(ValueError, match="unknown view 'front'"):
        new_job(views={"front": ViewImage(LEFT)})
    with pytest.raises(ValueError, match="unknown view 'top'"):
        new_job(views={"top": ViewImage(LEFT)})
    with pytest.raises(TypeError, match="must be a ViewImage"):
        new_job(views={"left": LEFT})
    with pytest.raises(ValueError, match="must not be empty"):
        ViewImage(b"")
    with pytest.raises(ValueError, match="short lowercase extension"):
        ViewImage(LEFT, "../png")
