"""AgentIngress: the Ray Serve deployment that speaks HTTP to agents.

Each replica runs the Starlette app: auth, validation, and reads and writes of the job store. It runs no
jobs: after a submission it wakes a ``JobWorker`` with a fire-and-forget handle call (never awaited, so a
busy or restarting worker cannot slow an agent's request down). Replicas share nothing in memory.
"""

from __future__ import annotations

import logging

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp

from serve_app.config import AppConfig
from serve_app.dev_setup import ready_line
from serve_app.http_app import build_http_app
from serve_app.metrics import IngressMetrics
from serve_app.service import AgentService

logger = logging.getLogger("ray.serve")


@serve.deployment(
    # the work is I/O and SQLite/Postgres round trips: a fraction of a CPU, many requests at once
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=256,
    health_check_period_s=10,
)
@serve.ingress()
class AgentIngress:
    async def __init__(self, worker: DeploymentHandle, config: AppConfig) -> None:  # type: ignore[misc]  # Serve awaits an async __init__
        self._worker = worker
        self._service = await AgentService.start(AppConfig.model_validate(config), self._wake_worker)
        self._app = build_http_app(self._service, behind_serve_proxy=True, metrics=IngressMetrics())
        logger.info(ready_line(self._service.config))

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return self._app

    def _wake_worker(self) -> None:
        # The router sends the call as soon as .remote() returns; nobody awaits the answer. The job is
        # stored already: if no worker can be reached now, one finds it at its next poll.
        try:
            self._worker.notify.remote()
        except Exception:
            logger.warning("could not wake a job worker; it will find the job at its next poll", exc_info=True)

    async def check_health(self) -> None:
        # A failed health check makes Serve restart the replica: that cures nothing when the database is down
        # (every new replica would fail the same way) and drops the requests in flight. `/readyz` reports
        # the database to load balancers instead; requests meanwhile answer 503 storage_unavailable.
        await self._service.check_health()

    async def __del__(self) -> None:
        await self._service.stop()
