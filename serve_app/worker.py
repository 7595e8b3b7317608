"""JobWorker: the Ray Serve deployment (no HTTP route) that runs jobs.

Each replica runs a dispatcher: it claims queued jobs from the shared store with a lease, calls the
ShapeGenerator of the job's model through its handle, writes the mesh and records the outcome. Replicas share nothing in
memory, so their number scales in YAML independently of the ingress; a restarted one resumes the jobs its
predecessor left once their leases expire. The ingress calls :meth:`JobWorker.notify` after a submission
without waiting for it; an idle worker also polls the store (``jobs.poll_interval_s``).
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.config import AppConfig
from serve_app.metrics import start_worker_metrics
from serve_app.model_client import model_calls
from serve_app.worker_service import WorkerService


@serve.deployment(
    # the work is waiting on the model and the database: a fraction of a CPU
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=64,
    health_check_period_s=10,
    # above jobs.stop_grace_s (30 s): jobs in flight may finish before the replica is stopped
    graceful_shutdown_timeout_s=40,
)
class JobWorker:
    async def __init__(self, generators: dict[str, DeploymentHandle], config: AppConfig) -> None:  # type: ignore[misc]  # Serve awaits an async __init__
        # generators: model name -> its ShapeGenerator deployment (the builder binds one per served model)
        self._models = sorted(generators)
        self._service = await WorkerService.start(AppConfig.model_validate(config), model_calls(generators))
        self._metrics, self._metrics_task = start_worker_metrics(self._service.dispatcher.events)

    def notify(self) -> None:
        """A job was submitted: claim now instead of at the next poll."""
        self._service.notify()

    def stats(self) -> dict[str, Any]:
        """Who this replica is and what it runs (for tests, benchmarks, debugging)."""
        dispatcher = self._service.dispatcher
        return {
            "worker_id": dispatcher.worker_id,
            "dispatching": self._service.running,
            "in_flight": sorted(dispatcher.in_flight),
            "models": self._models,
        }

    async def check_health(self) -> None:
        # Never fail on the database: Serve would restart the replica, which cures nothing and requeues the
        # jobs in flight; the dispatcher rides a blip out. Only a dead loop warrants a restart.
        self._service.check_health()

    async def __del__(self) -> None:
        # graceful: jobs in flight get jobs.stop_grace_s, the rest go back to the queue
        self._metrics_task.cancel()
        await self._service.stop()
