"""The schema can be created by several replicas at once (ingress and job workers start together)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import inspect

import serve_app.storage  # noqa: F401  (registers every table of the app on Base)
from serve_app.db import Base, create_schema, make_engine
from tests.conftest import fresh_postgres_database


async def _create_concurrently(url: str, processes: int = 4) -> set[str]:
    engines = [make_engine(url) for _ in range(processes)]
    try:
        await asyncio.gather(*(create_schema(engine) for engine in engines))
        async with engines[0].connect() as conn:
            return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await asyncio.gather(*(engine.dispose() for engine in engines))


@pytest.mark.parametrize("round_", range(5))
async def test_create_schema_concurrently_on_a_fresh_sqlite_file(tmp_path: Path, round_: int) -> None:
    tables = await _create_concurrently(f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")
    assert tables == set(Base.metadata.tables)


@pytest.mark.postgres
async def test_create_schema_concurrently_on_a_fresh_postgres_database() -> None:
    async with fresh_postgres_database() as url:
        assert await _create_concurrently(url) == set(Base.metadata.tables)
