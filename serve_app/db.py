"""Database engine and the declarative base shared by every table of the app.

SQLite (a file under the data directory) is the embedded default; clusters give a Postgres URL. Shared
state (jobs, nonces, idempotency keys, failure counters) lives here, never in one replica's memory. The
schema itself (Alembic revisions, the start-up check) is :mod:`serve_app.schema`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
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
