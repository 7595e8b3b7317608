"""Replay protection: every accepted (key id, nonce) pair is recorded in the shared database.

A unique primary key makes the first insert win, so concurrent replicas cannot both accept one nonce.
Rows expire when their signature could no longer pass the window anyway; errors propagate so that the
caller refuses the request (fail closed).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, String, delete, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from serve_app.db import Base


class NonceRow(Base):
    __tablename__ = "auth_nonces"

    key_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(128), primary_key=True)
    # Unix seconds after which no signature carrying this nonce can be accepted.
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)


class NonceStore:
    """Insert-once store of nonces; ``purge_expired`` deletes rows that can no longer matter."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def remember(self, key_id: str, nonce: str, *, expires_at: int) -> bool:
        """True if the nonce is new for this key (and is now recorded); False if it was seen: a replay."""
        try:
            async with self._engine.begin() as conn:
                await conn.execute(insert(NonceRow).values(key_id=key_id, nonce=nonce, expires_at=expires_at))
        except IntegrityError:
            return False
        return True

    async def purge_expired(self, now: float) -> int:
        """Delete nonces whose signatures expired before ``now``; returns how many."""
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(NonceRow).where(NonceRow.expires_at < now))
        return result.rowcount
