"""What agents see: JSON views of jobs and batches, with links instead of payloads."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from deployments.contract import MESH_FORMATS
from serve_app.jobs import BatchRecord, JobRecord

API = "/api/agent"


def iso(value: datetime | None) -> str | None:
    # the store keeps naive UTC
    return None if value is None else value.isoformat(timespec="milliseconds") + "Z"


def job_url(job_id: str) -> str:
    return f"{API}/jobs/{job_id}"


def job_view(job: JobRecord) -> dict[str, Any]:
    url = job_url(job.id)
    error = None
    if job.error_code is not None:
        error = {"code": job.error_code, "message": job.error_message, "retryable": bool(job.retryable)}
    return {
        "job_id": job.id,
        "status": job.status,
        "stage": job.stage,
        "progress": job.progress,
        "priority": job.priority,
        "model": job.model,
        "seed": job.seed,
        "params": job.params,
        # the named views the job was given, front first: ["front"] for a single-image job
        "views": list(job.view_names),
        "batch_id": job.batch_id,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "deadline_at": iso(job.deadline_at),
        "attempts": job.attempts,
        "timings": job.timings or {},
        "mesh": job.mesh_stats,
        "error": error,
        "status_url": url,
        "events_url": f"{url}/events",
        # set by the store for succeeded jobs; afterwards the result answers 410 result_expired
        "result_expires_at": iso(job.result_expires_at),
        "result_urls": (
            {fmt: f"{url}/result?format={fmt}" for fmt in MESH_FORMATS} if job.status == "succeeded" else None
        ),
    }


def batch_view(batch: BatchRecord) -> dict[str, Any]:
    return {
        "batch_id": batch.id,
        "created_at": iso(batch.created_at),
        "finished": batch.finished,
        "counts": batch.counts,
        "status_url": f"{API}/batches/{batch.id}",
        "jobs": [job_view(job) for job in batch.jobs],
    }
