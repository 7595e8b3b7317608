"""Restarts lose nothing: jobs queued or running when the ingress dies complete exactly once afterwards."""

from __future__ import annotations

import base64
import time

import pytest
import ray

from tests.hunyuan3d.conftest import IMAGES

from .conftest import APP_NAME, deploy

pytestmark = [pytest.mark.ray, pytest.mark.slow]

IMAGE_B64 = base64.b64encode((IMAGES / "soft_rgba.png").read_bytes()).decode()


def _kill_ingress_replica() -> None:
    """Kill the AgentIngress replica process as a crash would; Serve's controller starts a new one."""
    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if "AgentIngress" in a["name"]]
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=True)


def _result_files(app, job_id: str) -> list:
    return sorted((app.config.artifacts_dir / "results" / job_id).glob("mesh-*.glb"))


def test_restart_crashed_ingress_jobs_complete_exactly_once(ray_session, tmp_path):
    from ray import serve

    app = deploy(ray_session, tmp_path / "data", jobs={"lease_s": 3.0})
    try:
        with app.client() as client:
            jobs = [client.post("/api/agent/jobs", json={"image": IMAGE_B64, "seed": s}).json() for s in range(6)]
            # let the dispatcher claim some, then crash the ingress mid-flight
            deadline = time.monotonic() + 30
            while not any(client.get(j["status_url"]).json()["status"] == "running" for j in jobs):
                assert time.monotonic() < deadline
                time.sleep(0.1)
        _kill_ingress_replica()
        with app.client() as client:
            deadline = time.monotonic() + 60
            while True:  # the proxy answers 503/500 until the new replica is up
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except Exception:  # noqa: BLE001 - connection resets while the replica restarts
                    pass
                assert time.monotonic() < deadline, "ingress did not come back"
                time.sleep(0.5)
            done = [app.wait_finished(client, job["job_id"]) for job in jobs]
        assert [job["status"] for job in done] == ["succeeded"] * 6
        for job in done:
            assert len(_result_files(app, job["job_id"])) == 1  # exactly one completion wrote a result
        assert max(job["attempts"] for job in done) >= 2  # some job was really taken over after the crash
    finally:
        serve.delete(APP_NAME)


def test_restart_whole_app_resumes_queued_jobs(ray_session, tmp_path):
    from ray import serve

    data = tmp_path / "data"
    app = deploy(ray_session, data)
    with app.client() as client:
        jobs = [client.post("/api/agent/jobs", json={"image": IMAGE_B64, "seed": s}).json() for s in range(5)]
    serve.delete(APP_NAME)  # stop: the dispatcher requeues what it had not finished
    app = deploy(ray_session, data)  # same data directory: same database, same dev key
    try:
        with app.client() as client:
            done = [app.wait_finished(client, job["job_id"]) for job in jobs]
        assert [job["status"] for job in done] == ["succeeded"] * 5
        for job in done:
            assert len(_result_files(app, job["job_id"])) == 1
    finally:
        serve.delete(APP_NAME)
