"""Jobs that end the way a test needs, and a delivery worker with tiny timings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from deployments.contract import ErrorCode
from serve_app.auth.secret import Secret
from serve_app.jobs import JobStore, utcnow
from serve_app.webhooks.delivery import DeliveryWorker
from serve_app.webhooks.settings import WebhookSettings
from tests.jobs.helpers import new_job

AGENT = "agent-a"
FAST = {"timeout_s": 5.0, "lease_s": 6.0, "backoff_base_s": 0.01, "backoff_cap_s": 0.05, "poll_interval_s": 0.02}


def settings(**overrides: Any) -> WebhookSettings:
    return WebhookSettings(**{**FAST, **overrides})


def worker(
    engine: AsyncEngine, master_key: Secret, *, clock: Callable[[], datetime] = utcnow, **overrides: Any
) -> DeliveryWorker:
    return DeliveryWorker(engine, settings(**overrides), lambda: master_key, dev=True, clock=clock)


async def succeeded_job(store: JobStore, agent: str = AGENT) -> str:
    job = (await store.submit(agent, new_job())).jobs[0]
    (claimed,) = await store.claim("w1", 1, 60)
    assert await store.complete(claimed.id, "w1", result_path=f"results/{job.id}/mesh.glb", mesh_stats={}, timings={})
    return job.id


async def failed_job(store: JobStore, agent: str = AGENT) -> str:
    job = (await store.submit(agent, new_job())).jobs[0]
    await store.claim("w1", 1, 60)
    assert await store.fail(job.id, "w1", code=ErrorCode.EMPTY_SURFACE, message="no surface")
    return job.id


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
