"""Idempotency keys of submissions (IETF httpapi-idempotency-key draft, Stripe semantics).

A key is reserved as ``pending`` in its own short transaction before any work, so a concurrent duplicate
finds it and gets 409 instead of creating a second job. The submission's own transaction turns it ``done``
with the job or batch id; a failed submission deletes it so the client can retry with the same key. The
primary key (agent, key) is what makes the reservation race-free on both backends: the losing insert
raises IntegrityError and reads the winner's row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from serve_app.jobs.models import IDEMPOTENCY
from serve_app.jobs.records import IdempotencyConflict, IdempotencyInProgress

# Reserving loops only when a stale or expired record is removed under us; more rounds mean heavy
# contention on one key, which the client should see as "in progress".
_MAX_ROUNDS = 3


def request_fingerprint(*parts: bytes | str) -> str:
    """SHA-256 over the parts that define "the same request" (e.g. method, path, canonical body)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))  # length-prefixed: ("ab", "c") != ("a", "bc")
        digest.update(data)
    return digest.hexdigest()


async def reserve(
    engine: AsyncEngine,
    agent: str,
    key: str,
    request_hash: str,
    *,
    now: datetime,
    ttl_s: float,
    pending_timeout_s: float,
) -> Mapping[Any, Any] | None:
    """Reserve ``key`` for this request: None when reserved, else the finished record to replay.

    Raises IdempotencyConflict when the key was used with another body, IdempotencyInProgress while the
    first request with this key is still running. Records past ``ttl_s`` (finished) or ``pending_timeout_s``
    (a request that died mid-way) no longer count and are replaced.
    """
    for _ in range(_MAX_ROUNDS):
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    insert(IDEMPOTENCY).values(
                        agent=agent, key=key, request_hash=request_hash, state="pending", created_at=now
                    )
                )
            return None
        except IntegrityError:
            pass
        async with engine.connect() as conn:
            row = (
                (await conn.execute(select(IDEMPOTENCY).where(IDEMPOTENCY.c.agent == agent, IDEMPOTENCY.c.key == key)))
                .mappings()
                .first()
            )
        if row is None:
            continue  # removed between our insert and this read: try again
        limit_s = ttl_s if row["state"] == "done" else pending_timeout_s
        if row["created_at"] < now - timedelta(seconds=limit_s):
            async with engine.begin() as conn:
                # Guarded by created_at so that we never delete a fresh record another request just made.
                await conn.execute(
                    delete(IDEMPOTENCY).where(
                        IDEMPOTENCY.c.agent == agent,
                        IDEMPOTENCY.c.key == key,
                        IDEMPOTENCY.c.created_at == row["created_at"],
                    )
                )
            continue
        if row["request_hash"] != request_hash:
            raise IdempotencyConflict(
                f"Idempotency-Key {key!r} was already used with a different request body; use a new key"
            )
        if row["state"] == "pending":
            raise IdempotencyInProgress(
                f"a request with Idempotency-Key {key!r} is still being processed; retry shortly"
            )
        return row
    raise IdempotencyInProgress(f"a request with Idempotency-Key {key!r} is still being processed; retry shortly")


async def finish(conn: AsyncConnection, agent: str, key: str, *, job_id: str | None, batch_id: str | None) -> None:
    """Mark the reservation done, inside the transaction that created the job(s)."""
    await conn.execute(
        update(IDEMPOTENCY)
        .where(IDEMPOTENCY.c.agent == agent, IDEMPOTENCY.c.key == key)
        .values(state="done", job_id=job_id, batch_id=batch_id)
    )


async def release(engine: AsyncEngine, agent: str, key: str) -> None:
    """Drop a pending reservation whose submission failed, so the same key can be retried."""
    async with engine.begin() as conn:
        await conn.execute(
            delete(IDEMPOTENCY).where(
                IDEMPOTENCY.c.agent == agent, IDEMPOTENCY.c.key == key, IDEMPOTENCY.c.state == "pending"
            )
        )


async def purge(engine: AsyncEngine, *, now: datetime, ttl_s: float) -> int:
    """Delete records older than the retention window; returns how many."""
    async with engine.begin() as conn:
        result = await conn.execute(
            delete(IDEMPOTENCY).where(IDEMPOTENCY.c.created_at < now - timedelta(seconds=ttl_s))
        )
    return result.rowcount
