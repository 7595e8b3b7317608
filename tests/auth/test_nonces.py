"""NonceStore on both backends: first insert wins, duplicates are replays, also under concurrency."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from serve_app.auth.nonces import NonceStore
from serve_app.db import make_engine


async def test_nonce_store_accepts_new_and_refuses_duplicate(any_engine: AsyncEngine) -> None:
    store = NonceStore(any_engine)
    assert await store.remember("ak_1", "n" * 22, expires_at=2000) is True
    assert await store.remember("ak_1", "n" * 22, expires_at=2000) is False
    assert await store.remember("ak_2", "n" * 22, expires_at=2000) is True  # nonces are per key


async def test_nonce_store_concurrent_duplicate_from_two_replicas_accepts_once(
    db_url: str, any_engine: AsyncEngine
) -> None:
    second_engine = make_engine(db_url)
    try:
        replicas = [NonceStore(any_engine), NonceStore(second_engine)]
        for round_ in range(10):
            nonce = f"concurrent-nonce-{round_:05d}-abcdef"
            results = await asyncio.gather(
                *(replicas[i % 2].remember("ak_1", nonce, expires_at=2000) for i in range(4))
            )
            assert sorted(results) == [False, False, False, True]
    finally:
        await second_engine.dispose()


async def test_nonce_store_purges_only_expired(any_engine: AsyncEngine) -> None:
    store = NonceStore(any_engine)
    await store.remember("ak_1", "old" * 8, expires_at=1000)
    await store.remember("ak_1", "new" * 8, expires_at=3000)
    assert await store.purge_expired(2000) == 1
    assert await store.remember("ak_1", "old" * 8, expires_at=1000) is True  # gone, so insertable again
    assert await store.remember("ak_1", "new" * 8, expires_at=3000) is False


async def test_nonce_store_propagates_store_errors(any_engine: AsyncEngine) -> None:
    async with any_engine.begin() as conn:
        await conn.exec_driver_sql("DROP TABLE auth_nonces")
    with pytest.raises((OperationalError, ProgrammingError)):
        await NonceStore(any_engine).remember("ak_1", "n" * 22, expires_at=2000)


async def test_nonce_store_admit_records_nonce_and_reads_the_clients_block(any_engine: AsyncEngine) -> None:
    from serve_app.auth.nonces import Admission
    from serve_app.auth.ratelimit import FailureLimiter
    from serve_app.auth.settings import RateLimitSettings

    store = NonceStore(any_engine)
    await FailureLimiter(any_engine, RateLimitSettings(max_failures_per_ip=1)).record_failure("192.0.2.1", 1000.0)
    assert await store.admit("ak_1", "a" * 22, expires_at=2000, client="192.0.2.1") == Admission(True, 1030.0)
    assert await store.admit("ak_1", "b" * 22, expires_at=2000, client="192.0.2.2") == Admission(True, None)
    assert await store.admit("ak_1", "a" * 22, expires_at=2000, client="192.0.2.2") == Admission(False, None)
    assert await store.remember("ak_1", "b" * 22, expires_at=2000) is False  # admit recorded it
