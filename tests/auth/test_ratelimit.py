"""FailureLimiter on both backends: windows, exponential backoff, forgiveness, purge, the in-process view."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from serve_app.auth.ratelimit import FailureLimiter
from serve_app.auth.settings import RateLimitSettings

SETTINGS = RateLimitSettings(
    window_s=60,
    max_failures_per_ip=3,
    backoff_base_s=30,
    backoff_max_s=100,
    forgive_after_s=600,
)


async def test_failure_limiter_blocks_at_limit_with_retry_after(any_engine: AsyncEngine) -> None:
    limiter = FailureLimiter(any_engine, SETTINGS)
    for _ in range(2):
        assert await limiter.record_failure("192.0.2.1", 1000.0) is None
    assert await limiter.retry_after("192.0.2.1", 1000.0) is None
    assert await limiter.record_failure("192.0.2.1", 1000.5) == 30
    assert await limiter.retry_after("192.0.2.1", 1001.0) == 30  # ceil(1030.5 - 1001)
    assert await limiter.retry_after("192.0.2.1", 1030.6) is None
    assert await limiter.retry_after("192.0.2.2", 1001.0) is None  # per client


async def test_failure_limiter_remembers_blocks_it_learned_without_the_store(any_engine: AsyncEngine) -> None:
    limiter = FailureLimiter(any_engine, SETTINGS)
    for _ in range(3):
        await limiter.record_failure("192.0.2.1", 1000.0)
    async with any_engine.begin() as conn:
        await conn.exec_driver_sql("DROP TABLE auth_failures")  # the in-process view must not need it
    assert limiter.known_block("192.0.2.1", 1010.0) == 20
    assert limiter.known_block("192.0.2.1", 1030.0) is None
    assert limiter.known_block("192.0.2.2", 1010.0) is None


async def test_failure_limiter_learns_blocks_seen_by_another_replica(any_engine: AsyncEngine) -> None:
    one, other = FailureLimiter(any_engine, SETTINGS), FailureLimiter(any_engine, SETTINGS)
    for _ in range(3):
        await one.record_failure("192.0.2.1", 1000.0)
    assert other.known_block("192.0.2.1", 1001.0) is None
    assert await other.retry_after("192.0.2.1", 1001.0) == 29
    assert other.known_block("192.0.2.1", 1001.0) == 29


async def test_failure_limiter_window_resets_count(any_engine: AsyncEngine) -> None:
    limiter = FailureLimiter(any_engine, SETTINGS)
    for _ in range(2):
        await limiter.record_failure("192.0.2.1", 1000.0)
    assert await limiter.record_failure("192.0.2.1", 1061.0) is None  # the first failures' window is over


async def test_failure_limiter_backoff_doubles_then_caps_then_is_forgiven(any_engine: AsyncEngine) -> None:
    limiter = FailureLimiter(any_engine, SETTINGS)
    now = 1000.0
    waits = []
    for _ in range(4):
        for _ in range(3):
            await limiter.record_failure("192.0.2.1", now)
        wait = await limiter.retry_after("192.0.2.1", now)
        waits.append(wait)
        now += wait or 0
    assert waits == [30, 60, 100, 100]
    now += 601  # clean for longer than forgive_after_s
    for _ in range(3):
        await limiter.record_failure("192.0.2.1", now)
    assert await limiter.retry_after("192.0.2.1", now) == 30


async def test_failure_limiter_counts_concurrent_failures_exactly(any_engine: AsyncEngine) -> None:
    settings = RateLimitSettings(max_failures_per_ip=50, window_s=60)
    limiter = FailureLimiter(any_engine, settings)
    await asyncio.gather(*(limiter.record_failure("192.0.2.9", 1000.0) for _ in range(49)))
    assert await limiter.retry_after("192.0.2.9", 1000.0) is None
    await limiter.record_failure("192.0.2.9", 1000.0)
    assert await limiter.retry_after("192.0.2.9", 1000.0) == 30


async def test_failure_limiter_purges_stale_counters(any_engine: AsyncEngine) -> None:
    limiter = FailureLimiter(any_engine, SETTINGS)
    await limiter.record_failure("192.0.2.1", 1000.0)
    for _ in range(3):
        await limiter.record_failure("192.0.2.2", 1000.0)  # blocked until 1030
    await limiter.record_failure("192.0.2.3", 1500.0)
    assert await limiter.purge_stale(1100.0) == 1  # .2 may still raise a backoff; .3 is in its window
    assert await limiter.purge_stale(1700.0) == 2
