"""The agent API in-process: real service, real auth, real database; the model is a stand-in."""

from __future__ import annotations

import io
import json
import os
import stat

import trimesh

from .conftest import b64, png_bytes, start_api

JOB = {"image": b64(png_bytes()), "seed": 3, "params": {"num_inference_steps": 5, "octree_resolution": 64}}


async def test_api_dev_mode_writes_a_private_dev_key(api):
    path = api.service.config.dev_key_file
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key = json.loads(path.read_text())
    assert key["key_id"].startswith("ak_dev_") and key["url"] == "http://127.0.0.1:8000"


async def test_api_submit_poll_download_every_format(api):
    response = await api.client.post("/api/agent/jobs", json=JOB)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and job["seed"] == 3
    assert response.headers["location"] == job["status_url"] == f"/api/agent/jobs/{job['job_id']}"
    assert job["params"] == {
        "num_inference_steps": 5,
        "guidance_scale": 5.0,
        "octree_resolution": 64,
        "max_faces": 40_000,
        "remove_floaters": True,
        "remove_background": "auto",
    }
    done = await api.wait_finished(job["job_id"])
    assert done["status"] == "succeeded" and done["mesh"]["faces"] == 320
    types = {"glb": "model/gltf-binary", "obj": "model/obj", "stl": "model/stl", "ply": "application/x-ply"}
    for fmt, content_type in types.items():
        result = await api.client.get(done["result_urls"][fmt])
        assert result.status_code == 200 and result.headers["content-type"].startswith(content_type)
        mesh = trimesh.load(io.BytesIO(result.content), file_type=fmt, force="mesh")
        assert len(mesh.faces) == 320


async def test_api_multipart_upload_is_accepted(api):
    files = {"image": ("cat.png", png_bytes(), "image/png")}
    data = {"seed": "9", "params": json.dumps({"num_inference_steps": 4})}
    response = await api.client.post("/api/agent/jobs", files=files, data=data)
    assert response.status_code == 202, response.text
    assert response.json()["seed"] == 9


async def test_api_batch_submit_and_status(api):
    items = [{"image": b64(png_bytes()), "seed": i} for i in range(3)]
    response = await api.client.post("/api/agent/batches", json={"items": items, "params": {"octree_resolution": 64}})
    assert response.status_code == 202, response.text
    body = response.json()
    assert [job["seed"] for job in body["jobs"]] == [0, 1, 2]
    for job in body["jobs"]:
        await api.wait_finished(job["job_id"])
    batch = (await api.client.get(body["status_url"])).json()
    assert batch["finished"] and batch["counts"]["succeeded"] == 3


async def test_api_failed_generation_reports_code_and_retryable(api):
    response = await api.client.post("/api/agent/jobs", json={**JOB, "params": {"num_inference_steps": 13}})
    done = await api.wait_finished(response.json()["job_id"])
    assert done["status"] == "failed"
    assert done["error"] == {"code": "empty_surface", "message": "no surface found", "retryable": False}


async def test_api_agents_only_see_their_own_jobs(api):
    job_id = (await api.client.post("/api/agent/jobs", json=JOB)).json()["job_id"]
    other = await api.client_for("other-agent")
    for method, path in (
        ("GET", f"/api/agent/jobs/{job_id}"),
        ("DELETE", f"/api/agent/jobs/{job_id}"),
        ("GET", f"/api/agent/jobs/{job_id}/result"),
    ):
        response = await other.request(method, path)
        assert response.status_code == 404 and response.json()["code"] == "job_not_found"
    assert (await other.get("/api/agent/jobs")).json()["jobs"] == []


async def test_api_list_filters_and_paginates(paused_api):
    ids = [(await paused_api.client.post("/api/agent/jobs", json=JOB)).json()["job_id"] for _ in range(3)]
    first = (await paused_api.client.get("/api/agent/jobs", params={"limit": 2, "status": "queued"})).json()
    assert [job["job_id"] for job in first["jobs"]] == ids[::-1][:2]
    rest = (await paused_api.client.get("/api/agent/jobs", params={"limit": 2, "cursor": first["next_cursor"]})).json()
    assert [job["job_id"] for job in rest["jobs"]] == [ids[0]] and rest["next_cursor"] is None
    bad = await paused_api.client.get("/api/agent/jobs", params={"status": "done"})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_status"


async def test_api_cancel_a_queued_job_then_refuse_its_result(paused_api):
    job_id = (await paused_api.client.post("/api/agent/jobs", json=JOB)).json()["job_id"]
    response = await paused_api.client.delete(f"/api/agent/jobs/{job_id}")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    result = await paused_api.client.get(f"/api/agent/jobs/{job_id}/result")
    assert result.status_code == 409 and result.json()["code"] == "result_not_ready"


async def test_api_queue_full_is_503_with_retry_after(paused_api):
    for _ in range(3):
        assert (await paused_api.client.post("/api/agent/jobs", json=JOB)).status_code == 202
    response = await paused_api.client.post("/api/agent/jobs", json=JOB)
    assert response.status_code == 503 and response.headers["retry-after"] == "10"
    assert response.json()["code"] == "queue_full" and response.json()["retryable"] is True


async def test_api_idempotency_key_replays_or_conflicts(paused_api):
    headers = {"Idempotency-Key": "order-42"}
    first = await paused_api.client.post("/api/agent/jobs", json=JOB, headers=headers)
    again = await paused_api.client.post("/api/agent/jobs", json=JOB, headers=headers)
    assert again.status_code == 202 and again.json()["job_id"] == first.json()["job_id"]
    assert again.headers["idempotent-replayed"] == "true"
    changed = await paused_api.client.post("/api/agent/jobs", json={**JOB, "seed": 4}, headers=headers)
    assert changed.status_code == 422 and changed.json()["code"] == "idempotency_key_reused"


async def test_api_critical_priority_needs_its_scope(api):
    limited = await api.client_for("plain-agent")
    response = await limited.post("/api/agent/jobs", json={**JOB, "priority": "critical"})
    assert response.status_code == 403
    # the dev key has no critical scope either (it gets jobs:read and jobs:write only)
    assert (await api.client.post("/api/agent/jobs", json={**JOB, "priority": "critical"})).status_code == 403
    urgent = await api.client_for("urgent-agent", scopes=("jobs:read", "jobs:write", "jobs:critical"))
    assert (await urgent.post("/api/agent/jobs", json={**JOB, "priority": "critical"})).status_code == 202


async def test_api_wait_long_polls_until_done(api):
    job_id = (await api.client.post("/api/agent/jobs", json=JOB)).json()["job_id"]
    job = (await api.client.get(f"/api/agent/jobs/{job_id}", params={"wait": 5})).json()
    assert job["status"] == "succeeded"


async def test_api_events_stream_until_the_job_finishes(api):
    job_id = (await api.client.post("/api/agent/jobs", json=JOB)).json()["job_id"]
    async with api.client.stream("GET", f"/api/agent/jobs/{job_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) async for line in response.aiter_lines() if line.startswith("data: ")]
    assert events[-1]["status"] == "succeeded"


async def test_api_capabilities_and_public_health(api):
    caps = (await api.client.get("/api/agent/capabilities")).json()
    assert caps["formats"] == ["glb", "obj", "stl", "ply"]
    assert caps["params"]["octree_resolution"] == {"min": 32, "max": 384}
    unsigned = api.client.__class__(transport=api.client._transport, base_url="http://testserver")
    health = await unsigned.get("/healthz")
    assert health.status_code == 200 and health.headers["x-request-id"]
    assert (await unsigned.get("/readyz")).json() == {"status": "ready"}
    refused = await unsigned.get("/api/agent/capabilities")
    assert refused.status_code == 401 and refused.json()["type"] == "authentication_error"


async def test_api_multipart_with_idempotency_key_replays_identical_bytes(paused_api):
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png_bytes() + b"\r\n--XyZ\r\n"
        b'Content-Disposition: form-data; name="seed"\r\n\r\n5\r\n--XyZ--\r\n'
    )
    headers = {"Content-Type": "multipart/form-data; boundary=XyZ", "Idempotency-Key": "upload-1"}
    first = await paused_api.client.post("/api/agent/jobs", content=body, headers=headers)
    again = await paused_api.client.post("/api/agent/jobs", content=body, headers=headers)
    assert first.status_code == again.status_code == 202, first.text
    assert again.json()["job_id"] == first.json()["job_id"] and again.headers["idempotent-replayed"] == "true"


async def test_api_mesh_and_background_params_are_stored_with_the_job(paused_api):
    params = {"max_faces": 0, "remove_floaters": False, "remove_background": "never"}
    job = (await paused_api.client.post("/api/agent/jobs", json={"image": b64(png_bytes()), "params": params})).json()
    assert {name: job["params"][name] for name in params} == params
    default = (await paused_api.client.post("/api/agent/jobs", json={"image": b64(png_bytes())})).json()
    assert (default["params"]["max_faces"], default["params"]["remove_floaters"]) == (40_000, True)
    assert default["params"]["remove_background"] == "auto"


async def test_api_capabilities_list_the_models_own_defaults(tmp_path):
    api = await start_api(tmp_path, dispatcher=False, model_name="hunyuan3d-dit-v2-0-turbo")
    try:
        caps = (await api.client.get("/api/agent/capabilities")).json()
        [model] = caps["models"]
        assert (model["name"], model["defaults"]["num_inference_steps"]) == ("hunyuan3d-dit-v2-0-turbo", 5)
        assert caps["params"]["defaults"] == model["defaults"]
        assert caps["params"]["max_faces"] == {"min": 1000, "max": 500_000, "no_reduction": 0}
        job = (await api.client.post("/api/agent/jobs", json={"image": b64(png_bytes())})).json()
        assert job["params"]["num_inference_steps"] == 5  # a turbo model is meant for few steps
    finally:
        await api.stop()
