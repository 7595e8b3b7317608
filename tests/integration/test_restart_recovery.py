"""Restarts lose nothing: jobs queued or running when a replica dies complete exactly once afterwards.

A job worker that crashes leaves its jobs leased: they come back when the lease expires. A model replica
that dies under a batch makes its calls fail with a lost-replica error: the worker requeues those jobs at
once (bounded attempts), it does not fail them. A crashed ingress holds no jobs at all.
"""

from __future__ import annotations

import base64
import time

import httpx
import pytest
import ray

from tests.hunyuan3d.conftest import IMAGES

from .conftest import APP_NAME, LiveApp, deploy

pytestmark = [pytest.mark.ray, pytest.mark.slow]

IMAGE_B64 = base64.b64encode((IMAGES / "soft_rgba.png").read_bytes()).decode()


def _kill_replica(deployment: str) -> None:
    """Kill the deployment's replica process as a crash would; Serve's controller starts a new one."""
    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if f"#{deployment}#" in a["name"]]
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=True)


def _result_files(app: LiveApp, job_id: str) -> list:
    return sorted((app.config.artifacts_dir / "results" / job_id).glob("mesh-*.glb"))


def _submit_and_wait_for_one_running(app: LiveApp, count: int, params: dict | None = None) -> list[dict]:
    with app.client() as client:
        body = {"image": IMAGE_B64, **({"params": params} if params else {})}
        jobs = [client.post("/api/agent/jobs", json={**body, "seed": s}).json() for s in range(count)]
        deadline = time.monotonic() + 60
        while not any(client.get(j["status_url"]).json()["status"] == "running" for j in jobs):
            assert time.monotonic() < deadline, "no job started"
            time.sleep(0.05)
    return jobs


def _wait_all(app: LiveApp, jobs: list[dict]) -> list[dict]:
    with app.client() as client:
        return [app.wait_finished(client, job["job_id"]) for job in jobs]


def test_restart_crashed_worker_jobs_complete_exactly_once(ray_session, tmp_path):
    from ray import serve

    app = deploy(ray_session, tmp_path / "data", jobs={"lease_s": 3.0})
    try:
        jobs = _submit_and_wait_for_one_running(app, 6)
        _kill_replica("JobWorker")  # mid-flight: its leased jobs come back when the lease expires
        done = _wait_all(app, jobs)
        assert [job["status"] for job in done] == ["succeeded"] * 6
        for job in done:
            assert len(_result_files(app, job["job_id"])) == 1  # exactly one completion wrote a result
        assert max(job["attempts"] for job in done) >= 2  # some job was really taken over after the crash
    finally:
        serve.delete(APP_NAME)


def test_restart_model_replica_dying_mid_batch_requeues_its_jobs(ray_session, tmp_path):
    from ray import serve

    # slower passes, so the replica is killed while a batch is on the "GPU"
    app = deploy(ray_session, tmp_path / "data", defaults={"num_inference_steps": 8, "octree_resolution": 48})
    try:
        jobs = _submit_and_wait_for_one_running(app, 6)
        _kill_replica("ShapeGenerator")
        done = _wait_all(app, jobs)
        assert [job["status"] for job in done] == ["succeeded"] * 6, [job["error"] for job in done]
        assert max(job["attempts"] for job in done) >= 2  # the jobs of the lost batch ran again
        for job in done:
            assert len(_result_files(app, job["job_id"])) == 1
    finally:
        serve.delete(APP_NAME)


def test_restart_crashed_ingress_loses_no_job(ray_session, tmp_path):
    from ray import serve

    app = deploy(ray_session, tmp_path / "data")
    try:
        jobs = _submit_and_wait_for_one_running(app, 4)
        _kill_replica("AgentIngress")
        with app.client() as client:
            deadline = time.monotonic() + 60
            while True:  # the proxy answers 503/500 until the new replica is up
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:  # connection resets while the replica restarts
                    pass
                assert time.monotonic() < deadline, "ingress did not come back"
                time.sleep(0.2)
        done = _wait_all(app, jobs)
        assert [job["status"] for job in done] == ["succeeded"] * 4
        assert [job["attempts"] for job in done] == [1] * 4  # the workers never noticed
    finally:
        serve.delete(APP_NAME)


def test_restart_whole_app_resumes_queued_jobs(ray_session, tmp_path):
    from ray import serve

    data = tmp_path / "data"
    app = deploy(ray_session, data)
    with app.client() as client:
        jobs = [client.post("/api/agent/jobs", json={"image": IMAGE_B64, "seed": s}).json() for s in range(5)]
    serve.delete(APP_NAME)  # stop: the worker requeues what it had not finished
    app = deploy(ray_session, data)  # same data directory: same database, same dev key
    try:
        done = _wait_all(app, jobs)
        assert [job["status"] for job in done] == ["succeeded"] * 5
        for job in done:
            assert len(_result_files(app, job["job_id"])) == 1
    finally:
        serve.delete(APP_NAME)
