"""AgentIngress: the Ray Serve deployment that speaks HTTP to agents.

Each replica runs the Starlette app (auth, validation, job store) and a dispatcher that claims queued jobs
from the shared database and calls the ShapeGenerator. Replicas share nothing in memory: several can run
behind Serve's proxy, and a restarted one resumes the jobs its predecessor left.
"""

from __future__ import annotations

import logging

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp

from serve_app.config import AppConfig
from serve_app.http_app import build_http_app
from serve_app.metrics import start_metrics
from serve_app.model_client import ShapeGeneratorClient
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
    async def __init__(self, generator: DeploymentHandle, config: AppConfig) -> None:
        self._service = await AgentService.start(AppConfig.model_validate(config), ShapeGeneratorClient(generator))
        self._metrics, self._metrics_task = start_metrics(self._service.dispatcher.events)
        self._app = build_http_app(self._service, behind_serve_proxy=True, metrics=self._metrics)

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return self._app

    async def check_health(self) -> None:
        if not await self._service.ready():
            raise RuntimeError("job database unreachable")

    async def __del__(self) -> None:
        # graceful: jobs in flight get the dispatcher's grace period, the rest go back to the queue
        self._metrics_task.cancel()
        await self._service.stop()
