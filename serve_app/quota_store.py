"""Slots of event streams and long-polls in the shared database, and the per-agent lock quotas take.

Replicas share nothing in memory, so an open stream is a row of ``stream_slots`` with a lease: renewed
while the stream runs, deleted when it ends. A replica that crashes stops renewing, and its slots stop
counting once their lease is over (and are deleted by the agent's next acquire).

Acquiring counts the agent's live slots of a kind and inserts one, atomically: on SQLite the first
statement writes, so the database's single write lock serialises acquires; on Postgres a transaction-scoped
advisory lock on (purpose, agent) does, so the cap is exact on both backends.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Literal, cast

from sqlalchemy import DateTime, Index, String, Table, delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from serve_app.db import Base

logger = logging.getLogger("orfeas.quotas")

SlotKind = Literal["event_stream", "long_poll"]
LockPurpose = Literal["queued_jobs", "event_stream", "long_poll"]
Clock = Callable[[], datetime]

# The first key of the two-key advisory locks quotas take: keeps them apart from other advisory locks.
_ADVISORY_NAMESPACE = 0x0F3EA6


class StreamSlotRow(Base):
    __tablename__ = "stream_slots"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # slot_<32 hex>
    agent: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))  # event_stream|long_poll
    expires_at: Mapped[datetime] = mapped_column(DateTime)  # naive UTC, like every time in the store

    __table_args__ = (Index("ix_stream_slots_agent_kind_expires", "agent", "kind", "expires_at"),)


SLOTS = cast(Table, StreamSlotRow.__table__)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _lock_key(purpose: LockPurpose, agent: str) -> int:
    """A signed 32-bit key from (purpose, agent), the same in every process (unlike ``hash``)."""
    digest = hashlib.blake2b(f"{purpose}\0{agent}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


async def lock_agent(conn: AsyncConnection, purpose: LockPurpose, agent: str) -> None:
    """Serialise, until the transaction ends, every transaction that counts this agent's ``purpose``.

    Postgres: an advisory lock (two agents whose keys collide only wait for each other). SQLite needs none:
    callers write first, which takes the database's write lock.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(:namespace, :key)"),
            {"namespace": _ADVISORY_NAMESPACE, "key": _lock_key(purpose, agent)},
        )


class SlotLimitReached(Exception):
    """The agent holds ``limit`` live slots of ``kind`` already."""

    def __init__(self, kind: SlotKind, limit: int) -> None:
        super().__init__(f"this agent already holds {limit} open {kind.replace('_', ' ')}s (its limit)")
        self.kind = kind
        self.limit = limit


class StreamSlots:
    def __init__(self, engine: AsyncEngine, *, lease_s: float, clock: Clock = _utcnow) -> None:
        self._engine = engine
        self.lease_s = lease_s
        self._clock = clock

    async def acquire(self, agent: str, kind: SlotKind, limit: int) -> SlotLease:
        """Take one of the agent's ``limit`` slots of ``kind`` or raise :class:`SlotLimitReached`.

        Use the lease as ``async with``: it renews while the block runs and frees the slot on exit."""
        now = self._clock()
        slot_id = "slot_" + secrets.token_hex(16)
        mine = (SLOTS.c.agent == agent, SLOTS.c.kind == kind)
        async with self._engine.begin() as conn:
            await lock_agent(conn, kind, agent)
            # 1. Writes first (SQLite's lock): drop the agent's dead slots, insert ours.
            await conn.execute(delete(SLOTS).where(*mine, SLOTS.c.expires_at <= now))
            await conn.execute(
                insert(SLOTS).values(
                    id=slot_id, agent=agent, kind=kind, expires_at=now + timedelta(seconds=self.lease_s)
                )
            )
            # 2. Ours included, live slots beyond the limit roll the insert back.
            live = (await conn.execute(select(func.count()).where(*mine, SLOTS.c.expires_at > now))).scalar_one()
            if live > limit:
                raise SlotLimitReached(kind, limit)
        return SlotLease(self, slot_id)

    async def renew(self, slot_id: str) -> bool:
        """Extend the slot's lease; False if it is gone (it expired and another acquire removed it)."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(SLOTS)
                .where(SLOTS.c.id == slot_id)
                .values(expires_at=self._clock() + timedelta(seconds=self.lease_s))
            )
        return result.rowcount == 1

    async def release(self, slot_id: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(delete(SLOTS).where(SLOTS.c.id == slot_id))

    async def live(self, agent: str, kind: SlotKind) -> int:
        """The agent's slots of ``kind`` whose lease is not over."""
        async with self._engine.connect() as conn:
            stmt = select(func.count()).where(
                SLOTS.c.agent == agent, SLOTS.c.kind == kind, SLOTS.c.expires_at > self._clock()
            )
            return (await conn.execute(stmt)).scalar_one()


class SlotLease:
    """A held slot: ``async with`` renews it every third of the lease and releases it on exit."""

    def __init__(self, slots: StreamSlots, slot_id: str) -> None:
        self._slots = slots
        self.slot_id = slot_id
        self._renewer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SlotLease:
        self._renewer = asyncio.create_task(self._renew_forever())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        # A client that disconnects gets its request cancelled: shield the release so the slot is freed
        # now rather than when its lease runs out.
        await asyncio.shield(self._release())

    async def _release(self) -> None:
        try:
            await self._slots.release(self.slot_id)
        except Exception:  # the lease expires on its own; a failed delete must not mask the request's outcome
            logger.warning("could not release slot %s; it frees itself at its lease's end", self.slot_id, exc_info=True)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._slots.lease_s / 3)
            try:
                alive = await self._slots.renew(self.slot_id)
            except Exception:  # a passing database error: the lease has two more renewals of slack
                logger.warning("could not renew slot %s; trying again", self.slot_id, exc_info=True)
                continue
            if not alive:
                logger.warning("slot %s expired while in use; it no longer counts", self.slot_id)
                return
