"""The service's Prometheus metrics (``ray.serve.metrics``, exported by Ray with a ``ray_`` prefix).

Ingress: auth decisions, counted from the audit log records themselves (one handler on ``orfeas.auth``),
so the metric and the log can never disagree, and submissions. Job workers: outcomes and run time,
from the dispatcher's events.
"""

from __future__ import annotations

import asyncio
import logging

from ray.serve.metrics import Counter, Histogram

from deployments.contract import TERMINAL_STATUSES
from serve_app.jobs import JobEvents

SECONDS_BUCKETS = [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800]


class AuthDecisionCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.decisions = Counter(
            "orfeas_auth_decisions",
            description="Auth decisions on /api/agent/* by decision and reason code.",
            # Ray annotates tag_keys as tuple[str] where it means tuple[str, ...]
            tag_keys=("decision", "reason"),  # type: ignore[arg-type]
        )

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "auth", None)
        if isinstance(fields, dict):
            self.decisions.inc(tags={"decision": str(fields["decision"]), "reason": str(fields["reason"])})


class IngressMetrics:
    def __init__(self) -> None:
        self.submitted = Counter(
            "orfeas_jobs_submitted", description="Jobs accepted by the API, by priority.", tag_keys=("priority",)
        )
        audit = logging.getLogger("orfeas.auth")
        if not any(isinstance(h, AuthDecisionCounter) for h in audit.handlers):
            audit.addHandler(AuthDecisionCounter())
            audit.setLevel(logging.INFO)


class WorkerMetrics:
    def __init__(self) -> None:
        self.finished = Counter(
            "orfeas_jobs_finished",
            description="Jobs this worker replica finished, by status.",
            tag_keys=("status",),
        )
        self.job_seconds = Histogram(
            "orfeas_job_seconds",
            description="Seconds from claim to the end of a job run by this worker replica.",
            boundaries=SECONDS_BUCKETS,
        )

    async def follow(self, events: JobEvents) -> None:
        """Count job outcomes until cancelled (run as a task next to the dispatcher)."""
        started: dict[str, float] = {}
        with events.subscribe() as queue:
            while True:
                event = await queue.get()
                if event.status == "running" and event.job_id not in started:
                    started[event.job_id] = event.at.timestamp()
                elif event.status in TERMINAL_STATUSES:
                    self.finished.inc(tags={"status": event.status})
                    began = started.pop(event.job_id, None)
                    if began is not None:
                        self.job_seconds.observe(max(0.0, event.at.timestamp() - began))


def start_worker_metrics(events: JobEvents) -> tuple[WorkerMetrics, asyncio.Task[None]]:
    metrics = WorkerMetrics()
    return metrics, asyncio.create_task(metrics.follow(events), name="orfeas-worker-metrics")
