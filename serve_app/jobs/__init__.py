"""Durable jobs: the store the ingress submits to, the dispatcher the job workers run them with.

See each module for the details.
"""

from __future__ import annotations

from serve_app.jobs.dispatcher import Dispatcher, GenerateFn, ModelUnavailable
from serve_app.jobs.events import JobEvent, JobEvents
from serve_app.jobs.idempotency import request_fingerprint
from serve_app.jobs.records import (
    BatchRecord,
    IdempotencyConflict,
    IdempotencyInProgress,
    JobPage,
    JobRecord,
    JobStoreError,
    NewJob,
    QueueFull,
    Submission,
)
from serve_app.jobs.store import JobStore, utcnow

__all__ = [
    "BatchRecord",
    "Dispatcher",
    "GenerateFn",
    "IdempotencyConflict",
    "IdempotencyInProgress",
    "JobEvent",
    "JobEvents",
    "JobPage",
    "JobRecord",
    "JobStore",
    "JobStoreError",
    "ModelUnavailable",
    "NewJob",
    "QueueFull",
    "Submission",
    "request_fingerprint",
    "utcnow",
]
