"""The durable job store: what the ingress submits and reads, and what dispatchers claim and finish.

Every state change is one guarded statement (``UPDATE ... WHERE status = ... [AND lease_owner = ...]``), so
the outcome of a race is decided by the database on both backends: a job is claimed by one worker, and a
worker that lost its lease (expired and requeued, or the job was cancelled) cannot complete or fail it.
Times come from an injected clock (naive UTC) so that tests can move it.

Every terminal transition (complete, fail, cancel, expire, give up) writes the webhook deliveries of the jobs
it ended in its own transaction (``serve_app.webhooks.outbox``), so none is lost to a crash after the commit,
and deletes the job's input image (and a multiview job's other views) right after its update commits: inputs
are only needed while the job may still run. One that ends without a result also deletes
``results/<job_id>/``, where a run that crashed before completing may have left its mesh. A delete that fails
(the disk is read-only, the process dies) leaves the file to the retention sweeper; it never undoes the
transition.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, case, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from deployments.contract import JOB_STATUSES, MAX_SEED, ErrorCode
from serve_app.artifact_backend import ArtifactBackend
from serve_app.config import JobSettings
from serve_app.jobs import idempotency
from serve_app.jobs.claiming import claim_statement
from serve_app.jobs.models import BATCHES, JOBS
from serve_app.jobs.records import (
    AgentQueueFull,
    BatchRecord,
    JobPage,
    JobRecord,
    NewJob,
    QueueFull,
    QueueQuota,
    Submission,
)
from serve_app.quota_store import lock_agent
from serve_app.retention import RESULTS_DIR, RetentionSettings, input_relpath

# a module, not its function: the outbox imports the jobs package (its tables) and so, in turn, this module
from serve_app.webhooks import outbox as webhook_outbox

Clock = Callable[[], datetime]
MAX_PAGE_SIZE = 200
# What a terminal transition returns of the jobs it ended: enough to delete every input they no longer need.
_INPUT_COLUMNS = (JOBS.c.id, JOBS.c.input_path, JOBS.c.view_paths)

logger = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class JobStore:
    def __init__(
        self,
        engine: AsyncEngine,
        artifacts: ArtifactBackend,
        settings: JobSettings | None = None,
        *,
        clock: Clock = utcnow,
        retention: RetentionSettings | None = None,
    ) -> None:
        self._engine = engine
        self._artifacts = artifacts
        self.settings = settings or JobSettings()
        self.retention = retention or RetentionSettings()
        self._clock = clock
        self._row_locks = engine.dialect.name == "postgresql"

    def now(self) -> datetime:
        """The store's clock (naive UTC), for timestamps that must agree with the rows'."""
        return self._clock()

    def result_expires_at(self, job: JobRecord) -> datetime | None:
        """When a succeeded job's result stops being served (None: not succeeded, or kept forever)."""
        ttl = self.retention.result_ttl
        if job.status != "succeeded" or job.finished_at is None or ttl is None:
            return None
        return job.finished_at + ttl

    def result_expired(self, job: JobRecord) -> bool:
        """Decided from ``finished_at``, so it holds from the moment of expiry, before any sweep; a result the
        sweeper already deleted (``result_path`` cleared) is expired too."""
        expires_at = self.result_expires_at(job)
        return job.result_path is None or (expires_at is not None and self._clock() >= expires_at)

    # ---- agent side -------------------------------------------------------------------------------------

    async def submit(
        self,
        agent: str,
        job: NewJob,
        *,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        agent_quota: int | None = None,
    ) -> Submission:
        """Store one job. ``agent_quota``: the most queued jobs ``agent`` may have (None: no per-agent bound)."""
        return await self._submit(agent, [job], False, idempotency_key, request_hash, agent_quota)

    async def submit_batch(
        self,
        agent: str,
        jobs: Sequence[NewJob],
        *,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        agent_quota: int | None = None,
    ) -> Submission:
        """Store the jobs of one batch, all or none; each counts against ``agent_quota``."""
        if not jobs:
            raise ValueError("a batch needs at least one item")
        return await self._submit(agent, list(jobs), True, idempotency_key, request_hash, agent_quota)

    async def _submit(
        self,
        agent: str,
        jobs: list[NewJob],
        as_batch: bool,
        key: str | None,
        request_hash: str | None,
        agent_quota: int | None,
    ) -> Submission:
        if (key is None) != (request_hash is None):
            raise ValueError("idempotency_key and request_hash go together")
        now = self._clock()
        # 1. Reserve the idempotency key (or replay the request that used it): a replay creates nothing, so
        #    no quota refuses it.
        if key is not None and request_hash is not None:
            done = await idempotency.reserve(
                self._engine,
                agent,
                key,
                request_hash,
                now=now,
                ttl_s=self.settings.idempotency_ttl_s,
                pending_timeout_s=self.settings.idempotency_pending_timeout_s,
            )
            if done is not None:
                return await self._replay(agent, done["job_id"], done["batch_id"])
        batch_id = "batch_" + secrets.token_hex(16) if as_batch else None
        rows = [self._new_row(agent, job, now, batch_id, index) for index, job in enumerate(jobs)]
        written: list[str] = []
        try:
            # 2. Bound the queue before touching the disk.
            queued = await self.count_queued()
            if queued + len(rows) > self.settings.max_queued:
                raise QueueFull(queued, self.settings.max_queued, self.settings.queue_full_retry_after_s)
            if agent_quota is not None:
                # a cheap early refusal; the exact check is in the transaction below
                async with self._engine.connect() as conn:
                    await _check_agent_quota(conn, agent, agent_quota, adding=len(rows))
            # 3. Inputs first: a job row never points at a missing image.
            await asyncio.to_thread(self._write_inputs, rows, jobs, written)
            # 4. Batch, jobs and the idempotency record commit together.
            async with self._engine.begin() as conn:
                if agent_quota is not None:
                    await lock_agent(conn, "queued_jobs", agent)
                if batch_id is not None:
                    await conn.execute(insert(BATCHES).values(id=batch_id, agent=agent, size=len(rows), created_at=now))
                await conn.execute(insert(JOBS), rows)
                quota = None
                if agent_quota is not None:
                    # Counted after the insert, in its transaction: serialised by SQLite's write lock (the
                    # insert took it) or by the agent's advisory lock on Postgres, so the bound is exact.
                    queued_now = await _check_agent_quota(conn, agent, agent_quota, adding=0, ours=len(rows))
                    quota = QueueQuota(agent_quota, queued_now)
                if key is not None:
                    single = None if as_batch else rows[0]["id"]
                    await idempotency.finish(conn, agent, key, job_id=single, batch_id=batch_id)
        except BaseException:
            for relpath in written:
                self._artifacts.delete(relpath)
            if key is not None:
                await idempotency.release(self._engine, agent, key)
            raise
        return Submission(jobs=tuple(JobRecord(**row) for row in rows), batch_id=batch_id, replayed=False, quota=quota)

    def _new_row(self, agent: str, job: NewJob, now: datetime, batch_id: str | None, index: int) -> dict[str, Any]:
        job_id = "job_" + secrets.token_hex(16)
        deadline_s = job.deadline_s if job.deadline_s is not None else self.settings.default_deadline_s
        return {
            "id": job_id,
            "agent": agent,
            "batch_id": batch_id,
            "batch_index": index,
            "status": "queued",
            "stage": "queued",
            "progress": 0,
            "priority": job.priority,
            # A drawn seed is stored like a given one, so the job can be reproduced.
            "seed": job.seed if job.seed is not None else secrets.randbelow(MAX_SEED + 1),
            "params": dict(job.params),
            "model": job.model,
            "input_path": input_relpath(job_id, job.image_format),
            "view_paths": (
                {name: input_relpath(job_id, view.format, name) for name, view in job.views.items()}
                if job.views
                else None
            ),
            "created_at": now,
            "started_at": None,
            "claimed_at": None,
            "finished_at": None,
            "deadline_at": now + timedelta(seconds=deadline_s) if deadline_s is not None else None,
            "lease_owner": None,
            "lease_expires_at": None,
            "attempts": 0,
            "error_code": None,
            "error_message": None,
            "retryable": None,
            "mesh_stats": None,
            "timings": None,
            "result_path": None,
        }

    def _write_inputs(self, rows: list[dict[str, Any]], jobs: list[NewJob], written: list[str]) -> None:
        for row, job in zip(rows, jobs, strict=True):
            self._artifacts.put_bytes(row["input_path"], job.image)
            written.append(row["input_path"])
            for name, view in job.views.items():
                self._artifacts.put_bytes(row["view_paths"][name], view.data)
                written.append(row["view_paths"][name])

    async def _replay(self, agent: str, job_id: str | None, batch_id: str | None) -> Submission:
        if batch_id is not None:
            batch = await self.get_batch(agent, batch_id)
            jobs = batch.jobs if batch is not None else ()
        else:
            job = await self.get(agent, job_id) if job_id is not None else None
            jobs = (job,) if job is not None else ()
        return Submission(jobs=jobs, batch_id=batch_id, replayed=True)

    async def get(self, agent: str, job_id: str) -> JobRecord | None:
        """The job if it belongs to ``agent``; another agent's job is indistinguishable from a missing one."""
        rows = await self._select(select(JOBS).where(JOBS.c.id == job_id, JOBS.c.agent == agent))
        return rows[0] if rows else None

    async def get_batch(self, agent: str, batch_id: str) -> BatchRecord | None:
        async with self._engine.connect() as conn:
            batch = (
                (await conn.execute(select(BATCHES).where(BATCHES.c.id == batch_id, BATCHES.c.agent == agent)))
                .mappings()
                .first()
            )
        if batch is None:
            return None
        jobs = await self._select(select(JOBS).where(JOBS.c.batch_id == batch_id).order_by(JOBS.c.batch_index))
        return BatchRecord(id=batch["id"], agent=batch["agent"], created_at=batch["created_at"], jobs=tuple(jobs))

    async def list_jobs(
        self, agent: str, *, status: str | None = None, cursor: str | None = None, limit: int = 50
    ) -> JobPage:
        """The agent's jobs, newest first, ``limit`` per page; pass ``next_cursor`` back for the next page."""
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
        stmt = select(JOBS).where(JOBS.c.agent == agent)
        if status is not None:
            if status not in JOB_STATUSES:
                raise ValueError(f"status must be one of {list(JOB_STATUSES)}, got {status!r}")
            stmt = stmt.where(JOBS.c.status == status)
        if cursor is not None:
            created_at, job_id = _decode_cursor(cursor)
            stmt = stmt.where(
                or_(JOBS.c.created_at < created_at, and_(JOBS.c.created_at == created_at, JOBS.c.id < job_id))
            )
        jobs = await self._select(stmt.order_by(JOBS.c.created_at.desc(), JOBS.c.id.desc()).limit(limit + 1))
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return JobPage(jobs=tuple(jobs), next_cursor=_encode_cursor(jobs[-1]) if more else None)

    async def cancel(self, agent: str, job_id: str) -> JobRecord | None:
        """Cancel a queued or running job; returns the job as it now is (a finished one is left unchanged).

        A running job is marked cancelled at once: its worker's completion is then refused, and the worker
        notices at its next heartbeat and stops generating.
        """
        await self._finish(
            update(JOBS)
            .where(JOBS.c.id == job_id, JOBS.c.agent == agent, JOBS.c.status.in_(("queued", "running")))
            .values(
                status="cancelled",
                stage="cancelled",
                finished_at=self._clock(),
                lease_owner=None,
                lease_expires_at=None,
            )
        )
        return await self.get(agent, job_id)

    async def count_queued(self) -> int:
        async with self._engine.connect() as conn:
            return (await conn.execute(select(func.count()).where(JOBS.c.status == "queued"))).scalar_one()

    # ---- worker side ------------------------------------------------------------------------------------

    async def claim(self, worker_id: str, limit: int, lease_s: float) -> list[JobRecord]:
        """Claim up to ``limit`` queued jobs (fairness order in ``claiming``), leased for ``lease_s``."""
        if limit < 1:
            return []
        stmt = claim_statement(
            worker_id=worker_id, limit=limit, lease_s=lease_s, now=self._clock(), row_locks=self._row_locks
        )
        async with self._engine.begin() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        jobs = [JobRecord.from_row(row) for row in rows]
        # RETURNING has no order; give callers a stable one.
        return sorted(jobs, key=lambda j: (j.priority != "critical", j.created_at, j.batch_index, j.id))

    async def heartbeat(self, worker_id: str, job_ids: Sequence[str], lease_s: float) -> set[str]:
        """Extend the leases of ``job_ids``; returns those still running under this worker (a missing id was
        cancelled, or requeued after the lease expired, and must be abandoned)."""
        if not job_ids:
            return set()
        stmt = (
            update(JOBS)
            .where(JOBS.c.id.in_(list(job_ids)), *self._owned(worker_id))
            .values(lease_expires_at=self._clock() + timedelta(seconds=lease_s))
            .returning(JOBS.c.id)
        )
        async with self._engine.begin() as conn:
            return set((await conn.execute(stmt)).scalars().all())

    async def complete(
        self, job_id: str, worker_id: str, *, result_path: str, mesh_stats: dict[str, Any], timings: dict[str, Any]
    ) -> bool:
        """Mark the job succeeded; False (and nothing changes) unless this worker still holds it."""
        return (
            await self._finish(
                update(JOBS)
                .where(JOBS.c.id == job_id, *self._owned(worker_id))
                .values(
                    status="succeeded",
                    stage="done",
                    progress=100,
                    finished_at=self._clock(),
                    result_path=result_path,
                    mesh_stats=mesh_stats,
                    timings=timings,
                    lease_owner=None,
                    lease_expires_at=None,
                ),
                succeeded=True,
            )
            == 1
        )

    async def fail(
        self,
        job_id: str,
        worker_id: str,
        *,
        code: ErrorCode,
        message: str,
        timings: dict[str, Any] | None = None,
    ) -> bool:
        """Mark the job failed with an error (retryable as its code says); False unless this worker still
        holds it."""
        return (
            await self._finish(
                update(JOBS)
                .where(JOBS.c.id == job_id, *self._owned(worker_id))
                .values({**_failed_values(code, message, self._clock()), "timings": timings})
            )
            == 1
        )

    async def requeue(self, job_id: str, worker_id: str, *, code: ErrorCode, message: str) -> str | None:
        """Put a held job back in the queue after its run was lost through no fault of its own (the model
        replica died under it); with ``max_attempts`` runs used, fail it with ``code`` instead.

        Returns the job's new status (``queued`` or ``failed``), or None if this worker no longer held it.
        """
        max_attempts = self.settings.max_attempts
        owned = (JOBS.c.id == job_id, *self._owned(worker_id))
        async with self._engine.begin() as conn:
            requeued = await conn.execute(
                update(JOBS)
                .where(*owned, JOBS.c.attempts < max_attempts)
                .values(_requeued_values(attempts=JOBS.c.attempts))
            )
            if requeued.rowcount == 1:
                return "queued"
            failed = (
                await conn.execute(
                    update(JOBS)
                    .where(*owned)
                    .values(_failed_values(code, f"{message} (on all {max_attempts} attempts)", self._clock()))
                    .returning(*_INPUT_COLUMNS)
                )
            ).all()
            await self._enqueue_events(conn, failed)
        await self._drop_artifacts(failed)
        return "failed" if failed else None

    async def release(self, job_id: str, worker_id: str) -> bool:
        """Put a held job back in the queue without counting the attempt (graceful shutdown)."""
        return (
            await self._execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, *self._owned(worker_id))
                .values(_requeued_values(attempts=JOBS.c.attempts - 1))
            )
            == 1
        )

    async def defer(self, job_id: str, worker_id: str) -> bool:
        """Put a held job back in the queue because this worker could not store its result (disk full or
        read-only): not the job's fault, so the run is not counted, but the job stays marked as started
        (``attempts`` >= 1) so that its start deadline cannot expire it while storage recovers."""
        return (
            await self._execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, *self._owned(worker_id))
                .values(
                    _requeued_values(attempts=case((JOBS.c.attempts > 1, JOBS.c.attempts - 1), else_=JOBS.c.attempts))
                )
            )
            == 1
        )

    async def expire_overdue(self) -> list[str]:
        """Expire queued jobs that were never started and are past their deadline; returns their ids."""
        now = self._clock()
        stmt = (
            update(JOBS)
            .where(JOBS.c.status == "queued", JOBS.c.attempts == 0, JOBS.c.deadline_at < now)
            .values(
                status="expired",
                stage="expired",
                finished_at=now,
                error_code=ErrorCode.DEADLINE_EXCEEDED.value,
                error_message="the job was not started before its deadline",
                retryable=ErrorCode.DEADLINE_EXCEEDED.retryable,
            )
            .returning(*_INPUT_COLUMNS)
        )
        async with self._engine.begin() as conn:
            rows = (await conn.execute(stmt)).all()
            await self._enqueue_events(conn, rows)
        await self._drop_artifacts(rows)
        return [row.id for row in rows]

    async def requeue_expired_leases(self) -> tuple[list[str], list[str]]:
        """Recover jobs whose worker stopped renewing its lease (crash, restart, partition).

        Returns (requeued ids, failed ids): a job with attempts left goes back to the queue; one that
        already used ``max_attempts`` fails with ``worker_lost`` rather than crash-looping the fleet.
        """
        now = self._clock()
        max_attempts = self.settings.max_attempts
        lost = (JOBS.c.status == "running", JOBS.c.lease_expires_at < now)
        give_up = (
            update(JOBS)
            .where(*lost, JOBS.c.attempts >= max_attempts)
            .values(
                _failed_values(
                    ErrorCode.WORKER_LOST,
                    f"the worker running this job stopped responding {max_attempts} times; giving up",
                    now,
                )
            )
            .returning(*_INPUT_COLUMNS)
        )
        requeue = (
            update(JOBS)
            .where(*lost, JOBS.c.attempts < max_attempts)
            .values(_requeued_values(attempts=JOBS.c.attempts))
            .returning(JOBS.c.id)
        )
        async with self._engine.begin() as conn:
            given_up = (await conn.execute(give_up)).all()
            await self._enqueue_events(conn, given_up)
            requeued = list((await conn.execute(requeue)).scalars().all())
        await self._drop_artifacts(given_up)
        return requeued, [row.id for row in given_up]

    async def purge_idempotency_keys(self) -> int:
        return await idempotency.purge(self._engine, now=self._clock(), ttl_s=self.settings.idempotency_ttl_s)

    # ---- retention --------------------------------------------------------------------------------------

    async def expired_results(self, finished_before: datetime, limit: int) -> list[tuple[str, str]]:
        """(job id, result path) of up to ``limit`` succeeded jobs finished before ``finished_before`` whose
        result has not been deleted yet, oldest first."""
        stmt = (
            select(JOBS.c.id, JOBS.c.result_path)
            .where(JOBS.c.status == "succeeded", JOBS.c.result_path.is_not(None), JOBS.c.finished_at < finished_before)
            .order_by(JOBS.c.finished_at)
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            return [(row.id, row.result_path) for row in (await conn.execute(stmt)).all()]

    async def forget_result(self, job_id: str, result_path: str) -> bool:
        """Record that the job's result was deleted; False when another sweeper recorded it first."""
        stmt = update(JOBS).where(JOBS.c.id == job_id, JOBS.c.result_path == result_path).values(result_path=None)
        return await self._execute(stmt) == 1

    async def statuses(self, job_ids: Sequence[str]) -> dict[str, str]:
        """The status of each of ``job_ids`` that exists (any agent's: for the sweeper, never for agents)."""
        found: dict[str, str] = {}
        ids = list(job_ids)
        for start in range(0, len(ids), 500):  # bounded IN lists
            stmt = select(JOBS.c.id, JOBS.c.status).where(JOBS.c.id.in_(ids[start : start + 500]))
            async with self._engine.connect() as conn:
                found.update({row.id: row.status for row in (await conn.execute(stmt)).all()})
        return found

    # ---- helpers ----------------------------------------------------------------------------------------

    @staticmethod
    def _owned(worker_id: str) -> tuple[Any, ...]:
        return (JOBS.c.status == "running", JOBS.c.lease_owner == worker_id)

    async def _select(self, stmt: Any) -> list[JobRecord]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        jobs = [JobRecord.from_row(row) for row in rows]
        return [replace(job, result_expires_at=self.result_expires_at(job)) for job in jobs]

    async def _execute(self, stmt: Any) -> int:
        async with self._engine.begin() as conn:
            return (await conn.execute(stmt)).rowcount

    async def _finish(self, stmt: Any, *, succeeded: bool = False) -> int:
        """Run a terminal transition, then delete what the jobs it finished no longer need; returns their number."""
        async with self._engine.begin() as conn:
            rows = (await conn.execute(stmt.returning(*_INPUT_COLUMNS))).all()
            await self._enqueue_events(conn, rows)
        await self._drop_artifacts(rows, succeeded=succeeded)
        return len(rows)

    async def _enqueue_events(self, conn: AsyncConnection, rows: Sequence[Any]) -> None:
        """Webhook deliveries of the jobs ``rows`` (with ``id``) just ended, in the transition's transaction."""
        await webhook_outbox.enqueue_job_events(
            conn, [row.id for row in rows], now=self._clock(), result_expires_at=self.result_expires_at
        )

    async def _drop_artifacts(self, rows: Sequence[Any], *, succeeded: bool = False) -> None:
        """The inputs of ended jobs (``rows`` of :data:`_INPUT_COLUMNS`: the image and any other views); for
        jobs that ended without a result also ``results/<id>/``: meshes of runs that crashed between writing
        and completing."""

        def drop() -> None:
            # Neither call raises: what cannot be deleted now, the sweeper deletes later.
            for row in rows:
                self._artifacts.delete(row.input_path)
                for relpath in (row.view_paths or {}).values():
                    self._artifacts.delete(relpath)
                if not succeeded:
                    self._artifacts.delete_tree(f"{RESULTS_DIR}/{row.id}")

        if rows:
            await asyncio.to_thread(drop)


async def _check_agent_quota(conn: AsyncConnection, agent: str, limit: int, *, adding: int, ours: int = 0) -> int:
    """The agent's queued jobs (``ours`` of them inserted by this transaction already); raises
    :class:`AgentQueueFull` if they, plus ``adding`` more, pass ``limit``."""
    queued = (
        await conn.execute(select(func.count()).where(JOBS.c.agent == agent, JOBS.c.status == "queued"))
    ).scalar_one()
    if queued + adding > limit:
        raise AgentQueueFull(queued - ours, adding + ours, limit)
    return queued


def _failed_values(code: ErrorCode, message: str, now: datetime) -> dict[str, Any]:
    """A held job's columns once it failed with ``code`` (retryable as the code says), lease released."""
    return {
        "status": "failed",
        "stage": "failed",
        "finished_at": now,
        "error_code": code.value,
        "error_message": message,
        "retryable": code.retryable,
        "lease_owner": None,
        "lease_expires_at": None,
    }


def _requeued_values(*, attempts: Any) -> dict[str, Any]:
    return {
        "status": "queued",
        "stage": "queued",
        "progress": 0,
        "attempts": attempts,
        "lease_owner": None,
        "lease_expires_at": None,
    }


def _encode_cursor(job: JobRecord) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, job_id = json.loads(raw)
        return datetime.fromisoformat(created_at), str(job_id)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid cursor {cursor!r}: pass back the next_cursor of a previous page") from exc
