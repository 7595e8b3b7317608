"""Replay protection: every accepted (key id, nonce) pair is recorded in the shared database.

A unique primary key makes the first insert win, so concurrent replicas cannot both accept one nonce.
Rows expire when their signature could no longer pass the window anyway; errors propagate so that the
caller refuses the request (fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import BigInteger, String, bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from serve_app.auth.ratelimit import FailureRow, failure_subject
from serve_app.db import Base, is_sqlite


class NonceRow(Base):
    __tablename__ = "auth_nonces"

    key_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(128), primary_key=True)
    # Unix seconds after which no signature carrying this nonce can be accepted.
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)


@dataclass(frozen=True)
class Admission:
    """The last store step of a verified request: was its nonce new, and is its client blocked?"""

    fresh: bool
    blocked_until: float | None  # the client's block in ``auth_failures``; None without a row, or for a replay


class NonceStore:
    """Insert-once store of nonces; ``purge_expired`` deletes rows that can no longer matter."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        insert = sqlite.insert if is_sqlite(str(engine.url)) else postgresql.insert
        # Built once: it runs on every signed request. ON CONFLICT DO NOTHING rather than catching the
        # IntegrityError: on Postgres a failed statement aborts its transaction.
        self._insert_nonce = (
            insert(NonceRow)
            .values(key_id=bindparam("key_id"), nonce=bindparam("nonce"), expires_at=bindparam("expires_at"))
            .on_conflict_do_nothing()
        )
        # ... and the same insert reading the client's block (a scalar subquery in RETURNING, SQLite >= 3.35
        # and Postgres): the whole store cost of a signed request whose key is cached is this one statement.
        block = select(FailureRow.blocked_until).where(FailureRow.subject == bindparam("subject"))
        self._admit = self._insert_nonce.returning(block.scalar_subquery())

    async def remember(self, key_id: str, nonce: str, *, expires_at: int) -> bool:
        """True if the nonce is new for this key (and is now recorded); False if it was seen: a replay."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                self._insert_nonce, {"key_id": key_id, "nonce": nonce, "expires_at": expires_at}
            )
        return result.rowcount == 1

    async def admit(self, key_id: str, nonce: str, *, expires_at: int, client: str) -> Admission:
        """Record the nonce and read ``client``'s failure block, in one statement.

        A replay inserts nothing and so returns no row: its block is not read (it is refused anyway)."""
        params = {"key_id": key_id, "nonce": nonce, "expires_at": expires_at, "subject": failure_subject(client)}
        async with self._engine.begin() as conn:
            row = (await conn.execute(self._admit, params)).one_or_none()
        return Admission(fresh=row is not None, blocked_until=None if row is None else row[0])

    async def purge_expired(self, now: float) -> int:
        """Delete nonces whose signatures expired before ``now``; returns how many."""
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(NonceRow).where(NonceRow.expires_at < now))
        return result.rowcount
