"""Durable jobs: the store the ingress submits to, the dispatcher that runs jobs through the model.

The ingress needs only the names below; see each module for the details.
"""

from __future__ import annotations

from serve_app.jobs.dispatcher import Dispatcher, DispatcherSettings
from serve_app.jobs.events import JobEvent, JobEvents
from serve_app.jobs.generation import GenerateFn, GenerationError, GenerationRequest, MeshResult
from serve_app.jobs.idempotency import request_fingerprint
from serve_app.jobs.records import (
    JOB_STATUSES,
    TERMINAL_STATUSES,
    BatchRecord,
    IdempotencyConflict,
    IdempotencyInProgress,
    JobPage,
    JobRecord,
    JobStatus,
    JobStoreError,
    NewJob,
    Priority,
    QueueFull,
    Submission,
)
from serve_app.jobs.store import JobStore, StoreSettings, utcnow

__all__ = [
    "JOB_STATUSES",
    "TERMINAL_STATUSES",
    "BatchRecord",
    "Dispatcher",
    "DispatcherSettings",
    "GenerateFn",
    "GenerationError",
    "GenerationRequest",
    "IdempotencyConflict",
    "IdempotencyInProgress",
    "JobEvent",
    "JobEvents",
    "JobPage",
    "JobRecord",
    "JobStatus",
    "JobStore",
    "JobStoreError",
    "MeshResult",
    "NewJob",
    "Priority",
    "QueueFull",
    "StoreSettings",
    "Submission",
    "request_fingerprint",
    "utcnow",
]
