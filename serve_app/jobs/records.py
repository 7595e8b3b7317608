"""Values the job store takes and returns: plain frozen dataclasses, detached from any session."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from deployments.contract import (
    FRONT_VIEW,
    JOB_STATUSES,
    PRIORITIES,
    TERMINAL_STATUSES,
    VIEW_NAMES,
    JobStatus,
    Priority,
    ViewName,
    check_seed,
    check_view_names,
)

_IMAGE_FORMAT = re.compile(r"^[a-z0-9]{1,8}$")


def _check_image_format(image_format: str, what: str) -> None:
    # the format becomes a file extension of the stored input: keep it a short, safe name
    if not _IMAGE_FORMAT.match(image_format):
        raise ValueError(f"{what} must be a short lowercase extension such as 'png', got {image_format!r}")


@dataclass(frozen=True)
class ViewImage:
    """One extra view of a multiview job: its re-encoded bytes and their format (a file extension)."""

    data: bytes
    format: str = "png"

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("a view's image must not be empty")
        _check_image_format(self.format, "a view's format")


@dataclass(frozen=True)
class NewJob:
    """One image to turn into a mesh, validated by the ingress.

    ``image``: the decoded and re-encoded image bytes (stored as an artifact, not in the database).
    ``seed``: ``None`` lets the store draw one; it is recorded either way so the job can be reproduced.
    ``params``: generation parameters as ``GenerationParams.to_dict()`` keys; the store does not read them.
    ``deadline_s``: seconds the job may wait to start before it expires (``None``: the store's default).
    ``views``: a multiview job's OTHER views (``left``, ``back``, ``right``); ``image`` is its front view.
    Each is stored as an input artifact next to the image.
    """

    image: bytes
    model: str
    seed: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    priority: Priority = "normal"
    deadline_s: float | None = None
    image_format: str = "png"
    views: Mapping[str, ViewImage] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.image:
            raise ValueError("image must not be empty")
        if self.priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {list(PRIORITIES)}, got {self.priority!r}")
        if self.seed is not None:
            check_seed(self.seed)
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be positive, got {self.deadline_s!r}")
        _check_image_format(self.image_format, "image_format")
        check_view_names(self.views, extra_only=True)
        for name, view in self.views.items():
            if not isinstance(view, ViewImage):
                raise TypeError(f"view {name!r} must be a ViewImage, got {type(view).__name__}")


@dataclass(frozen=True)
class JobRecord:
    """A job as stored (one row of ``jobs``)."""

    id: str
    agent: str
    batch_id: str | None
    batch_index: int
    status: JobStatus
    stage: str
    progress: int
    priority: Priority
    seed: int
    params: dict[str, Any]
    model: str
    input_path: str
    created_at: datetime
    started_at: datetime | None
    claimed_at: datetime | None
    finished_at: datetime | None
    deadline_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    attempts: int
    error_code: str | None
    error_message: str | None
    retryable: bool | None
    mesh_stats: dict[str, Any] | None
    timings: dict[str, Any] | None
    result_path: str | None
    # A multiview job's other views: name -> input artifact path (None for a single-image job). Defaulted so
    # records built from rows of before revision 0003 (none in practice) still construct.
    view_paths: dict[str, str] | None = None
    # Not a column: derived by the store from finished_at and the retention TTL (None: no result, or kept
    # forever), so that every view of the job can say when its result goes.
    result_expires_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> JobRecord:
        return cls(**{f.name: row[f.name] for f in fields(cls) if f.name in row})

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def view_names(self) -> tuple[ViewName, ...]:
        """Every view of the job, front (its ``input_path``) first, in ``VIEW_NAMES`` order."""
        extra = self.view_paths or {}
        return tuple(name for name in VIEW_NAMES if name == FRONT_VIEW or name in extra)

    @property
    def input_paths(self) -> tuple[str, ...]:
        """Every input artifact of the job: the image, then its other views."""
        return (self.input_path, *(self.view_paths or {}).values())


@dataclass(frozen=True)
class BatchRecord:
    id: str
    agent: str
    created_at: datetime
    jobs: tuple[JobRecord, ...]  # in submission order

    @property
    def counts(self) -> dict[str, int]:
        """Jobs per status, every status present (0 when none)."""
        seen = Counter(job.status for job in self.jobs)
        return {status: seen.get(status, 0) for status in JOB_STATUSES}

    @property
    def finished(self) -> bool:
        return all(job.terminal for job in self.jobs)


@dataclass(frozen=True)
class QueueQuota:
    """An agent's queued-jobs quota as a submission left it."""

    limit: int
    queued: int  # the agent's queued jobs, this submission's included

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.queued)


@dataclass(frozen=True)
class Submission:
    """What a submit returns; ``replayed`` is True when an idempotency key matched an earlier request.

    ``quota``: the agent's queued-jobs quota after this submission, when the submit was given one (never on a
    replay, which counts nothing)."""

    jobs: tuple[JobRecord, ...]
    batch_id: str | None
    replayed: bool
    quota: QueueQuota | None = None


@dataclass(frozen=True)
class JobPage:
    jobs: tuple[JobRecord, ...]
    next_cursor: str | None  # opaque; None on the last page


class JobStoreError(Exception):
    """Base of the store's refusals; each maps to one HTTP status at the ingress."""


class IdempotencyConflict(JobStoreError):
    """The key was used before with a different request body (HTTP 422)."""


class IdempotencyInProgress(JobStoreError):
    """A request with the same key is still being processed (HTTP 409)."""


class QueueFull(JobStoreError):
    """Too many queued jobs (HTTP 503 with ``Retry-After: retry_after_s``)."""

    def __init__(self, queued: int, limit: int, retry_after_s: int) -> None:
        super().__init__(f"the queue is full ({queued} queued jobs, limit {limit}); retry in {retry_after_s} s")
        self.queued = queued
        self.limit = limit
        self.retry_after_s = retry_after_s


class AgentQueueFull(JobStoreError):
    """The agent has ``limit`` queued jobs already, or would pass it with this submission (HTTP 429)."""

    def __init__(self, queued: int, requested: int, limit: int) -> None:
        super().__init__(
            f"this agent has {queued} queued jobs and its quota is {limit}; {requested} more do not fit. "
            "Wait for some to start, or cancel some"
        )
        self.queued = queued
        self.requested = requested
        self.limit = limit
