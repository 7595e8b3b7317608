"""The schema can be upgraded by several replicas at once (ingress and job workers start together)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import inspect

from serve_app.db import make_engine
from serve_app.schema import VERSION_TABLE, head_revision, load_metadata, schema_state, upgrade_schema
from tests.conftest import fresh_postgres_database


async def _upgrade_concurrently(url: str, processes: int = 4) -> set[str]:
    engines = [make_engine(url) for _ in range(processes)]
    try:
        await asyncio.gather(*(upgrade_schema(engine) for engine in engines))
        assert (await schema_state(engines[0])).revision == head_revision()
        async with engines[0].connect() as conn:
            return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await asyncio.gather(*(engine.dispose() for engine in engines))


@pytest.mark.parametrize("round_", range(5))
async def test_upgrade_schema_concurrently_on_a_fresh_sqlite_file(tmp_path: Path, round_: int) -> None:
    tables = await _upgrade_concurrently(f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")
    assert tables == set(load_metadata().tables) | {VERSION_TABLE}


@pytest.mark.postgres
async def test_upgrade_schema_concurrently_on_a_fresh_postgres_database() -> None:
    async with fresh_postgres_database() as url:
        assert await _upgrade_concurrently(url) == set(load_metadata().tables) | {VERSION_TABLE}
