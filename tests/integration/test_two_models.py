"""Two models on a real local Ray, built by the application builder from a `generators:` list: one
ShapeGenerator deployment per model, and a job's `model` reaches its own (the tiny checkpoints on CPU)."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import httpx
import pytest
import trimesh

from serve_app.app import build_app
from serve_app.auth.signing import AgentSigner
from tests.hunyuan3d.conftest import IMAGES

pytestmark = [pytest.mark.ray, pytest.mark.slow]

APP_NAME = "orfeas-two-models"
BASE = "hunyuan3d-dit-v2-0"
FAST = "hunyuan3d-dit-v2-0-fast"
IMAGE_B64 = base64.b64encode((IMAGES / "object_rgba.png").read_bytes()).decode()


def _generator(name: str, **extra: object) -> dict:
    return {
        "model": f"configs/models/tiny-Hunyuan3D-2/{name}",
        "device": "cpu",
        "torch_threads": 1,
        "warmup_params": {"num_inference_steps": 2, "octree_resolution": 32},
        **extra,
    }


def _wait_finished(client: httpx.Client, job_id: str, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while (job := client.get(f"/api/agent/jobs/{job_id}", params={"wait": 10}).json())["status"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
    return job


def test_two_models_each_job_runs_on_its_models_deployment(ray_session: str, tmp_path: Path):
    from ray import serve

    args = {
        "app": {
            "mode": "dev",
            "data_dir": str(tmp_path / "data"),
            "defaults": {"num_inference_steps": 3, "octree_resolution": 48},
            "jobs": {"poll_interval_s": 0.2},
        },
        "generators": [_generator(BASE), _generator(FAST, defaults={"num_inference_steps": 2})],
    }
    serve.run(build_app(args), name=APP_NAME, route_prefix="/")
    try:
        deployments = serve.status().applications[APP_NAME].deployments
        assert {f"ShapeGenerator-{BASE}", f"ShapeGenerator-{FAST}", "JobWorker", "AgentIngress"} <= set(deployments)
        key = json.loads((tmp_path / "data" / "dev-agent.json").read_text())
        with httpx.Client(base_url=ray_session, auth=AgentSigner(key["key_id"], key["secret"]), timeout=60) as client:
            caps = client.get("/api/agent/capabilities").json()
            assert [(m["name"], m["default"]) for m in caps["models"]] == [(BASE, True), (FAST, False)]
            jobs = {}
            for model in (BASE, FAST):
                response = client.post("/api/agent/jobs", json={"image": IMAGE_B64, "seed": 1, "model": model})
                assert response.status_code == 202, response.text
                jobs[model] = response.json()["job_id"]
            unknown = client.post("/api/agent/jobs", json={"image": IMAGE_B64, "model": "nope"})
            assert (unknown.status_code, unknown.json()["models"]) == (422, [BASE, FAST])
            for model, job_id in jobs.items():
                done = _wait_finished(client, job_id)
                assert (done["status"], done["model"]) == ("succeeded", model), done
                assert done["params"]["num_inference_steps"] == (2 if model == FAST else 3)
                mesh = trimesh.load(
                    io.BytesIO(client.get(done["result_urls"]["glb"]).content), file_type="glb", force="mesh"
                )
                assert len(mesh.faces) == done["mesh"]["faces"] > 0
        # each job's GPU pass ran in its own model's replica (the warm-up pass has no job id)
        for model, job_id in jobs.items():
            handle = serve.get_deployment_handle(f"ShapeGenerator-{model}", APP_NAME)
            stats = handle.stats.remote().result(timeout_s=30)
            ran = {job for record in stats["passes"] for job in record["job_ids"] if job is not None}
            assert ran == {job_id}, (model, stats["passes"])
    finally:
        serve.delete(APP_NAME)
