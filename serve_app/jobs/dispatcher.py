"""The dispatcher: claims queued jobs, runs them through the model, stores the meshes, finishes the jobs.

One asyncio loop per instance (one per ``JobWorker`` replica). Each round it
  1. every ``maintenance_interval_s``: expires overdue jobs, requeues jobs whose worker's lease expired
     (restart recovery: a dead instance's jobs come back once their lease runs out), purges old
     idempotency keys;
  2. claims up to ``concurrency`` minus the jobs in flight and starts one task per job, so the model
     deployment receives them concurrently and can batch them;
  3. every ``lease_s / 3``: renews the leases of the jobs in flight and abandons those it no longer holds
     (cancelled by the agent, or requeued after this instance stalled past its lease);
  4. sleeps until ``notify()``, a job finishing, or the next poll.
Exactly-once completion is the store's guarantee (completion is guarded by the lease owner); the
dispatcher only has to never write for a job it abandoned. Each job goes to the model call of its ``model``;
a job whose model this worker does not serve (removed from the config since) fails as ``model_unavailable``,
naming it. A model call lost with its replica
(:class:`ModelUnavailable`) puts the job back in the queue, up to ``max_attempts`` runs: the job did nothing
wrong, so it is not failed for it. Neither is a job whose mesh could not be written (disk full or read-only):
it goes back to the queue uncounted, and this instance claims nothing for ``storage_retry_s``, so a broken
disk costs one model run per retry interval rather than a failed job or a hot loop. A job that fails for an
unexpected reason is recorded with a generic message: exception text and paths are logged, never shown to
agents.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from deployments.contract import CANONICAL_FORMAT, ErrorCode, GenerationError, GenerationRequest, Outcome
from serve_app.artifact_backend import ArtifactBackend
from serve_app.config import JobSettings
from serve_app.jobs.events import JobEvent, JobEvents
from serve_app.jobs.records import JobRecord
from serve_app.jobs.store import JobStore

logger = logging.getLogger(__name__)

GenerateFn = Callable[[GenerationRequest], Awaitable[Outcome]]
"""The model call: ``ShapeGenerator.generate`` through its handle (``serve_app.model_client``) in the app,
a plain async function in tests. Returns the result or the request's own ``GenerationError``."""

ModelCalls = GenerateFn | Mapping[str, GenerateFn]
"""What a dispatcher calls: model name -> its model call (the job's ``model`` picks one), or one call for
every job whatever its model (tests, one-model setups)."""


class ModelUnavailable(Exception):
    """The model call was lost with its replica (it died, or none could take it): not the job's fault."""


class ResultNotStored(Exception):
    """The mesh could not be written to the artifact store (``OSError``): not the job's fault either."""


INTERNAL_ERROR_MESSAGE = "the job failed on an internal error; quote the job id to the operator"


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


class Dispatcher:
    def __init__(
        self,
        store: JobStore,
        artifacts: ArtifactBackend,
        generate: ModelCalls,
        settings: JobSettings | None = None,
        *,
        worker_id: str | None = None,
        events: JobEvents | None = None,
        storage_retry_s: float = 30.0,
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._models = generate
        self.settings = settings or JobSettings()
        self.worker_id = worker_id or default_worker_id()
        self.events = events or JobEvents()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._jobs: dict[str, JobRecord] = {}
        self._finishing: set[str] = set()  # writing their final state: never abandon these
        self._wake = asyncio.Event()
        self._storage_retry_s = storage_retry_s
        self._claims_paused_until = 0.0  # monotonic; set when a result could not be written
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> frozenset[str]:
        return frozenset(self._tasks)

    @property
    def loop_task(self) -> asyncio.Task[None] | None:
        """The claim loop's task once started (health checks look whether it is still alive)."""
        return self._loop_task

    @property
    def stopping(self) -> bool:
        """True once stop() or kill() began: no more claims."""
        return self._stopping

    async def start(self) -> None:
        if self._loop_task is not None:
            raise RuntimeError("dispatcher already started")
        self._loop_task = asyncio.create_task(self._loop(), name=f"dispatcher-{self.worker_id}")

    def notify(self) -> None:
        """Claim now instead of at the next poll (call after submitting)."""
        self._wake.set()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop claiming, let jobs in flight finish for ``grace_s``, then requeue the rest at once."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            # a loop that died (the health check reports it) must not keep its jobs from being released
            await asyncio.gather(self._loop_task, return_exceptions=True)
        tasks = list(self._tasks.items())
        if not tasks:
            return
        grace = self.settings.stop_grace_s if grace_s is None else grace_s
        await asyncio.wait([task for _, task in tasks], timeout=grace)
        for job_id, task in tasks:
            if not task.done() and job_id not in self._finishing:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await self._store.release(job_id, self.worker_id)
        await asyncio.gather(*(task for _, task in tasks), return_exceptions=True)

    async def kill(self) -> None:
        """Stop at once, writing nothing more for the jobs in flight, as a crash would: their leases expire
        and another instance retries them.

        The loop is let finish its current round instead of being cancelled: cancelled inside a statement,
        an in-process SQLite connection can keep its write lock (a real crash releases it with the process),
        and every other writer then waits out the busy timeout."""
        self._stopping = True
        self._wake.set()
        jobs = list(self._tasks.values())
        for task in jobs:
            task.cancel()
        if self._loop_task is not None:
            await asyncio.gather(self._loop_task, return_exceptions=True)
        await asyncio.gather(*jobs, return_exceptions=True)

    # ---- the loop ---------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        settings = self.settings
        heartbeat_every = settings.lease_s / 3
        next_maintenance = next_heartbeat = time.monotonic()
        while not self._stopping:
            self._wake.clear()
            try:
                if time.monotonic() >= next_maintenance:
                    await self._maintain()
                    next_maintenance = time.monotonic() + settings.maintenance_interval_s
                free = settings.dispatcher_concurrency - len(self._tasks)
                if free > 0 and time.monotonic() >= self._claims_paused_until:
                    for job in await self._store.claim(self.worker_id, free, settings.lease_s):
                        self._start_job(job)
                if time.monotonic() >= next_heartbeat:
                    await self._heartbeat()
                    next_heartbeat = time.monotonic() + heartbeat_every
            except Exception:
                # The database may be briefly unreachable; keep going, leases protect the jobs.
                logger.exception("dispatcher %s: round failed", self.worker_id)
            delay = min(settings.poll_interval_s, max(0.0, next_heartbeat - time.monotonic()))
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def _maintain(self) -> None:
        expired = await self._store.expire_overdue()
        requeued, failed = await self._store.requeue_expired_leases()
        await self._store.purge_idempotency_keys()
        if expired or requeued or failed:
            logger.info("jobs expired %s, requeued %s, failed after lost workers %s", expired, requeued, failed)

    async def _heartbeat(self) -> None:
        job_ids = list(self._tasks)
        held = await self._store.heartbeat(self.worker_id, job_ids, self.settings.lease_s)
        for job_id in job_ids:
            task = self._tasks.get(job_id)
            if job_id in held or task is None or job_id in self._finishing:
                continue
            logger.info("job %s is no longer held by %s (cancelled or requeued); abandoning it", job_id, self.worker_id)
            task.cancel()
            current = await self._store.get(self._jobs[job_id].agent, job_id)
            if current is not None:
                self.events.publish(JobEvent.of(current, at=self._store.now()))

    def _start_job(self, job: JobRecord) -> None:
        task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
        self._tasks[job.id] = task
        self._jobs[job.id] = job
        task.add_done_callback(lambda done: self._forget(job.id, done))
        self._publish(job, "running", job.stage, job.progress)

    def _forget(self, job_id: str, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # Only the store can raise here (the database went away mid-job); the lease expiry retries it.
            logger.error("job %s: could not record its outcome", job_id, exc_info=task.exception())
        self._tasks.pop(job_id, None)
        self._jobs.pop(job_id, None)
        self._finishing.discard(job_id)
        self._wake.set()  # a slot is free

    # ---- one job ----------------------------------------------------------------------------------------

    async def _run(self, job: JobRecord) -> None:
        """Generate, store, complete. Cancellation (kill, stop, abandon) propagates without any write."""
        claimed_at = job.claimed_at or job.created_at  # always set by claim
        timings: dict[str, Any] = {"attempt": job.attempts, "queue_s": (claimed_at - job.created_at).total_seconds()}
        began = time.perf_counter()
        try:
            relpath, stats = await self._produce(job, timings)
        except ModelUnavailable as exc:
            self._finishing.add(job.id)
            status = await self._store.requeue(
                job.id, self.worker_id, code=ErrorCode.MODEL_UNAVAILABLE, message=str(exc)
            )
            logger.warning("job %s: %s; %s", job.id, exc, "back in the queue" if status == "queued" else status)
            if status == "failed":
                self._publish(job, "failed", "failed", job.progress, error_code=ErrorCode.MODEL_UNAVAILABLE.value)
            return
        except ResultNotStored:
            self._finishing.add(job.id)
            self._claims_paused_until = time.monotonic() + self._storage_retry_s
            logger.warning(
                "job %s: its mesh could not be stored; back in the queue, claims paused %.0f s",
                job.id,
                self._storage_retry_s,
                exc_info=True,
            )
            if await self._store.defer(job.id, self.worker_id):
                self._publish(job, "queued", "queued", 0)
            return
        except Exception as exc:
            code: ErrorCode
            if isinstance(exc, GenerationError) and exc.code != ErrorCode.INTERNAL_ERROR:
                code, message = exc.code, exc.message
            elif isinstance(exc, GenerationError):
                # the model's own bug report carries exception text: the log keeps it, the agent gets the code
                logger.error("job %s: the model failed on an internal error: %s", job.id, exc.message)
                code, message = ErrorCode.INTERNAL_ERROR, INTERNAL_ERROR_MESSAGE
            else:
                logger.exception("job %s failed", job.id)
                code, message = ErrorCode.INTERNAL_ERROR, INTERNAL_ERROR_MESSAGE
            timings["total_s"] = time.perf_counter() - began
            self._finishing.add(job.id)
            if await self._store.fail(job.id, self.worker_id, code=code, message=message, timings=timings):
                self._publish(job, "failed", "failed", job.progress, error_code=code.value)
            return
        timings["total_s"] = time.perf_counter() - began
        self._finishing.add(job.id)
        if await self._store.complete(job.id, self.worker_id, result_path=relpath, mesh_stats=stats, timings=timings):
            self._publish(job, "succeeded", "done", 100)
        else:
            # Cancelled or taken over while we stored it: ours is not the result, leave no file behind.
            await asyncio.to_thread(self._artifacts.delete, relpath)  # a network call on S3

    async def _produce(self, job: JobRecord, timings: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The model call and the mesh file: (its relative path, its mesh statistics).

        Raises the request's ``GenerationError``, ``ModelUnavailable`` or ``ResultNotStored``.
        """
        generate = self._model_call(job)
        image, views = await asyncio.to_thread(self._read_inputs, job)
        try:
            request = GenerationRequest.from_job_params(image, job.seed, job.params, job.priority, job.id, views=views)
        except (TypeError, ValueError) as exc:  # checked at submit; a config change since can still bite
            raise GenerationError(ErrorCode.INVALID_REQUEST, str(exc), job.id) from None
        started = time.perf_counter()
        outcome = await generate(request)
        timings["generate_s"] = time.perf_counter() - started
        if isinstance(outcome, GenerationError):
            raise outcome
        timings["model"] = {
            **{f"{stage}_s": seconds for stage, seconds in outcome.timings.items()},
            "batch_size": outcome.batch_size,
            "queue_wait_s": outcome.queue_wait_s,
            "cleanup": outcome.cleanup,
        }
        started = time.perf_counter()
        # A fresh name per run: a stale run (abandoned while its write finishes) can never overwrite, or
        # delete, the file of the run that completed the job; completion then decides whose file counts.
        relpath = f"results/{job.id}/mesh-{secrets.token_hex(8)}.{CANONICAL_FORMAT}"
        try:
            await asyncio.to_thread(self._artifacts.put_bytes, relpath, outcome.glb)
        except OSError as exc:
            raise ResultNotStored(f"writing {relpath} failed") from exc
        timings["store_s"] = time.perf_counter() - started
        return relpath, outcome.stats.to_dict()

    def _model_call(self, job: JobRecord) -> GenerateFn:
        """The call of the job's model, or a ``model_unavailable`` failure when this worker serves no such model
        (the operator removed it from the config after the job was queued: retrying cannot help)."""
        if not isinstance(self._models, Mapping):
            return self._models
        generate = self._models.get(job.model)
        if generate is None:
            served = sorted(self._models)
            raise GenerationError(
                ErrorCode.MODEL_UNAVAILABLE,
                f"model {job.model!r} is not served any more (served: {served}); submit the job again with one of them",
                job.id,
            )
        return generate

    def _read_inputs(self, job: JobRecord) -> tuple[bytes, dict[str, bytes]]:
        """The job's image (its front view) and a multiview job's other views, by name."""
        image = self._artifacts.read_bytes(job.input_path)
        views = {name: self._artifacts.read_bytes(relpath) for name, relpath in (job.view_paths or {}).items()}
        return image, views

    def _publish(self, job: JobRecord, status: str, stage: str, progress: int, error_code: str | None = None) -> None:
        self.events.publish(JobEvent(job.id, job.agent, status, stage, progress, self._store.now(), error_code))
