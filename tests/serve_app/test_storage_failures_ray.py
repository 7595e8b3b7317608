"""Retention and storage failures through the real Ray Serve proxy: two ingress replicas and a job worker on
a Postgres database and a small tmpfs artifact disk; the model is a stand-in deployment that returns a real
mesh (the model itself is not what these tests are about).

  - an expired result answers 410 result_expired;
  - a full artifact disk answers 507 insufficient_storage + Retry-After;
  - the database refusing connections for several health-check periods answers 503, /readyz reports it, and
    no replica is restarted; afterwards the same replicas serve and run jobs again;
  - two ingress processes write one audit log that rotates without losing or tearing lines.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trimesh

from deployments.contract import GenerationRequest, Outcome
from serve_app.auth.signing import AgentSigner
from serve_app.config import AppConfig
from tests.conftest import _pg_execute, fresh_postgres_database
from tests.hunyuan3d.conftest import IMAGES
from tests.jobs.helpers import result_of

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.postgres]

APP_NAME = "orfeas-storage"
IMAGE_B64 = base64.b64encode((IMAGES / "object_rgba.png").read_bytes()).decode()
TTL_S = 3.0


class SphereGenerator:
    """Stands in for ShapeGenerator behind a real handle: ``generate`` returns a real mesh at once."""

    async def generate(self, request: GenerationRequest) -> Outcome:
        return result_of(trimesh.creation.icosphere(subdivisions=1), request)


@dataclass
class Deployed:
    base_url: str
    config: AppConfig
    database: str
    disk: Path
    signer: AgentSigner

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, auth=self.signer, timeout=60)


def _replicas(deployment: str) -> list[str]:
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if f"#{deployment}#" in a["name"])


def _wait_finished(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/agent/jobs/{job_id}", params={"wait": 5}).json()
        if job["status"] in ("succeeded", "failed", "cancelled", "expired"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"


@pytest.fixture(scope="module")
def deployed(ray_session: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    from ray import serve

    from serve_app.ingress import AgentIngress
    from serve_app.worker import JobWorker

    data_dir = tmp_path_factory.mktemp("orfeas-storage")
    disk = data_dir / "artifacts"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    (disk / "inputs").mkdir()
    loop = asyncio.new_event_loop()
    database = fresh_postgres_database()
    try:
        url = loop.run_until_complete(database.__aenter__())
        config = AppConfig(
            mode="dev",
            data_dir=data_dir,
            database_url=url,
            jobs={"poll_interval_s": 0.2},
            retention={
                "result_ttl_s": TTL_S,
                "storage_retry_after_s": 2,
                "audit_max_bytes": 4096,
                "audit_backups": 20,
            },
        )
        # health checks every second: a blip of several seconds is several failed checks in a row, enough
        # for Serve to restart a replica whose check raised
        fast_checks = {"ray_actor_options": {"num_cpus": 0}, "health_check_period_s": 1, "health_check_timeout_s": 5}
        generator = serve.deployment(SphereGenerator).options(ray_actor_options={"num_cpus": 0}).bind()
        worker = JobWorker.options(**fast_checks).bind({config.served_models.default.name: generator}, config)
        app = AgentIngress.options(num_replicas=2, **fast_checks).bind(worker, config)
        serve.run(app, name=APP_NAME, route_prefix="/")
        key = json.loads(config.dev_key_file.read_text())
        yield Deployed(ray_session, config, url.rsplit("/", 1)[1], disk, AgentSigner(key["key_id"], key["secret"]))
    finally:
        serve.delete(APP_NAME)
        loop.run_until_complete(database.__aexit__(None, None, None))
        loop.close()
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_storage_ray_expired_result_answers_410(deployed: Deployed) -> None:
    with deployed.client() as client:
        job = client.post("/api/agent/jobs", json={"image": IMAGE_B64, "seed": 1}).json()
        done = _wait_finished(client, job["job_id"])
        assert done["status"] == "succeeded" and done["result_expires_at"] is not None
        time.sleep(TTL_S + 0.5)

        response = client.get(f"/api/agent/jobs/{job['job_id']}/result", params={"format": "stl"})

    assert response.status_code == 410
    assert response.json() == {
        "type": "not_found_error",
        "code": "result_expired",
        "message": f"the result of job {job['job_id']} expired at {done['result_expires_at']}; "
        "submit the job again to regenerate it",
        "retryable": False,
        "request_id": response.headers["x-request-id"],
    }
    # its input went when it succeeded
    assert not (deployed.disk / "inputs" / f"{job['job_id']}.png").exists()


def test_storage_ray_full_disk_answers_507(deployed: Deployed) -> None:
    filler = deployed.disk / "filler"
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass
    try:
        with deployed.client() as client:
            response = client.post("/api/agent/jobs", json={"image": IMAGE_B64, "seed": 2})
    finally:
        filler.unlink()

    assert response.status_code == 507, response.text
    assert response.json() == {
        "type": "unavailable_error",
        "code": "insufficient_storage",
        "message": "the service's storage is full; nothing was stored, retry later",
        "retryable": True,
        "request_id": response.headers["x-request-id"],
    }
    assert response.headers["retry-after"] == "2"
    assert [p.name for p in (deployed.disk / "inputs").iterdir()] == []


def test_storage_ray_database_blip_restarts_no_replica(deployed: Deployed) -> None:
    replicas = {name: _replicas(name) for name in ("AgentIngress", "JobWorker")}
    assert len(replicas["AgentIngress"]) == 2 and len(replicas["JobWorker"]) == 1
    run = asyncio.run
    run(_pg_execute(f'ALTER DATABASE "{deployed.database}" ALLOW_CONNECTIONS false'))
    run(
        _pg_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{deployed.database}' AND pid <> pg_backend_pid()"
        )
    )
    try:
        with deployed.client() as client:
            ready = client.get("/readyz")
            refused = client.get("/api/agent/jobs")
            time.sleep(6)  # six health-check periods without a database
            still_refused = client.get("/api/agent/jobs")
    finally:
        run(_pg_execute(f'ALTER DATABASE "{deployed.database}" ALLOW_CONNECTIONS true'))

    assert (ready.status_code, ready.json()["code"]) == (503, "not_ready")
    for response in (refused, still_refused):
        assert response.status_code == 503 and response.json()["retryable"] is True, response.text
        assert deployed.database not in response.text and "asyncpg" not in response.text
    with deployed.client() as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the app did not come back after the database did"
            time.sleep(0.2)
        job = client.post("/api/agent/jobs", json={"image": IMAGE_B64, "seed": 3})
        assert job.status_code == 202, job.text
        assert _wait_finished(client, job.json()["job_id"])["status"] == "succeeded"
    assert {name: _replicas(name) for name in replicas} == replicas  # the same replicas, none restarted


def test_storage_ray_audit_log_rotates_across_ingress_replicas(deployed: Deployed) -> None:
    with deployed.client() as client:
        ids = [client.get("/api/agent/capabilities").headers["x-request-id"] for _ in range(80)]

    path = deployed.config.auth_audit_path
    assert path is not None
    files = [path, *path.parent.glob(path.name + ".*")]
    entries = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert len(files) >= 3  # 80+ lines of ~300 bytes into files of 4 KiB
    assert set(ids) <= {entry["request_id"] for entry in entries}
    assert all(f.stat().st_size <= 4096 + 1024 for f in files)
