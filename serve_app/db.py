"""Database engine and the declarative base shared by every table of the app.

SQLite (a file under the data directory) is the embedded default; clusters give a Postgres URL. Shared
state (jobs, nonces, idempotency keys, failure counters) lives here, never in one replica's memory.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """An async engine for ``sqlite+aiosqlite:///path`` or ``postgresql+asyncpg://...`` URLs."""
    if is_sqlite(url):
        # Several processes (ingress replicas, CLI) share the file: WAL lets readers run beside one
        # writer, and the busy timeout makes a writer wait instead of failing at once.
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL still survives any process crash; only an OS crash or power cut can lose the
            # last commits. It saves an fsync per commit (every signed request inserts a nonce). Clusters
            # that need power-cut durability use Postgres.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_async_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=20)


# Any constant shared by every process of the app: the key of the advisory lock below.
_SCHEMA_LOCK_KEY = 0x0F3EA5


async def create_schema(engine: AsyncEngine) -> None:
    """Create every table registered on :class:`Base` (idempotent, safe to run from several processes).

    The ingress and the job workers start together and each creates the schema. ``create_all`` checks for a
    table, then creates it, in two statements, so two processes can both pass the check (measured on a fresh
    SQLite file: "table ... already exists", or a lock wait that ends in "database is locked"). Creation is
    therefore serialised: on Postgres by a transaction-scoped advisory lock, on SQLite (one host by nature)
    by an exclusive ``flock`` on a file next to the database.
    """
    async with _sqlite_file_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
        await conn.run_sync(Base.metadata.create_all)


@asynccontextmanager
async def _sqlite_file_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    fd = os.open(f"{database}.schema-lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        # flock blocks: wait in a worker thread so the event loop (health checks) keeps running
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
