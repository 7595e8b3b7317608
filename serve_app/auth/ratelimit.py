"""Failure rate limiting per client IP and per key id, with exponential backoff, in the shared database.

Only refusals count; successes neither count nor reset. A subject (``ip:<addr>`` or ``key:<id>``) that
reaches its limit within the window is blocked for ``backoff_base_s * 2**strikes`` (capped), and the
caller answers 429 with Retry-After until then. Blocks are temporary, never a hard lockout.
"""

from __future__ import annotations

import math
from typing import Literal

from sqlalchemy import Double, Integer, String, case, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from serve_app.auth.settings import RateLimitSettings
from serve_app.db import Base, is_sqlite

SubjectKind = Literal["ip", "key"]


class FailureRow(Base):
    __tablename__ = "auth_failures"

    subject: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_start: Mapped[float] = mapped_column(Double)
    failures: Mapped[int] = mapped_column(Integer)
    strikes: Mapped[int] = mapped_column(Integer)  # blocks in a row, the backoff exponent
    blocked_until: Mapped[float] = mapped_column(Double)


def subject_of(kind: SubjectKind, value: str) -> str:
    return f"{kind}:{value}"


class FailureLimiter:
    def __init__(self, engine: AsyncEngine, settings: RateLimitSettings) -> None:
        self._engine = engine
        self._settings = settings
        self._insert = (sqlite.insert if is_sqlite(str(engine.url)) else postgresql.insert)(FailureRow)

    def _limit(self, kind: SubjectKind) -> int:
        if kind == "ip":
            return self._settings.max_failures_per_ip
        return self._settings.max_failures_per_key

    async def retry_after(self, kind: SubjectKind, value: str, now: float) -> int | None:
        """Whole seconds until the subject may try again, or None when it is not blocked."""
        async with self._engine.connect() as conn:
            blocked_until = await conn.scalar(
                select(FailureRow.blocked_until).where(FailureRow.subject == subject_of(kind, value))
            )
        if blocked_until is None or blocked_until <= now:
            return None
        return max(1, math.ceil(blocked_until - now))

    async def record_failure(self, kind: SubjectKind, value: str, now: float) -> None:
        """Count one refusal; block the subject when it reaches its limit within the window."""
        subject = subject_of(kind, value)
        s = self._settings
        async with self._engine.begin() as conn:
            # The first statement writes, so SQLite takes its write lock here and Postgres locks the row:
            # concurrent replicas serialize on the subject instead of losing counts.
            await conn.execute(
                self._insert.values(
                    subject=subject, window_start=now, failures=0, strikes=0, blocked_until=0.0
                ).on_conflict_do_nothing(index_elements=["subject"])
            )
            window_over = FailureRow.window_start <= now - s.window_s
            await conn.execute(
                update(FailureRow)
                .where(FailureRow.subject == subject)
                .values(
                    window_start=case((window_over, now), else_=FailureRow.window_start),
                    failures=case((window_over, 1), else_=FailureRow.failures + 1),
                    strikes=case((FailureRow.blocked_until <= now - s.forgive_after_s, 0), else_=FailureRow.strikes),
                )
            )
            await self._block_if_over(conn, kind, subject, now)

    async def _block_if_over(self, conn: AsyncConnection, kind: SubjectKind, subject: str, now: float) -> None:
        row = (
            await conn.execute(select(FailureRow.failures, FailureRow.strikes).where(FailureRow.subject == subject))
        ).one()
        if row.failures < self._limit(kind):
            return
        backoff = min(self._settings.backoff_base_s * 2**row.strikes, self._settings.backoff_max_s)
        await conn.execute(
            update(FailureRow)
            .where(FailureRow.subject == subject)
            .values(failures=0, window_start=now, strikes=row.strikes + 1, blocked_until=now + backoff)
        )

    async def purge_stale(self, now: float) -> int:
        """Delete counters that can no longer block or raise a backoff; returns how many."""
        s = self._settings
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(FailureRow).where(
                    FailureRow.window_start <= now - s.window_s,
                    FailureRow.blocked_until <= now - s.forgive_after_s,
                )
            )
        return result.rowcount
