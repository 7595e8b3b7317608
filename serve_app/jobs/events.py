"""In-process job events of one dispatcher (a JobWorker replica's metrics follow them).

Only changes made by this process are published. A follower must still read the job from the store once
(to catch up) and may poll it as a fallback, since another replica's dispatcher may be running the job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from serve_app.jobs.records import JobRecord


@dataclass(frozen=True)
class JobEvent:
    job_id: str
    agent: str
    status: str
    stage: str
    progress: int
    at: datetime
    error_code: str | None = None

    @classmethod
    def of(cls, job: JobRecord, at: datetime) -> JobEvent:
        return cls(job.id, job.agent, job.status, job.stage, job.progress, at, job.error_code)


class JobEvents:
    """Fan-out of :class:`JobEvent` to bounded queues, per job or for all jobs (``job_id=None``)."""

    def __init__(self, max_pending: int = 100) -> None:
        self._max_pending = max_pending
        self._queues: dict[str | None, set[asyncio.Queue[JobEvent]]] = {}

    @contextmanager
    def subscribe(self, job_id: str | None = None) -> Iterator[asyncio.Queue[JobEvent]]:
        """``with events.subscribe(job_id) as queue: event = await queue.get()``; unsubscribes on exit."""
        queue: asyncio.Queue[JobEvent] = asyncio.Queue(self._max_pending)
        self._queues.setdefault(job_id, set()).add(queue)
        try:
            yield queue
        finally:
            subscribers = self._queues.get(job_id, set())
            subscribers.discard(queue)
            if not subscribers:
                self._queues.pop(job_id, None)

    def publish(self, event: JobEvent) -> None:
        """Never blocks the dispatcher: a follower that does not keep up loses its oldest events."""
        for key in (event.job_id, None):
            for queue in self._queues.get(key, ()):
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(event)
