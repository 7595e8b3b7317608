"""Durable jobs: the store the ingress submits to, the dispatcher the job workers run them with.

See each module for the details.
"""

from __future__ import annotations

from serve_app.jobs.dispatcher import Dispatcher, GenerateFn, ModelUnavailable
from serve_app.jobs.events import JobEvent, JobEvents
from serve_app.jobs.idempotency import request_fingerprint
from serve_app.jobs.records import (
    AgentQueueFull,
    BatchRecord,
    IdempotencyConflict,
    IdempotencyInProgress,
    JobPage,
    JobRecord,
    JobStoreError,
    NewJob,
    QueueFull,
    QueueQuota,
    Submission,
    ViewImage,
)
from serve_app.jobs.store import JobStore, utcnow

__all__ = [
    "AgentQueueFull",
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
    "QueueQuota",
    "Submission",
    "ViewImage",
    "request_fingerprint",
    "utcnow",
]
