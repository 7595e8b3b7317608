"""Retention: inputs go when their job ends, results and converted formats after the TTL (410 afterwards),
the sweeper cleans what crashes left behind, and the audit log rotates with several writer processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from deployments.contract import ErrorCode, GenerationError
from serve_app.artifacts import ArtifactStore
from serve_app.config import JobSettings
from serve_app.jobs import Dispatcher, JobStore
from serve_app.retention import RetentionSettings, Sweeper
from serve_app.views import iso
from tests.jobs.helpers import AGENT_A, FakeModel, ManualClock, new_job, wait_for_status

from .conftest import b64, png_bytes
from .retention_helpers import finished_at, start_app

REPO = Path(__file__).resolve().parents[2]
DAY = 24 * 3600.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


@pytest.fixture
def store(any_engine: AsyncEngine, artifacts: ArtifactStore, clock: ManualClock) -> JobStore:
    """On SQLite and on Postgres: the terminal transitions and the sweeper's queries run on both."""
    settings = JobSettings(max_queued=50, default_deadline_s=600, max_attempts=2)
    return JobStore(any_engine, artifacts, settings, clock=clock, retention=RetentionSettings(result_ttl_s=DAY))


async def _run_one(store: JobStore, artifacts: ArtifactStore, model: FakeModel, count: int = 1) -> list[str]:
    """Submit ``count`` jobs and let a dispatcher run them to a terminal state; returns their ids."""
    jobs = (await store.submit_batch(AGENT_A, [new_job(seed=s) for s in range(count)])).jobs
    dispatcher = Dispatcher(store, artifacts, model, JobSettings(poll_interval_s=0.02))
    await dispatcher.start()
    try:
        for job in jobs:
            await wait_for_status(store, AGENT_A, job.id, ["succeeded", "failed"])
    finally:
        await dispatcher.stop()
    return [job.id for job in jobs]


# ---- inputs ---------------------------------------------------------------------------------------------


async def test_retention_input_kept_while_queued_and_requeued(store: JobStore, artifacts: ArtifactStore) -> None:
    (job,) = (await store.submit(AGENT_A, new_job())).jobs
    (claimed,) = await store.claim("w1", 1, 60)

    # the model replica died under it: back to the queue, and the next run needs the image
    assert await store.requeue(claimed.id, "w1", code=ErrorCode.MODEL_UNAVAILABLE, message="lost") == "queued"

    assert artifacts.exists(job.input_path)


async def test_retention_input_deleted_when_the_job_succeeds(store: JobStore, artifacts: ArtifactStore) -> None:
    (job_id,) = await _run_one(store, artifacts, FakeModel())

    job = await store.get(AGENT_A, job_id)
    assert job is not None and job.status == "succeeded"
    assert not artifacts.exists(job.input_path)
    assert job.result_path is not None and artifacts.exists(job.result_path)


async def test_retention_input_deleted_when_the_job_fails(store: JobStore, artifacts: ArtifactStore) -> None:
    (job_id,) = await _run_one(store, artifacts, FakeModel(error=GenerationError(ErrorCode.EMPTY_SURFACE, "none")))

    job = await store.get(AGENT_A, job_id)
    assert job is not None and job.status == "failed"
    assert not artifacts.exists(job.input_path)


async def test_retention_input_deleted_when_cancelled_or_expired(
    store: JobStore, artifacts: ArtifactStore, clock: ManualClock
) -> None:
    (cancelled,) = (await store.submit(AGENT_A, new_job())).jobs
    (expiring,) = (await store.submit(AGENT_A, new_job(deadline_s=30))).jobs

    await store.cancel(AGENT_A, cancelled.id)
    clock.advance(31)
    assert await store.expire_overdue() == [expiring.id]

    assert not artifacts.exists(cancelled.input_path)
    assert not artifacts.exists(expiring.input_path)


async def test_retention_input_and_stale_meshes_deleted_when_a_lost_job_is_given_up(
    store: JobStore, artifacts: ArtifactStore, clock: ManualClock
) -> None:
    (job,) = (await store.submit(AGENT_A, new_job())).jobs
    for attempt in range(2):  # max_attempts=2: two workers die holding it, one after writing its mesh
        assert [j.id for j in await store.claim(f"w{attempt}", 1, 10)] == [job.id]
        artifacts.put_bytes(f"results/{job.id}/mesh-run{attempt}.glb", b"a mesh its run never completed with")
        clock.advance(11)
        requeued, failed = await store.requeue_expired_leases()
        assert artifacts.exists(job.input_path) == (attempt == 0)

    assert (requeued, failed) == ([], [job.id])
    # ended without a result: the crashed runs' meshes go with it
    assert not (artifacts.root / "results" / job.id).exists()


async def test_retention_input_that_cannot_be_deleted_does_not_undo_the_transition(
    any_engine: AsyncEngine, tmp_path: Path, clock: ManualClock
) -> None:
    class UndeletableArtifacts(ArtifactStore):
        def delete(self, relpath: str) -> bool:
            return False  # what ArtifactStore.delete answers when the disk refuses (read-only, I/O error)

    artifacts = UndeletableArtifacts(tmp_path / "artifacts")
    store = JobStore(any_engine, artifacts, JobSettings(), clock=clock)
    (job,) = (await store.submit(AGENT_A, new_job())).jobs

    cancelled = await store.cancel(AGENT_A, job.id)

    assert cancelled is not None and cancelled.status == "cancelled"
    assert artifacts.exists(job.input_path)  # left for the sweeper


# ---- results: TTL, 410, sweeper ---------------------------------------------------------------------------


async def test_retention_result_expires_at_is_finished_at_plus_ttl(store: JobStore, artifacts: ArtifactStore) -> None:
    (job_id,) = await _run_one(store, artifacts, FakeModel())

    job = await store.get(AGENT_A, job_id)
    assert job is not None and job.finished_at is not None
    assert job.result_expires_at == job.finished_at + timedelta(days=1)
    queued = (await store.submit(AGENT_A, new_job())).jobs[0]
    assert (await store.get(AGENT_A, queued.id)).result_expires_at is None  # type: ignore[union-attr]


async def test_retention_sweeper_deletes_expired_results_once(
    store: JobStore, artifacts: ArtifactStore, clock: ManualClock
) -> None:
    (old,) = await _run_one(store, artifacts, FakeModel())
    old_job = await store.get(AGENT_A, old)
    assert old_job is not None and old_job.result_path is not None
    artifacts.mesh_file(old_job.result_path, "obj")  # a converted format cached next to the GLB
    clock.advance(DAY / 2)
    (young,) = await _run_one(store, artifacts, FakeModel())
    clock.advance(DAY / 2 + 1)  # the first is a second past its TTL, the second half a day short of it

    # two workers sweep at once: every delete is idempotent, each result is marked gone by exactly one
    sweepers = [Sweeper(store, artifacts, store.retention) for _ in range(2)]
    reports = await asyncio.gather(*(s.sweep() for s in sweepers))

    assert sum(r.results for r in reports) == 1
    assert not (artifacts.root / "results" / old).exists()
    expired = await store.get(AGENT_A, old)
    assert expired is not None and (expired.status, expired.result_path) == ("succeeded", None)
    assert store.result_expired(expired)
    kept = await store.get(AGENT_A, young)
    assert kept is not None and kept.result_path is not None and artifacts.exists(kept.result_path)
    assert not store.result_expired(kept)
    assert (await sweepers[0].sweep()).results == 0


async def test_retention_ttl_none_keeps_results_forever(
    any_engine: AsyncEngine, artifacts: ArtifactStore, clock: ManualClock
) -> None:
    store = JobStore(any_engine, artifacts, JobSettings(), clock=clock, retention=RetentionSettings(result_ttl_s=None))
    (job_id,) = await _run_one(store, artifacts, FakeModel())
    clock.advance(365 * DAY)

    report = await Sweeper(store, artifacts, store.retention).sweep()

    job = await store.get(AGENT_A, job_id)
    assert report.results == 0 and job is not None and job.result_expires_at is None
    assert not store.result_expired(job) and job.result_path is not None and artifacts.exists(job.result_path)


async def test_retention_sweeper_removes_orphaned_inputs_and_temp_files(
    store: JobStore, artifacts: ArtifactStore
) -> None:
    (queued,) = (await store.submit(AGENT_A, new_job())).jobs
    (ended,) = (await store.submit(AGENT_A, new_job())).jobs
    await store.cancel(AGENT_A, ended.id)
    artifacts.put_bytes(ended.input_path, b"left by a crash after the transition")
    artifacts.put_bytes("inputs/job_" + "0" * 32 + ".png", b"a crash before the row was committed")
    artifacts.put_bytes("inputs/job_" + "1" * 32 + ".png", b"a submission committing right now")
    artifacts.put_bytes("inputs/.tmp-job_x.png.abc", b"an interrupted atomic write")
    two_hours_ago = time.time() - 7200
    for name in ("job_" + "0" * 32 + ".png", ".tmp-job_x.png.abc"):
        os.utime(artifacts.path(f"inputs/{name}"), (two_hours_ago, two_hours_ago))

    report = await Sweeper(store, artifacts, store.retention).sweep()

    assert (report.inputs, report.temp_files) == (2, 1)
    assert sorted(f.relpath for f in artifacts.list_files("inputs")) == sorted(
        [queued.input_path, "inputs/job_" + "1" * 32 + ".png"]
    )


# ---- through the API --------------------------------------------------------------------------------------


@pytest.fixture
async def short_ttl_app(tmp_path: Path) -> AsyncIterator:
    app = await start_app(tmp_path, retention={"result_ttl_s": 0.5})
    yield app
    await app.stop()


async def test_retention_result_answers_410_once_expired_before_any_sweep(short_ttl_app) -> None:
    client = short_ttl_app.client
    job = (await client.post("/api/agent/jobs", json={"image": b64(png_bytes())})).json()
    done = await short_ttl_app.wait_finished(job["job_id"])
    assert done["status"] == "succeeded"
    assert done["result_expires_at"] == iso(finished_at(done) + timedelta(seconds=0.5))
    await asyncio.sleep(1.0)  # past the TTL; no sweeper runs in this app

    response = await client.get(f"/api/agent/jobs/{job['job_id']}/result", params={"format": "obj"})

    assert response.status_code == 410
    assert response.json() == {
        "type": "not_found_error",
        "code": "result_expired",
        "message": f"the result of job {job['job_id']} expired at {done['result_expires_at']}; "
        "submit the job again to regenerate it",
        "retryable": False,
        "request_id": response.headers["x-request-id"],
    }
    # expiry is decided from finished_at: the files are still there, the sweeper deletes them later
    assert (short_ttl_app.config.artifacts_dir / "results" / job["job_id"]).is_dir()
    await short_ttl_app.worker.sweeper.sweep()
    assert not (short_ttl_app.config.artifacts_dir / "results" / job["job_id"]).exists()
    after = await client.get(f"/api/agent/jobs/{job['job_id']}/result")
    assert (after.status_code, after.json()["code"]) == (410, "result_expired")


async def test_retention_result_served_before_expiry_with_its_expiry_in_the_view(tmp_path: Path) -> None:
    app = await start_app(tmp_path)  # the default TTL: 7 days
    try:
        job = (await app.client.post("/api/agent/jobs", json={"image": b64(png_bytes())})).json()
        done = await app.wait_finished(job["job_id"])
        response = await app.client.get(f"/api/agent/jobs/{job['job_id']}/result")
        assert response.status_code == 200
        assert done["result_expires_at"] == iso(finished_at(done) + timedelta(days=7))
        assert not (app.config.artifacts_dir / "inputs").exists() or not list(
            (app.config.artifacts_dir / "inputs").iterdir()
        )
    finally:
        await app.stop()


# ---- the audit log ----------------------------------------------------------------------------------------

_WRITER = """
import logging, sys
from pathlib import Path
from serve_app.retention import RetentionSettings
from serve_app.service import attach_audit_file

path, writer, lines = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
attach_audit_file(path, RetentionSettings(audit_max_bytes=int(sys.argv[4]), audit_backups=int(sys.argv[5])))
audit = logging.getLogger("orfeas.auth")
for n in range(lines):
    audit.info('{"writer": "%s", "n": %d, "pad": "%s"}', writer, n, "x" * 60)
    if n % 100 == 0:  # a child logger's plain-text line is not a decision: it stays out of the file
        logging.getLogger("orfeas.auth.internal").warning("auth store failed: DBAPIError")
"""


def _write_from_processes(path: Path, writers: int, lines: int, max_bytes: int, backups: int) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), f"w{w}", str(lines), str(max_bytes), str(backups)], cwd=REPO
        )
        for w in range(writers)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * writers


def test_retention_audit_log_rotates_safely_with_several_writer_processes(tmp_path: Path) -> None:
    path = tmp_path / "auth-audit.jsonl"
    # 3 x 300 lines of ~100 bytes (~90 KB) into files of 8 KiB: about eleven rotations, all kept
    _write_from_processes(path, writers=3, lines=300, max_bytes=8192, backups=20)

    files = [path, *sorted(tmp_path.glob("auth-audit.jsonl.*"), key=lambda p: int(p.suffix[1:]))]
    entries = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    # every line once, none torn or interleaved; no file past the limit by more than one line
    assert sorted((e["writer"], e["n"]) for e in entries) == sorted((f"w{w}", n) for w in range(3) for n in range(300))
    assert len(files) >= 10
    assert all(f.stat().st_size <= 8192 + 200 for f in files)


def test_retention_audit_log_keeps_only_its_backups(tmp_path: Path) -> None:
    path = tmp_path / "auth-audit.jsonl"
    _write_from_processes(path, writers=2, lines=300, max_bytes=4096, backups=2)

    assert sorted(p.name for p in tmp_path.glob("auth-audit.jsonl*")) == [
        "auth-audit.jsonl",
        "auth-audit.jsonl.1",
        "auth-audit.jsonl.2",
    ]
