"""The durable outbox: deliveries written in the job's terminal transaction, claimed with a lease, finished.

Writing (:func:`enqueue_job_events`): the job store calls it inside the transaction of every terminal
transition, so a job that ends has its deliveries committed with it, or neither happened. One row per
matching active endpoint of the job's agent; the body is fixed then, so every attempt signs the same bytes.

Claiming (:meth:`Outbox.claim`): ONE ``UPDATE ... WHERE id IN (<due pick>) AND <still due> RETURNING``, as
``serve_app.jobs.claiming``: on Postgres the pick locks ``FOR UPDATE SKIP LOCKED`` (concurrent workers take
disjoint rows), on SQLite the statement takes the write lock before it reads. A claim counts the attempt and
leases the row; every outcome is recorded only by the holder of that attempt (lease owner and attempt
number), so an attempt whose worker died is retried after ``lease_s`` with the same ``webhook-id``
(at-least-once) and a late original cannot overwrite its successor's outcome.
"""

from __future__ import annotations

import json
import random
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from serve_app.jobs.models import JOBS
from serve_app.jobs.records import JobRecord
from serve_app.webhooks.models import DELIVERIES, ENDPOINTS
from serve_app.webhooks.settings import WebhookSettings

EVENT_TYPES = ("job.succeeded", "job.failed", "job.cancelled", "job.expired")
_EVENT_OF_STATUS = {status: f"job.{status}" for status in ("succeeded", "failed", "cancelled", "expired")}
_ERROR_CHARS = 500


async def enqueue_job_events(
    conn: AsyncConnection,
    job_ids: Sequence[str],
    *,
    now: datetime,
    result_expires_at: Callable[[JobRecord], datetime | None],
) -> int:
    """In the caller's transaction: one pending delivery per (ended job, active endpoint of its agent that
    subscribed to the job's event). Returns how many were written."""
    if not job_ids:
        return 0
    # Imported here: serve_app.views imports the serve_app.jobs package, whose store imports this module.
    from serve_app.views import job_view

    jobs = (await conn.execute(select(JOBS).where(JOBS.c.id.in_(list(job_ids))))).mappings().all()
    agents = {job["agent"] for job in jobs}
    endpoints = (
        await conn.execute(
            select(ENDPOINTS.c.id, ENDPOINTS.c.agent, ENDPOINTS.c.events).where(
                ENDPOINTS.c.agent.in_(agents), ENDPOINTS.c.status == "active"
            )
        )
    ).all()
    if not endpoints:
        return 0
    rows = []
    for job in jobs:
        event = _EVENT_OF_STATUS.get(job["status"])
        targets = [e.id for e in endpoints if e.agent == job["agent"] and event in e.events]
        if event is None or not targets:
            continue
        record = JobRecord.from_row(job)
        record = replace(record, result_expires_at=result_expires_at(record))
        body = json.dumps(
            {"type": event, "timestamp": _iso(record.finished_at or now), "data": job_view(record)},
            separators=(",", ":"),
        )
        for endpoint_id in targets:
            rows.append(
                {
                    "id": "msg_" + secrets.token_hex(16),
                    "endpoint_id": endpoint_id,
                    "agent": job["agent"],
                    "event_type": event,
                    "job_id": job["id"],
                    "payload": body,
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "lease_owner": None,
                    "lease_expires_at": None,
                    "created_at": now,
                    "finished_at": None,
                    "last_status_code": None,
                    "last_error": None,
                }
            )
    if rows:
        await conn.execute(insert(DELIVERIES), rows)
    return len(rows)


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds") + "Z"


@dataclass(frozen=True)
class Delivery:
    id: str
    endpoint_id: str
    agent: str
    event_type: str
    job_id: str
    payload: str
    attempts: int  # this attempt's number, from 1
    status: str

    @classmethod
    def from_row(cls, row: Any) -> Delivery:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


def backoff_s(settings: WebhookSettings, attempts: int, rng: random.Random | None = None) -> float:
    """Wait after the ``attempts``-th failed attempt: base x 4^(attempts-1), capped, then 50-100 % of it."""
    delay = min(settings.backoff_cap_s, settings.backoff_base_s * 4 ** (attempts - 1))
    return delay * (0.5 + 0.5 * (rng or random).random())


class Outbox:
    def __init__(self, engine: AsyncEngine, settings: WebhookSettings, *, clock: Callable[[], datetime]) -> None:
        self._engine = engine
        self.settings = settings
        self._clock = clock
        self._row_locks = engine.dialect.name == "postgresql"

    async def claim(self, worker_id: str, limit: int) -> list[Delivery]:
        """Lease up to ``limit`` due attempts to ``worker_id`` (oldest due first)."""
        now = self._clock()
        due = and_(
            DELIVERIES.c.status == "pending",
            DELIVERIES.c.next_attempt_at <= now,
            or_(DELIVERIES.c.lease_expires_at.is_(None), DELIVERIES.c.lease_expires_at < now),
        )
        picked = DELIVERIES.alias("picked")
        pick = (
            select(picked.c.id)
            .where(
                picked.c.status == "pending",
                picked.c.next_attempt_at <= now,
                or_(picked.c.lease_expires_at.is_(None), picked.c.lease_expires_at < now),
            )
            .order_by(picked.c.next_attempt_at, picked.c.id)
            .limit(limit)
        )
        if self._row_locks:
            pick = pick.with_for_update(skip_locked=True, of=picked)
        chosen = pick.cte("chosen").prefix_with("MATERIALIZED")  # the pick runs once (see jobs.claiming)
        stmt = (
            update(DELIVERIES)
            .where(DELIVERIES.c.id.in_(select(chosen.c.id)), due)
            .values(
                attempts=DELIVERIES.c.attempts + 1,
                lease_owner=worker_id,
                lease_expires_at=now + timedelta(seconds=self.settings.lease_s),
            )
            .returning(*DELIVERIES.c)
        )
        async with self._engine.begin() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return sorted((Delivery.from_row(row) for row in rows), key=lambda d: d.id)

    def _held(self, delivery: Delivery, worker_id: str) -> tuple[Any, ...]:
        return (
            DELIVERIES.c.id == delivery.id,
            DELIVERIES.c.status == "pending",
            DELIVERIES.c.lease_owner == worker_id,
            DELIVERIES.c.attempts == delivery.attempts,
        )

    async def delivered(self, delivery: Delivery, worker_id: str, *, status_code: int) -> bool:
        now = self._clock()
        async with self._engine.begin() as conn:
            done = await conn.execute(
                update(DELIVERIES)
                .where(*self._held(delivery, worker_id))
                .values(
                    status="delivered",
                    finished_at=now,
                    last_status_code=status_code,
                    last_error=None,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
            if done.rowcount != 1:
                return False
            await conn.execute(
                update(ENDPOINTS)
                .where(ENDPOINTS.c.id == delivery.endpoint_id)
                .values(
                    consecutive_failures=0,
                    delivered_count=ENDPOINTS.c.delivered_count + 1,
                    last_attempt_at=now,
                    last_success_at=now,
                    last_status_code=status_code,
                )
            )
        return True

    async def attempt_failed(
        self, delivery: Delivery, worker_id: str, *, error: str, status_code: int | None = None
    ) -> str | None:
        """Record a failed attempt: retry later with backoff, or (all attempts used) fail the delivery, and
        disable the endpoint after ``disable_after_failures`` failed deliveries in a row. Returns the
        delivery's new status (``pending`` / ``failed``), or None if this worker no longer held the attempt."""
        now = self._clock()
        error = error[:_ERROR_CHARS]
        final = delivery.attempts >= self.settings.max_attempts
        values: dict[str, Any] = {
            "last_status_code": status_code,
            "last_error": error,
            "lease_owner": None,
            "lease_expires_at": None,
        }
        if final:
            values.update(status="failed", finished_at=now)
        else:
            values["next_attempt_at"] = now + timedelta(seconds=backoff_s(self.settings, delivery.attempts))
        async with self._engine.begin() as conn:
            done = await conn.execute(update(DELIVERIES).where(*self._held(delivery, worker_id)).values(values))
            if done.rowcount != 1:
                return None
            endpoint_values: dict[str, Any] = {
                "last_attempt_at": now,
                "last_status_code": status_code,
                "last_error": error,
            }
            if final:
                endpoint_values.update(
                    consecutive_failures=ENDPOINTS.c.consecutive_failures + 1,
                    failed_count=ENDPOINTS.c.failed_count + 1,
                )
            await conn.execute(update(ENDPOINTS).where(ENDPOINTS.c.id == delivery.endpoint_id).values(endpoint_values))
            if final:
                await self._disable_if_failing(conn, delivery.endpoint_id, now)
        return "failed" if final else "pending"

    async def _disable_if_failing(self, conn: AsyncConnection, endpoint_id: str, now: datetime) -> None:
        limit = self.settings.disable_after_failures
        disabled = await conn.execute(
            update(ENDPOINTS)
            .where(
                ENDPOINTS.c.id == endpoint_id,
                ENDPOINTS.c.status == "active",
                ENDPOINTS.c.consecutive_failures >= limit,
            )
            .values(
                status="disabled",
                disabled_at=now,
                disabled_reason=f"{limit} deliveries in a row failed after "
                f"{self.settings.max_attempts} attempts each; register the endpoint again once it works",
            )
        )
        if disabled.rowcount == 1:
            # what is still queued for it will not be sent
            await conn.execute(
                update(DELIVERIES)
                .where(DELIVERIES.c.endpoint_id == endpoint_id, DELIVERIES.c.status == "pending")
                .values(status="abandoned", finished_at=now, last_error="the endpoint was disabled")
            )

    async def abandon(self, delivery: Delivery, worker_id: str, *, reason: str) -> bool:
        """The endpoint is gone or disabled: the attempt is not made."""
        async with self._engine.begin() as conn:
            done = await conn.execute(
                update(DELIVERIES)
                .where(*self._held(delivery, worker_id))
                .values(
                    status="abandoned",
                    finished_at=self._clock(),
                    last_error=reason,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
        return done.rowcount == 1

    async def deliveries(self, *, endpoint_id: str | None = None) -> list[dict[str, Any]]:
        """Every delivery row (of one endpoint), oldest first: for tests and operators."""
        stmt = select(DELIVERIES).order_by(DELIVERIES.c.created_at, DELIVERIES.c.id)
        if endpoint_id is not None:
            stmt = stmt.where(DELIVERIES.c.endpoint_id == endpoint_id)
        async with self._engine.connect() as conn:
            return [dict(row) for row in (await conn.execute(stmt)).mappings().all()]
