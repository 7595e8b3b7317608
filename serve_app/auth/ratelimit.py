"""Failure rate limiting per client (IP, or an IPv6 client's /64), with exponential backoff, in the shared
database.

Only refusals count; successes neither count nor reset. A client that reaches its limit within the
window is blocked for ``backoff_base_s * 2**strikes`` (capped), and the caller answers 429 with
Retry-After until then. Blocks are temporary, never a hard lockout.

Nothing counts against a key id: key ids are not secret, and no refusal proves that the sender knows the
key's secret (a bad HMAC or an unknown key plainly does not; a replay or a foreign IP can come from
anyone who saw one signed request; a missing scope can only be sent by a secret holder, who could then
use the key anyway, so blocking the key would stop nobody but the agent). Counting per key let anyone
lock an agent out.

The database is authoritative; each process also remembers the blocks it learned (``known_block``) so
that a blocked client is refused before any database work or body read.
"""

from __future__ import annotations

import math

from sqlalchemy import Double, Integer, String, case, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from serve_app.auth.settings import RateLimitSettings
from serve_app.db import Base, is_sqlite

# Bound on the blocks one process remembers; past it expired entries go, then the oldest.
_MAX_KNOWN_BLOCKS = 4096


class FailureRow(Base):
    __tablename__ = "auth_failures"

    subject: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_start: Mapped[float] = mapped_column(Double)
    failures: Mapped[int] = mapped_column(Integer)
    strikes: Mapped[int] = mapped_column(Integer)  # blocks in a row, the backoff exponent
    blocked_until: Mapped[float] = mapped_column(Double)


def failure_subject(client: str) -> str:
    """The row key of a client (``network.client_subject``) in ``auth_failures``."""
    return f"ip:{client}"


def seconds_left(blocked_until: float | None, now: float) -> int | None:
    """Whole seconds of a block still to run (at least 1), or None when there is no block at ``now``."""
    if blocked_until is None or blocked_until <= now:
        return None
    return max(1, math.ceil(blocked_until - now))


class FailureLimiter:
    def __init__(self, engine: AsyncEngine, settings: RateLimitSettings) -> None:
        self._engine = engine
        self._settings = settings
        self._insert = (sqlite.insert if is_sqlite(str(engine.url)) else postgresql.insert)(FailureRow)
        self._known_blocks: dict[str, float] = {}  # client -> blocked_until, as last read from the database

    def known_block(self, client: str, now: float) -> int | None:
        """Seconds left of a block this process has seen for ``client`` (no database access), or None."""
        return seconds_left(self._known_blocks.get(client), now)

    def learn(self, client: str, blocked_until: float | None, now: float) -> None:
        """Remember what the database said about ``client``'s block."""
        if blocked_until is None or blocked_until <= now:
            self._known_blocks.pop(client, None)
            return
        if len(self._known_blocks) >= _MAX_KNOWN_BLOCKS:
            self._known_blocks = {c: until for c, until in self._known_blocks.items() if until > now}
            while len(self._known_blocks) >= _MAX_KNOWN_BLOCKS:
                del self._known_blocks[next(iter(self._known_blocks))]
        self._known_blocks[client] = blocked_until

    async def retry_after(self, client: str, now: float) -> int | None:
        """Whole seconds until the client may try again, read from the database, or None when not blocked."""
        async with self._engine.connect() as conn:
            blocked_until = await conn.scalar(
                select(FailureRow.blocked_until).where(FailureRow.subject == failure_subject(client))
            )
        self.learn(client, blocked_until, now)
        return seconds_left(blocked_until, now)

    async def record_failure(self, client: str, now: float) -> int | None:
        """Count one refusal; block the client when it reaches its limit within the window.

        Returns the seconds left of the client's block (None when not blocked), which is also remembered."""
        subject = failure_subject(client)
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
            blocked_until = await self._block_if_over(conn, subject, now)
        self.learn(client, blocked_until, now)
        return seconds_left(blocked_until, now)

    async def _block_if_over(self, conn: AsyncConnection, subject: str, now: float) -> float:
        row = (
            await conn.execute(
                select(FailureRow.failures, FailureRow.strikes, FailureRow.blocked_until).where(
                    FailureRow.subject == subject
                )
            )
        ).one()
        if row.failures < self._settings.max_failures_per_ip:
            return row.blocked_until
        backoff = min(self._settings.backoff_base_s * 2**row.strikes, self._settings.backoff_max_s)
        await conn.execute(
            update(FailureRow)
            .where(FailureRow.subject == subject)
            .values(failures=0, window_start=now, strikes=row.strikes + 1, blocked_until=now + backoff)
        )
        return now + backoff

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
