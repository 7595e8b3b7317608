"""The whole application on a real local Ray: Serve's HTTP proxy -> AgentIngress, JobWorker -> ShapeGenerator
(the tiny checkpoint on CPU), SQLite and artifacts in a temp directory. Requests go over real HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from serve_app.auth.signing import AgentSigner
from serve_app.config import AppConfig

APP_NAME = "orfeas-it"


@dataclass
class LiveApp:
    base_url: str
    config: AppConfig
    key_id: str
    secret: str

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, auth=AgentSigner(self.key_id, self.secret), timeout=60, **kwargs)

    def audit(self) -> dict[str, dict]:
        """Auth decisions the replica logged, by request id."""
        path = self.config.auth_audit_path
        lines = path.read_text().splitlines() if path and path.exists() else []
        return {entry["request_id"]: entry for entry in map(json.loads, lines)}

    def wait_finished(self, client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = client.get(f"/api/agent/jobs/{job_id}", params={"wait": 10}).json()
            if job["status"] in ("succeeded", "failed", "cancelled", "expired"):
                return job
            assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"


def deploy(ray_session: str, data_dir: Path, **app_overrides) -> LiveApp:
    from ray import serve

    from deployments.generator_config import GeneratorConfig
    from deployments.shape_generator import ShapeGenerator
    from serve_app.auth.settings import AuthSettings, RateLimitSettings
    from serve_app.ingress import AgentIngress
    from serve_app.worker import JobWorker

    config = AppConfig(
        mode="dev",
        data_dir=data_dir,
        defaults={"num_inference_steps": 3, "octree_resolution": 48, **app_overrides.pop("defaults", {})},
        jobs={"dispatcher_concurrency": 8, "poll_interval_s": 0.2, **app_overrides.pop("jobs", {})},
        # the refusal matrix sends ~100 bad requests from one IP: keep the backoff out of its way
        auth=AuthSettings(rate_limit=RateLimitSettings(max_failures_per_ip=10_000)),
        **app_overrides,
    )
    generator = GeneratorConfig(device="cpu", warmup_params={"num_inference_steps": 2, "octree_resolution": 32})
    no_cpu = {"ray_actor_options": {"num_cpus": 0}}  # 2-core machines: never wait for a free CPU
    # a batch window far wider than the spread of jobs a worker dispatches together, so they share a pass
    # however busy the machine is
    model = ShapeGenerator.options(**no_cpu, user_config={"batch_wait_timeout_s": 0.5}).bind(generator)
    # the worker takes model name -> generator (one model here: the config's default)
    worker = JobWorker.options(**no_cpu).bind({config.served_models.default.name: model}, config)
    app = AgentIngress.options(**no_cpu).bind(worker, config)
    serve.run(app, name=APP_NAME, route_prefix="/")
    key = json.loads(config.dev_key_file.read_text())
    return LiveApp(ray_session, config, key["key_id"], key["secret"])


@pytest.fixture(scope="module")
def live_app(ray_session: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    from ray import serve

    app = deploy(ray_session, tmp_path_factory.mktemp("orfeas-data"))
    try:
        yield app
    finally:
        serve.delete(APP_NAME)
