"""HTTP handlers of the agent API. Every `/api/agent/*` route runs behind the signature middleware; the
handlers see the authenticated principal and only ever that agent's jobs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from deployments.contract import (
    CONTENT_TYPES,
    JOB_STATUSES,
    MESH_FORMATS,
    MIN_FACE_BUDGET,
    PRIORITIES,
    REMOVE_BACKGROUND_MODES,
)
from serve_app.artifact_backend import mesh_artifact
from serve_app.auth.principal import Principal, require_scope
from serve_app.errors import ApiError, not_found
from serve_app.jobs import (
    AgentQueueFull,
    IdempotencyConflict,
    IdempotencyInProgress,
    JobRecord,
    NewJob,
    QueueFull,
    Submission,
    request_fingerprint,
)
from serve_app.quota_store import SlotKind, SlotLease, SlotLimitReached, StreamSlots
from serve_app.quotas import SLOT_POLICIES, ratelimit_headers
from serve_app.requests import API_PARAMS, parse_batch, parse_job, read_body
from serve_app.service import AgentService
from serve_app.views import batch_view, iso, job_url, job_view
from serve_app.webhooks.routes import WEBHOOK_ROUTES

MAX_IDEMPOTENCY_KEY = 255


def _service(request: Request) -> AgentService:
    return request.app.state.service


async def _submit(request: Request, principal: Principal, jobs: list[NewJob], as_batch: bool) -> Submission:
    service = _service(request)
    key = request.headers.get("idempotency-key")
    fingerprint = None
    if key is not None:
        if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
            raise ApiError(
                400, "invalid_idempotency_key", f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} characters"
            )
        # same key + same method, path and body bytes == the same request
        fingerprint = request_fingerprint(request.method, request.url.path, await request.body())
    quotas = service.config.quotas
    limit = quotas.for_agent(principal.agent).max_queued_jobs
    try:
        if as_batch:
            submission = await service.store.submit_batch(
                principal.agent, jobs, idempotency_key=key, request_hash=fingerprint, agent_quota=limit
            )
        else:
            submission = await service.store.submit(
                principal.agent, jobs[0], idempotency_key=key, request_hash=fingerprint, agent_quota=limit
            )
    except AgentQueueFull as exc:
        headers = ratelimit_headers(
            "queued-jobs", exc.limit, exc.limit - exc.queued, retry_after_s=quotas.retry_after_s
        )
        raise ApiError(429, "agent_queue_full", str(exc), retryable=True, headers=headers) from None
    except QueueFull as exc:
        raise ApiError(
            503, "queue_full", str(exc), retryable=True, headers={"Retry-After": str(exc.retry_after_s)}
        ) from None
    except IdempotencyConflict as exc:
        raise ApiError(422, "idempotency_key_reused", str(exc)) from None
    except IdempotencyInProgress as exc:
        raise ApiError(409, "idempotency_key_in_use", str(exc), retryable=True) from None
    service.wake_workers()
    metrics = request.app.state.metrics
    if metrics is not None and not submission.replayed:
        for job in submission.jobs:
            metrics.submitted.inc(tags={"priority": job.priority})
    return submission


def _submission_headers(submission: Submission) -> dict[str, str]:
    """Headers of an accepted submission: the replay marker, or the queued-jobs quota left after it."""
    if submission.replayed:
        return {"Idempotent-Replayed": "true"}
    if submission.quota is not None:
        return ratelimit_headers("queued-jobs", submission.quota.limit, submission.quota.remaining)
    return {}


def _require_priority_scope(request: Request, priority: object) -> None:
    # before any image is decoded: a caller without the scope gets no decoding done for it
    if priority == "critical":
        require_scope(request, "jobs:critical")


async def create_job(request: Request) -> Response:
    principal = require_scope(request, "jobs:write")
    config = _service(request).config
    parsed = await read_body(request, config.limits)
    _require_priority_scope(request, parsed.fields.get("priority"))
    job = await parse_job(parsed, config)
    submission = await _submit(request, principal, [job], as_batch=False)
    record = submission.jobs[0]
    headers = {"Location": job_url(record.id), **_submission_headers(submission)}
    return JSONResponse(job_view(record), status_code=202, headers=headers)


async def create_batch(request: Request) -> Response:
    principal = require_scope(request, "jobs:write")
    config = _service(request).config
    parsed = await read_body(request, config.limits)
    _require_priority_scope(request, parsed.fields.get("priority"))
    jobs = await parse_batch(parsed, config)
    submission = await _submit(request, principal, jobs, as_batch=True)
    body = {
        "batch_id": submission.batch_id,
        "status_url": f"/api/agent/batches/{submission.batch_id}",
        "jobs": [job_view(job) for job in submission.jobs],
    }
    return JSONResponse(body, status_code=202, headers=_submission_headers(submission))


async def _own_job(request: Request, principal: Principal) -> JobRecord:
    job_id = request.path_params["job_id"]
    job = await _service(request).store.get(principal.agent, job_id)
    if job is None:
        raise not_found("job", job_id)
    return job


def _wait_seconds(request: Request) -> float:
    raw = request.query_params.get("wait")
    if raw is None:
        return 0.0
    limit = _service(request).config.limits.max_wait_s
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(422, "invalid_wait", f"'wait' must be a number of seconds (0-{limit})") from None
    if not 0 <= value <= limit:
        raise ApiError(422, "invalid_wait", f"'wait' must be between 0 and {limit} seconds")
    return value


async def _take_slot(request: Request, principal: Principal, kind: SlotKind) -> SlotLease:
    """One of the agent's stream or long-poll slots, or a 429 with Retry-After and the RateLimit fields."""
    service = _service(request)
    quotas = service.config.quotas
    limit = quotas.for_agent(principal.agent).for_slot(kind)
    slots = StreamSlots(service.engine, lease_s=quotas.slot_lease_s, clock=service.store.now)
    try:
        return await slots.acquire(principal.agent, kind, limit)
    except SlotLimitReached as exc:
        code = "too_many_streams" if kind == "event_stream" else "too_many_long_polls"
        headers = ratelimit_headers(SLOT_POLICIES[kind], limit, 0, retry_after_s=quotas.retry_after_s)
        raise ApiError(429, code, f"{exc}; close one or retry later", retryable=True, headers=headers) from None


async def get_job(request: Request) -> Response:
    """`?wait=N` long-polls up to N seconds for the job to finish (a convenience over re-polling).

    A long-poll holds one of the agent's long-poll slots while it waits; `?wait=0` and finished jobs take none."""
    principal = require_scope(request, "jobs:read")
    wait = _wait_seconds(request)
    job = await _own_job(request, principal)
    if wait == 0 or job.terminal:
        return JSONResponse(job_view(job))
    poll_s = _service(request).config.streams.poll_interval_s
    async with await _take_slot(request, principal, "long_poll"):
        deadline = time.monotonic() + wait
        while not job.terminal and time.monotonic() < deadline:
            await asyncio.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
            job = await _own_job(request, principal)
    return JSONResponse(job_view(job))


async def list_jobs(request: Request) -> Response:
    principal = require_scope(request, "jobs:read")
    service = _service(request)
    # an empty value is a parameter not given (`?status=&limit=&cursor=`): no filter, the default page, page one
    query = {name: value for name, value in request.query_params.items() if value != ""}
    status = query.get("status")
    if status is not None and status not in JOB_STATUSES:
        raise ApiError(422, "invalid_status", f"'status' must be one of {list(JOB_STATUSES)}")
    max_page = service.config.limits.max_list_page
    try:
        limit = int(query.get("limit", "50"))
    except ValueError:
        raise ApiError(422, "invalid_limit", f"'limit' must be an integer between 1 and {max_page}") from None
    if not 1 <= limit <= max_page:
        raise ApiError(422, "invalid_limit", f"'limit' must be between 1 and {max_page}")
    try:
        page = await service.store.list_jobs(principal.agent, status=status, cursor=query.get("cursor"), limit=limit)
    except ValueError:
        raise ApiError(422, "invalid_cursor", "'cursor' is not one this API returned") from None
    return JSONResponse({"jobs": [job_view(job) for job in page.jobs], "next_cursor": page.next_cursor})


async def cancel_job(request: Request) -> Response:
    principal = require_scope(request, "jobs:write")
    job = await _own_job(request, principal)
    if job.terminal and job.status != "cancelled":
        raise ApiError(409, "job_finished", f"job {job.id} already {job.status}; nothing to cancel")
    cancelled = await _service(request).store.cancel(principal.agent, job.id)
    if cancelled is None:  # rows are never deleted, so only a database swap could get here
        raise not_found("job", job.id)
    if cancelled.status != "cancelled":  # it finished in the meantime
        raise ApiError(409, "job_finished", f"job {job.id} already {cancelled.status}; nothing to cancel")
    return JSONResponse(job_view(cancelled))


async def job_result(request: Request) -> Response:
    principal = require_scope(request, "jobs:read")
    fmt = request.query_params.get("format", "glb")
    if fmt not in MESH_FORMATS:
        raise ApiError(422, "invalid_format", f"'format' must be one of {list(MESH_FORMATS)}")
    job = await _own_job(request, principal)
    if job.status != "succeeded":
        raise ApiError(
            409,
            "result_not_ready",
            f"job {job.id} is {job.status}; results exist once it succeeded",
            retryable=job.status in ("queued", "running"),
        )
    store = _service(request).store
    # decided from finished_at: expired from that moment on, whether or not the sweeper ran yet
    if store.result_expired(job) or job.result_path is None:
        raise _result_expired(job, store.result_expires_at(job))
    # converting GLB to another format the first time is CPU work: keep it off the event loop
    artifacts = _service(request).artifacts
    try:
        relpath = await asyncio.to_thread(mesh_artifact, artifacts, job.result_path, fmt)
        return await artifacts.download(relpath, media_type=CONTENT_TYPES[fmt], filename=f"{job.id}.{fmt}")
    except FileNotFoundError:  # the sweeper got there between the check and the read
        raise _result_expired(job, store.result_expires_at(job)) from None


def _result_expired(job: JobRecord, expires_at: datetime | None) -> ApiError:
    when = f" at {iso(expires_at)}" if expires_at is not None else ""
    return ApiError(
        410, "result_expired", f"the result of job {job.id} expired{when}; submit the job again to regenerate it"
    )


async def job_events(request: Request) -> Response:
    """Server-sent events: one `job` event per change of status, stage or progress, until it finishes.

    Reads the shared store (not one replica's memory), so it works whichever replica runs the job. An open
    stream holds one of the agent's stream slots (a finished job's one-event stream takes none)."""
    principal = require_scope(request, "jobs:read")
    job = await _own_job(request, principal)
    streams = _service(request).config.streams
    # taken before the response starts, so that a refusal can still be a 429
    lease = None if job.terminal else await _take_slot(request, principal, "event_stream")

    async def stream() -> AsyncIterator[str]:
        async with lease or contextlib.nullcontext():
            current, last = job, None
            quiet_since = time.monotonic()
            while True:
                state = (current.status, current.stage, current.progress)
                if state != last:
                    yield f"event: job\ndata: {json.dumps(job_view(current))}\n\n"
                    last, quiet_since = state, time.monotonic()
                elif time.monotonic() - quiet_since >= streams.keepalive_s:
                    # a comment line keeps idle proxies from closing a stream whose job waits in the queue
                    yield ": keep-alive\n\n"
                    quiet_since = time.monotonic()
                if current.terminal or await request.is_disconnected():
                    return
                await asyncio.sleep(streams.poll_interval_s)
                current = await _own_job(request, principal)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


async def get_batch(request: Request) -> Response:
    principal = require_scope(request, "jobs:read")
    batch_id = request.path_params["batch_id"]
    batch = await _service(request).store.get_batch(principal.agent, batch_id)
    if batch is None:
        raise not_found("batch", batch_id)
    return JSONResponse(batch_view(batch))


async def capabilities(request: Request) -> Response:
    principal = require_scope(request, "jobs:read")
    config = _service(request).config
    limits = config.limits
    quota = config.quotas.for_agent(principal.agent)
    bounds = {
        "num_inference_steps": {"min": 1, "max": limits.max_inference_steps},
        "guidance_scale": {"min": 0.0, "max": limits.max_guidance_scale},
        "octree_resolution": {"min": limits.min_octree_resolution, "max": limits.max_octree_resolution},
        # 0 keeps the raw surface; otherwise a budget between the bounds
        "max_faces": {"min": MIN_FACE_BUDGET, "max": limits.max_face_budget, "no_reduction": 0},
    }
    models = [
        {
            "name": model.name,
            "default": model.default,
            "family": model.family,
            "variant": model.variant,
            "views": list(model.views),
            "defaults": model.job_defaults,
            "limits": bounds,  # the same for every model today; per model so agents need not assume it
        }
        for model in config.served_models.models
    ]
    return JSONResponse(
        {
            "models": models,
            "params": {
                "settable": list(API_PARAMS),
                "defaults": config.job_defaults,  # the default model's (each model's are in `models`)
                **bounds,
                "remove_floaters": [True, False],
                "remove_background": list(REMOVE_BACKGROUND_MODES),
            },
            "priorities": list(PRIORITIES),
            "formats": list(MESH_FORMATS),
            "image": {
                "formats": ["png", "jpeg", "webp"],
                "max_bytes": limits.max_image_bytes,
                "max_pixels": limits.max_image_pixels,
                "min_side": limits.min_image_side,
                "max_request_pixels": limits.max_request_pixels,
            },
            "limits": {
                "max_batch_items": limits.max_batch_items,
                "max_list_page": limits.max_list_page,
                "max_wait_s": limits.max_wait_s,
                "max_queued_jobs": config.jobs.max_queued,
                "max_body_bytes": config.auth.max_body_bytes,
            },
            # this agent's own quotas (its override, else the defaults)
            "quotas": {
                "max_queued_jobs": quota.max_queued_jobs,
                "max_event_streams": quota.max_event_streams,
                "max_long_polls": quota.max_long_polls,
            },
        }
    )


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    if await _service(request).ready():
        return JSONResponse({"status": "ready"})
    raise ApiError(503, "not_ready", "the job database is not reachable", retryable=True, headers={"Retry-After": "5"})


ROUTES = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/api/agent/capabilities", capabilities, methods=["GET"]),
    Route("/api/agent/jobs", create_job, methods=["POST"]),
    Route("/api/agent/jobs", list_jobs, methods=["GET"]),
    Route("/api/agent/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/api/agent/jobs/{job_id}", cancel_job, methods=["DELETE"]),
    Route("/api/agent/jobs/{job_id}/result", job_result, methods=["GET"]),
    Route("/api/agent/jobs/{job_id}/events", job_events, methods=["GET"]),
    Route("/api/agent/batches", create_batch, methods=["POST"]),
    Route("/api/agent/batches/{batch_id}", get_batch, methods=["GET"]),
    *WEBHOOK_ROUTES,
]
