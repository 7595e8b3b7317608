"""A full or read-only data directory and a database that goes away: agents get 507/503 with a code and
Retry-After, never exception text or paths; no accepted job is lost; health checks do not fail on a blip.

Real conditions where the machine allows them: a small tmpfs mounted as the artifact directory (filled up,
remounted read-only), a Postgres database that stops accepting connections, a SQLite table that vanishes.
Where mounting is not allowed those tests skip; the stand-ins below (an ArtifactStore raising the OSError) run
everywhere.
"""

from __future__ import annotations

import asyncio
import errno
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from deployments.contract import GenerationRequest, Outcome
from serve_app.artifacts import ArtifactStore
from serve_app.auth.request_id import RequestIdMiddleware
from serve_app.config import JobSettings
from serve_app.db import make_engine
from serve_app.errors import exception_handlers
from serve_app.jobs import Dispatcher, JobStore
from tests.conftest import _pg_execute, fresh_postgres_database
from tests.jobs.helpers import AGENT_A, FakeModel, new_job, wait_for_status

from .conftest import b64, png_bytes, sphere_model
from .retention_helpers import App, start_app

UNAVAILABLE = "the service's storage is temporarily unavailable; retry later"
FULL = "the service's storage is full; nothing was stored, retry later"


def _error(response: httpx.Response, status: int, code: str, message: str, retry_after: str = "30") -> None:
    assert response.status_code == status, response.text
    assert response.json() == {
        "type": "unavailable_error",
        "code": code,
        "message": message,
        "retryable": True,
        "request_id": response.headers["x-request-id"],
    }
    assert response.headers["retry-after"] == retry_after


# ---- a small real disk ------------------------------------------------------------------------------------


def _mount(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["mount", *args], capture_output=True, check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs mounted where the app keeps its artifacts (the SQLite file stays outside it)."""
    mount_point = tmp_path / "data" / "artifacts"
    mount_point.mkdir(parents=True)
    mounted = _mount("-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mount_point))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(disk: Path, leave_bytes: int = 0) -> Path:
    """Fill the disk to the last byte, then free ``leave_bytes`` again; returns the filler file."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as handle:  # unbuffered: nothing left to flush at close
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    if leave_bytes:
        with filler.open("r+b") as handle:
            handle.truncate(filler.stat().st_size - leave_bytes)
    return filler


def _remount(disk: Path, mode: str) -> None:
    result = _mount("-o", f"remount,{mode}", str(disk))
    assert result.returncode == 0, result.stderr


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.fixture
async def paused_app(tmp_path: Path, small_disk: Path) -> AsyncIterator[App]:
    app = await start_app(tmp_path, dispatch=False)
    (small_disk / "inputs").mkdir(exist_ok=True)
    yield app
    await app.stop()


async def test_storage_failures_full_disk_answers_507_and_stores_nothing(paused_app: App, small_disk: Path) -> None:
    filler = _fill(small_disk, leave_bytes=4096)  # room for the first input of the batch, not the second
    items = {"items": [{"image": b64(png_bytes(color=(9, 9, 9, 255)))}, {"image": b64(png_bytes())}]}
    headers = {"Idempotency-Key": "batch-1"}

    response = await paused_app.client.post("/api/agent/batches", json=items, headers=headers)

    _error(response, 507, "insufficient_storage", FULL)
    assert (await paused_app.client.get("/api/agent/jobs")).json()["jobs"] == []
    assert _files(small_disk / "inputs") == []  # the first input was removed again; no temp file left
    # the idempotency key was released: the agent's retry, once there is room, is accepted
    filler.unlink()
    retried = await paused_app.client.post("/api/agent/batches", json=items, headers=headers)
    assert retried.status_code == 202, retried.text
    assert len(_files(small_disk / "inputs")) == 2


async def test_storage_failures_read_only_disk_answers_503(paused_app: App, small_disk: Path) -> None:
    _remount(small_disk, "ro")
    try:
        response = await paused_app.client.post("/api/agent/jobs", json={"image": b64(png_bytes())})
        _error(response, 503, "storage_unavailable", UNAVAILABLE)
        assert (await paused_app.client.get("/api/agent/jobs")).json()["jobs"] == []
    finally:
        _remount(small_disk, "rw")
    accepted = await paused_app.client.post("/api/agent/jobs", json={"image": b64(png_bytes())})
    assert accepted.status_code == 202, accepted.text


async def test_storage_failures_worker_that_cannot_write_a_result_keeps_the_job(
    tmp_path: Path, small_disk: Path
) -> None:
    first_call = asyncio.Event()
    go_on = asyncio.Event()
    calls: list[str | None] = []

    async def model(request: GenerationRequest) -> Outcome:
        calls.append(request.job_id)
        if len(calls) == 1:
            first_call.set()
            await go_on.wait()
        return await sphere_model(request)

    app = await start_app(tmp_path, generate=model, retention={"storage_retry_after_s": 1})
    try:
        job = (await app.client.post("/api/agent/jobs", json={"image": b64(png_bytes())})).json()
        await asyncio.wait_for(first_call.wait(), 30)
        _remount(small_disk, "ro")  # the mesh cannot be written now
        try:
            go_on.set()
            deadline = asyncio.get_running_loop().time() + 30
            while len(calls) < 2:  # back in the queue and claimed again after the pause, never failed
                view = (await app.client.get(f"/api/agent/jobs/{job['job_id']}")).json()
                assert view["status"] in ("queued", "running") and view["error"] is None, view
                assert asyncio.get_running_loop().time() < deadline, "the job was not retried"
                await asyncio.sleep(0.05)
        finally:
            _remount(small_disk, "rw")
        done = await app.wait_finished(job["job_id"])
        assert (done["status"], done["error"]) == ("succeeded", None)
        assert (await app.client.get(f"/api/agent/jobs/{job['job_id']}/result")).status_code == 200
    finally:
        await app.stop()


class FlakyArtifacts(ArtifactStore):
    """Refuses the first ``failures`` result writes with ``error`` (a stand-in for a full or read-only disk)."""

    def __init__(self, root: Path, error: int, failures: int) -> None:
        super().__init__(root)
        self.error = error
        self.failures = failures

    def put_bytes(self, relpath: str, data: bytes) -> Path:
        if relpath.startswith("results/") and self.failures > 0:
            self.failures -= 1
            raise OSError(self.error, "refused by the test", str(self.path(relpath)))
        return super().put_bytes(relpath, data)


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EROFS])
async def test_storage_failures_dispatcher_defers_a_job_whose_result_cannot_be_written(
    any_engine, tmp_path: Path, error: int
) -> None:
    artifacts = FlakyArtifacts(tmp_path / "artifacts", error, failures=2)
    store = JobStore(any_engine, artifacts, JobSettings(max_attempts=1))
    model = FakeModel()
    dispatcher = Dispatcher(store, artifacts, model, JobSettings(poll_interval_s=0.02), storage_retry_s=0.2)
    (job,) = (await store.submit(AGENT_A, new_job())).jobs
    await dispatcher.start()
    try:
        # max_attempts=1: had the failed writes counted as runs, the job would have failed after the first
        done = await wait_for_status(store, AGENT_A, job.id, ["succeeded", "failed"], timeout_s=30)
    finally:
        await dispatcher.stop()

    assert (done.status, done.error_code, len(model.calls)) == ("succeeded", None, 3)
    assert done.result_path is not None and artifacts.exists(done.result_path)


# ---- the database -----------------------------------------------------------------------------------------


async def test_storage_failures_database_error_in_a_handler_answers_503(tmp_path: Path) -> None:
    app = await start_app(tmp_path, dispatch=False)
    try:
        job = (await app.client.post("/api/agent/jobs", json={"image": b64(png_bytes())})).json()
        other = make_engine(app.config.resolved_database_url)
        async with other.begin() as conn:  # another process breaks the jobs table (auth's tables still work)
            await conn.execute(text("ALTER TABLE jobs RENAME TO jobs_gone"))
        try:
            read = await app.client.get(f"/api/agent/jobs/{job['job_id']}")
            submit = await app.client.post("/api/agent/jobs", json={"image": b64(png_bytes())})
            for response in (read, submit):
                _error(response, 503, "storage_unavailable", UNAVAILABLE)
                assert "jobs_gone" not in response.text and "sqlite" not in response.text.lower()
            # the refused submission left no input behind
            assert _files(app.config.artifacts_dir / "inputs") == [f"{job['job_id']}.png"]
        finally:
            async with other.begin() as conn:
                await conn.execute(text("ALTER TABLE jobs_gone RENAME TO jobs"))
            await other.dispose()
        assert (await app.client.get(f"/api/agent/jobs/{job['job_id']}")).status_code == 200
    finally:
        await app.stop()


async def _block_connections(database: str, allow: bool) -> None:
    await _pg_execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {"true" if allow else "false"}')
    if not allow:
        await _pg_execute(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}' "
            "AND pid <> pg_backend_pid()"
        )


@pytest.mark.postgres
async def test_storage_failures_postgres_going_away_is_ridden_out(tmp_path: Path) -> None:
    async with fresh_postgres_database() as url:
        database = url.rsplit("/", 1)[1]
        app = await start_app(tmp_path, database_url=url)
        try:
            first = (await app.client.post("/api/agent/jobs", json={"image": b64(png_bytes())})).json()
            assert (await app.wait_finished(first["job_id"]))["status"] == "succeeded"

            await _block_connections(database, allow=False)
            try:
                ready = await app.client.get("/readyz")
                assert (ready.status_code, ready.json()["code"]) == (503, "not_ready")
                # neither replica's health check fails: Serve would restart them for nothing
                await app.service.check_health()
                app.worker.check_health()
                # a signed request: the auth middleware's store is down first, answered 503 by it
                down = await app.client.get(f"/api/agent/jobs/{first['job_id']}")
                assert down.status_code == 503 and down.json()["retryable"] is True, down.text
                assert "retry-after" in down.headers
                for secret in (database, "asyncpg", "postgres", "Traceback"):
                    assert secret not in down.text
                await asyncio.sleep(0.3)  # a few dispatcher rounds fail meanwhile; the loop must survive them
                app.worker.check_health()
            finally:
                await _block_connections(database, allow=True)

            # back: the pools reconnect (pre-ping), the worker runs new jobs, nothing was lost
            second = await app.client.post("/api/agent/jobs", json={"image": b64(png_bytes())})
            assert second.status_code == 202, second.text
            assert (await app.wait_finished(second.json()["job_id"]))["status"] == "succeeded"
            assert (await app.client.get(f"/api/agent/jobs/{first['job_id']}")).json()["status"] == "succeeded"
        finally:
            await app.stop()


# ---- the error handlers -----------------------------------------------------------------------------------


class _FailingMiddleware:
    """Raises like the auth middleware's store would outside the router (Starlette's 500 path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/middleware":
            raise OperationalError("SELECT * FROM api_keys", {}, Exception("could not open /srv/orfeas/db"))
        await self.app(scope, receive, send)


def _sqlite_full() -> Exception:
    """The error SQLite really raises when its file cannot grow (capped with max_page_count here)."""
    engine = create_engine("sqlite://")
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x BLOB)"))
            conn.exec_driver_sql("PRAGMA max_page_count = 3")
            for _ in range(10):
                conn.execute(text("INSERT INTO t VALUES (randomblob(4000))"))
    except OperationalError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError("SQLite did not fill up")


def _app_raising() -> ASGIApp:
    errors: dict[str, Exception] = {
        "/db-full": _sqlite_full(),
        "/db": OperationalError("UPDATE jobs SET x", {}, Exception("/var/lib/orfeas/orfeas.db is locked")),
        "/full": OSError(errno.ENOSPC, "No space left on device", "/srv/orfeas/artifacts/inputs/x.png"),
        "/readonly": OSError(errno.EROFS, "Read-only file system", "/srv/orfeas/artifacts/inputs/x.png"),
        "/bug": RuntimeError("unexpected state in /srv/orfeas/secret.py"),
    }

    async def boom(request: Request) -> Response:
        raise errors[request.url.path]

    app = Starlette(
        routes=[Route(path, boom) for path in (*errors, "/middleware")],
        middleware=[Middleware(_FailingMiddleware)],
        exception_handlers=exception_handlers(),  # type: ignore[arg-type]
    )
    return RequestIdMiddleware(app)


@pytest.mark.parametrize(
    ("path", "status", "code", "message"),
    [
        ("/db", 503, "storage_unavailable", UNAVAILABLE),
        ("/middleware", 503, "storage_unavailable", UNAVAILABLE),
        ("/full", 507, "insufficient_storage", FULL),
        ("/db-full", 507, "insufficient_storage", FULL),
        ("/readonly", 503, "storage_unavailable", UNAVAILABLE),
    ],
)
async def test_storage_failures_handlers_map_store_errors_without_internals(path, status, code, message) -> None:
    transport = httpx.ASGITransport(app=_app_raising(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get(path)

    _error(response, status, code, message)
    assert "/srv" not in response.text and "/var" not in response.text and "SELECT" not in response.text


async def test_storage_failures_unexpected_errors_stay_a_500_without_internals() -> None:
    transport = httpx.ASGITransport(app=_app_raising(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/bug")

    assert response.status_code == 500
    assert response.json() == {
        "type": "api_error",
        "code": "internal_error",
        "message": "internal error; quote the request id",
        "retryable": True,
        "request_id": response.headers["x-request-id"],
    }


async def test_storage_failures_worker_health_fails_only_when_its_loop_died(tmp_path: Path) -> None:
    app = await start_app(tmp_path)
    try:
        app.worker.check_health()
        loop = app.worker.dispatcher.loop_task
        assert loop is not None
        loop.cancel()  # what a bug escaping the loop would leave: a replica restart is the cure
        await asyncio.gather(loop, return_exceptions=True)
        with pytest.raises(RuntimeError, match="dispatcher loop stopped"):
            app.worker.check_health()
    finally:
        await app.stop()
