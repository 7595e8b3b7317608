"""An in-process app for the retention and storage-failure tests: like ``conftest.start_api``, with the
sweeper left to the test, any model stand-in, and retention, database and data directory chosen per test."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from serve_app.auth.signing import AgentSigner
from serve_app.config import AppConfig
from serve_app.http_app import build_http_app
from serve_app.jobs import GenerateFn
from serve_app.service import AgentService
from serve_app.worker_service import WorkerService

from .conftest import Api, sphere_model


class App(Api):
    """``conftest.Api`` with waits on any status and the config the service runs with."""

    @property
    def config(self) -> AppConfig:
        return self.service.config

    async def wait_status(self, job_id: str, statuses: tuple[str, ...], timeout: float = 30.0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            job = (await self.client.get(f"/api/agent/jobs/{job_id}")).json()
            if job["status"] in statuses:
                return job
            assert asyncio.get_running_loop().time() < deadline, f"job {job_id} still {job['status']}"
            await asyncio.sleep(0.05)

    async def wait_finished(self, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
        return await self.wait_status(job_id, ("succeeded", "failed", "cancelled", "expired"), timeout)


async def start_app(
    tmp_path: Path,
    *,
    generate: GenerateFn = sphere_model,
    dispatch: bool = True,
    data_dir: Path | None = None,
    **overrides: Any,
) -> App:
    config = AppConfig(
        mode="dev",
        data_dir=data_dir or tmp_path / "data",
        jobs={"poll_interval_s": 0.05, **overrides.pop("jobs", {})},
        **overrides,
    )
    worker = await WorkerService.start(config, generate, dispatch=dispatch, sweep=False)
    service = await AgentService.start(config, worker.notify)
    dev = json.loads(config.dev_key_file.read_text())
    # raise_app_exceptions=False: a failure Starlette answers with its 500 handler is still re-raised after
    # the response; the test wants the response the agent gets
    transport = httpx.ASGITransport(app=build_http_app(service), raise_app_exceptions=False)
    client = httpx.AsyncClient(
        transport=transport, base_url="http://testserver", auth=AgentSigner(dev["key_id"], dev["secret"])
    )
    return App(service, worker, client)


def finished_at(job_view: dict[str, Any]) -> datetime:
    """A job view's ``finished_at`` (ISO, milliseconds, ``Z``) as the store's naive UTC."""
    return datetime.fromisoformat(job_view["finished_at"].removesuffix("Z"))
