"""The endpoint store: register, list, delete and read the webhook endpoints of an agent.

A secret is created here, sealed with the master key before it reaches the database and returned in clear
exactly once, by :meth:`EndpointStore.create`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from serve_app.auth.crypto import seal, unseal
from serve_app.auth.secret import Secret
from serve_app.webhooks.models import DELIVERIES, ENDPOINTS
from serve_app.webhooks.signing import new_secret

Clock = Callable[[], datetime]


class EndpointLimitReached(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"this agent already has {limit} webhook endpoints (its limit); delete one first")
        self.limit = limit


@dataclass(frozen=True)
class Endpoint:
    """Everything about an endpoint except its secret."""

    id: str
    agent: str
    url: str
    events: tuple[str, ...]
    status: str
    created_at: datetime
    disabled_at: datetime | None
    disabled_reason: str | None
    consecutive_failures: int
    delivered_count: int
    failed_count: int
    last_attempt_at: datetime | None
    last_success_at: datetime | None
    last_status_code: int | None
    last_error: str | None

    @classmethod
    def from_row(cls, row: Any) -> Endpoint:
        values = {name: row[name] for name in cls.__dataclass_fields__}
        values["events"] = tuple(values["events"])
        return cls(**values)


_PUBLIC = tuple(column for column in ENDPOINTS.c if column.name != "secret_sealed")


def secret_context(endpoint_id: str) -> bytes:
    return b"webhook:" + endpoint_id.encode()


class EndpointStore:
    def __init__(self, engine: AsyncEngine, master_key: Secret, *, clock: Clock) -> None:
        self._engine = engine
        self._master_key = master_key
        self._clock = clock

    async def create(self, agent: str, url: str, events: Sequence[str], *, limit: int) -> tuple[Endpoint, Secret]:
        """A new active endpoint and its secret in clear (the only time it is returned)."""
        endpoint_id = "wh_" + secrets.token_hex(16)
        secret = new_secret()
        row = {
            "id": endpoint_id,
            "agent": agent,
            "url": url,
            "events": list(events),
            "secret_sealed": seal(self._master_key, secret, context=secret_context(endpoint_id)),
            "status": "active",
            "created_at": self._clock(),
            "disabled_at": None,
            "disabled_reason": None,
            "consecutive_failures": 0,
            "delivered_count": 0,
            "failed_count": 0,
            "last_attempt_at": None,
            "last_success_at": None,
            "last_status_code": None,
            "last_error": None,
        }
        async with self._engine.begin() as conn:
            # Insert first, then count in the same transaction: on SQLite the insert holds the write lock, so
            # the bound is exact there; on Postgres two concurrent creates may both pass (a soft bound).
            await conn.execute(insert(ENDPOINTS).values(row))
            count = (await conn.execute(select(func.count()).where(ENDPOINTS.c.agent == agent))).scalar_one()
            if count > limit:
                raise EndpointLimitReached(limit)  # rolls the insert back
        return Endpoint.from_row(row), secret

    async def list(self, agent: str) -> list[Endpoint]:
        stmt = select(*_PUBLIC).where(ENDPOINTS.c.agent == agent).order_by(ENDPOINTS.c.created_at, ENDPOINTS.c.id)
        async with self._engine.connect() as conn:
            return [Endpoint.from_row(row) for row in (await conn.execute(stmt)).mappings().all()]

    async def get(self, agent: str, endpoint_id: str) -> Endpoint | None:
        stmt = select(*_PUBLIC).where(ENDPOINTS.c.id == endpoint_id, ENDPOINTS.c.agent == agent)
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).mappings().first()
        return None if row is None else Endpoint.from_row(row)

    async def delete(self, agent: str, endpoint_id: str) -> bool:
        """Remove the endpoint and its deliveries (pending ones are never sent); False if there was none."""
        async with self._engine.begin() as conn:
            removed = await conn.execute(
                delete(ENDPOINTS).where(ENDPOINTS.c.id == endpoint_id, ENDPOINTS.c.agent == agent)
            )
            if removed.rowcount != 1:
                return False
            await conn.execute(delete(DELIVERIES).where(DELIVERIES.c.endpoint_id == endpoint_id))
        return True

    async def target(self, endpoint_id: str) -> tuple[Endpoint, Secret] | None:
        """The endpoint (any agent's: for the delivery worker) with its secret unsealed."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(ENDPOINTS).where(ENDPOINTS.c.id == endpoint_id))).mappings().first()
        if row is None:
            return None
        secret = unseal(self._master_key, row["secret_sealed"], context=secret_context(endpoint_id))
        return Endpoint.from_row(row), secret
