"""The SDK against a live in-process API (real auth, database and dispatcher; stand-in model)."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import trimesh
from PIL import Image

from serve_app.auth.settings import AuthSettings, RateLimitSettings
from serve_app.client import AgentClient, ApiRequestError, image_base64
from tests.serve_app.conftest import MESH_DEFAULTS, png_bytes

from .conftest import LiveApi, serve_api

PARAMS = {"num_inference_steps": 5, "octree_resolution": 64}
FORMATS = ("glb", "obj", "stl", "ply")


def test_client_imports_without_ray_torch_sqlalchemy_or_starlette():
    # Block the server-side stacks outright: the SDK must import and build a client where they are absent.
    code = """
import sys
BLOCKED = ("ray", "torch", "sqlalchemy", "starlette")
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
from serve_app.client import AgentClient
AgentClient("http://127.0.0.1:1", "ak_test_x", "A" * 43 + "=").close()
print(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED + ("PIL", "pydantic")))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_client_submit_wait_download_every_format(client: AgentClient, tmp_path: Path):
    image = tmp_path / "cat.png"
    image.write_bytes(png_bytes())
    job = client.submit(image, seed=3, params=PARAMS)
    assert job["status"] == "queued" and job["seed"] == 3 and job["priority"] == "normal"
    assert job["params"] == {**MESH_DEFAULTS, "num_inference_steps": 5, "guidance_scale": 5.0, "octree_resolution": 64}
    done = client.wait(job["job_id"], timeout=10)
    assert done["status"] == "succeeded" and done["mesh"]["faces"] == 320
    for fmt in FORMATS:
        target = tmp_path / f"mesh.{fmt}"
        data = client.download(job["job_id"], fmt, path=target)
        assert target.read_bytes() == data
        assert len(trimesh.load(io.BytesIO(data), file_type=fmt, force="mesh").faces) == 320


def test_client_submit_accepts_bytes_and_pil_images(client: AgentClient):
    from_bytes = client.submit(png_bytes(), seed=1)
    from_pil = client.submit(Image.open(io.BytesIO(png_bytes())), seed=2)
    assert from_bytes["seed"] == 1 and from_pil["seed"] == 2
    with pytest.raises(TypeError, match="path, bytes or a PIL image"):
        image_base64(42)


def test_client_get_wait_long_polls_until_done(client: AgentClient):
    job_id = client.submit(png_bytes(), params=PARAMS)["job_id"]
    assert client.get(job_id, wait=5)["status"] == "succeeded"


def test_client_wait_reports_a_failed_job(client: AgentClient):
    job_id = client.submit(png_bytes(), params={"num_inference_steps": 13})["job_id"]
    done = client.wait(job_id, timeout=10, poll_s=1)
    assert done["status"] == "failed"
    assert done["error"] == {"code": "empty_surface", "message": "no surface found", "retryable": False}


def test_client_wait_times_out_on_a_queued_job(paused_live_api: LiveApi):
    with paused_live_api.client() as client:
        job_id = client.submit(png_bytes())["job_id"]
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=f"job {job_id} still queued"):
            client.wait(job_id, timeout=0.3, poll_s=0.1)
        assert time.monotonic() - started < 2


def test_client_events_yield_until_the_job_finishes(client: AgentClient):
    job_id = client.submit(png_bytes(), params=PARAMS)["job_id"]
    events = list(client.events(job_id))
    assert events and all(event["job_id"] == job_id for event in events)
    assert events[-1]["status"] == "succeeded"


def test_client_batch_submit_and_status(client: AgentClient):
    batch = client.submit_batch([png_bytes()] * 3, seeds=[0, None, 2], params={"octree_resolution": 64})
    seeds = [job["seed"] for job in batch["jobs"]]
    assert seeds[0] == 0 and seeds[2] == 2 and isinstance(seeds[1], int)
    for job in batch["jobs"]:
        assert client.wait(job["job_id"], timeout=10)["status"] == "succeeded"
    status = client.batch(batch["batch_id"])
    assert status["finished"] and status["counts"]["succeeded"] == 3
    with pytest.raises(ValueError, match="2 seeds for 3 images"):
        client.submit_batch([png_bytes()] * 3, seeds=[1, 2])


def test_client_list_and_iter_jobs_follow_cursors(paused_live_api: LiveApi):
    with paused_live_api.client() as client:
        ids = [client.submit(png_bytes(), seed=i)["job_id"] for i in range(3)]
        first = client.list(status="queued", limit=2)
        assert [job["job_id"] for job in first["jobs"]] == ids[::-1][:2] and first["next_cursor"]
        rest = client.list(limit=2, cursor=first["next_cursor"])
        assert [job["job_id"] for job in rest["jobs"]] == [ids[0]] and rest["next_cursor"] is None
        assert [job["job_id"] for job in client.iter_jobs(page_size=1)] == ids[::-1]
        assert list(client.iter_jobs(status="succeeded")) == []


def test_client_cancel_a_queued_job_then_download_is_not_ready(paused_live_api: LiveApi):
    with paused_live_api.client() as client:
        job_id = client.submit(png_bytes())["job_id"]
        assert client.cancel(job_id)["status"] == "cancelled"
        with pytest.raises(ApiRequestError) as caught:
            client.download(job_id)
        assert (caught.value.status, caught.value.code, caught.value.retryable) == (409, "result_not_ready", False)


def test_client_cancel_a_finished_job_is_job_finished(client: AgentClient):
    job_id = client.submit(png_bytes(), params=PARAMS)["job_id"]
    client.wait(job_id, timeout=10)
    with pytest.raises(ApiRequestError) as caught:
        client.cancel(job_id)
    assert (caught.value.status, caught.value.code) == (409, "job_finished")


def test_client_errors_carry_status_code_and_request_id(client: AgentClient):
    with pytest.raises(ApiRequestError) as caught:
        client.get("job_does_not_exist")
    error = caught.value
    assert (error.status, error.code, error.retryable, error.retry_after) == (404, "job_not_found", False, None)
    assert error.request_id and str(uuid.UUID(error.request_id)) == error.request_id
    assert str(error) == "404 job_not_found: no job 'job_does_not_exist' for this agent"
    cases = [
        (lambda: client.submit(png_bytes(), params={"octree_resolution": 8}), 422, "invalid_params"),
        (lambda: client.submit(png_bytes(), params={"steps": 5}), 422, "invalid_params"),
        (lambda: client.submit(b"not an image"), 400, "invalid_image"),
        (lambda: client.list(status="done"), 422, "invalid_status"),
        (lambda: client.list(limit=0), 422, "invalid_limit"),
        (lambda: client.list(cursor="nonsense"), 422, "invalid_cursor"),
        (lambda: client.get("x", wait=31), 422, "invalid_wait"),
        (lambda: client.download("x", "fbx"), 422, "invalid_format"),
        (lambda: client.batch("nope"), 404, "batch_not_found"),
    ]
    for call, status, code in cases:
        with pytest.raises(ApiRequestError) as caught:
            call()
        assert (caught.value.status, caught.value.code) == (status, code), caught.value


def test_client_with_an_unknown_key_is_bad_signature(live_api: LiveApi):
    with AgentClient(live_api.url, "ak_dev_unknown", live_api.secret) as client:
        with pytest.raises(ApiRequestError) as caught:
            client.capabilities()
    assert (caught.value.status, caught.value.code) == (401, "bad_signature")


def test_client_critical_priority_needs_its_scope(live_api: LiveApi):
    key_id, secret = live_api.new_key("plain-agent")
    with AgentClient(live_api.url, key_id, secret) as client:
        with pytest.raises(ApiRequestError) as caught:
            client.submit(png_bytes(), priority="critical")
        assert (caught.value.status, caught.value.code) == (403, "scope_denied")
        assert client.submit(png_bytes())["status"] == "queued"
    key_id, secret = live_api.new_key("urgent-agent", ("jobs:read", "jobs:write", "jobs:critical"))
    with AgentClient(live_api.url, key_id, secret) as client:
        assert client.submit(png_bytes(), priority="critical")["priority"] == "critical"


def test_client_capabilities_report_limits(client: AgentClient):
    caps = client.capabilities()
    assert caps["formats"] == list(FORMATS)
    assert caps["limits"]["max_wait_s"] == 30.0 and caps["limits"]["max_batch_items"] == 64


def test_client_from_key_file_reads_the_dev_key(live_api: LiveApi, tmp_path: Path):
    with AgentClient.from_key_file(live_api.key_file) as client:
        assert client.base_url == live_api.url
        assert client.capabilities()["priorities"] == ["normal", "critical"]
    with pytest.raises(FileNotFoundError, match="no key file at"):
        AgentClient.from_key_file(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"key_id": "ak_x"}))
    with pytest.raises(ValueError, match=r"lacks \['secret'\]"):
        AgentClient.from_key_file(broken)


def test_client_repr_never_shows_the_secret(live_api: LiveApi):
    with live_api.client() as client:
        assert live_api.secret not in repr(client) and live_api.secret not in repr(client._http.auth)


# ---- errors built from responses -------------------------------------------------------------------------


def test_api_request_error_from_a_non_json_proxy_answer():
    request = httpx.Request("GET", "http://x/api/agent/jobs")
    response = httpx.Response(502, text="<html>Bad Gateway</html>", request=request, headers={"Retry-After": "7"})
    error = ApiRequestError.from_response(response)
    assert (error.status, error.code, error.retryable, error.retry_after) == (502, "http_502", True, 7.0)
    assert error.message == "<html>Bad Gateway</html>" and error.request_id is None


def test_api_request_error_reads_an_http_date_retry_after():
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    body = {"type": "rate_limit_error", "code": "rate_limited", "message": "m", "retryable": True, "request_id": "r1"}
    response = httpx.Response(429, json=body, headers={"Retry-After": when})
    error = ApiRequestError.from_response(response)
    assert (error.code, error.request_id, error.retryable) == ("rate_limited", "r1", True)
    assert error.retry_after is not None and 55 <= error.retry_after <= 60


# ---- idempotent retries -----------------------------------------------------------------------------------


class LosesResponses(httpx.BaseTransport):
    """A real HTTP transport that, for the first ``lose`` POSTs, lets the server act but drops the answer
    (as a timed-out connection would); records every status and replay header it saw."""

    def __init__(self, lose: int = 0, refuse: int = 0) -> None:
        self._inner = httpx.HTTPTransport()
        self.lose = lose
        self.refuse = refuse
        self.seen: list[tuple[int, str | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and self.refuse > 0:
            self.refuse -= 1
            raise httpx.ConnectError("connection refused (test)", request=request)
        response = self._inner.handle_request(request)
        response.read()
        self.seen.append((response.status_code, response.headers.get("idempotent-replayed")))
        if request.method == "POST" and self.lose > 0:
            self.lose -= 1
            raise httpx.ReadTimeout("response lost (test)", request=request)
        return response

    def close(self) -> None:
        self._inner.close()


def test_client_idempotent_submit_survives_a_lost_response(live_api: LiveApi):
    transport = LosesResponses(lose=1)
    delays: list[float] = []
    with live_api.client(transport=transport, sleep=delays.append) as client:
        job = client.submit(png_bytes(), seed=5, idempotency_key="order-1")
        # the server created the job once; the retry got the original back, marked as a replay
        assert transport.seen == [(202, None), (202, "true")] and delays == [1.0]
        assert [j["job_id"] for j in client.iter_jobs()] == [job["job_id"]]


def test_client_idempotent_submit_retries_connection_errors_then_gives_up(live_api: LiveApi):
    delays: list[float] = []
    with live_api.client(transport=LosesResponses(refuse=5), sleep=delays.append, max_retries=2) as client:
        with pytest.raises(httpx.ConnectError):
            client.submit(png_bytes(), idempotency_key="order-2")
    assert delays == [1.0, 2.0]


def test_client_idempotent_submit_waits_out_a_full_queue(paused_live_api: LiveApi):
    with paused_live_api.client() as filler:
        queued = [filler.submit(png_bytes())["job_id"] for _ in range(3)]
    delays: list[float] = []

    def sleep(seconds: float) -> None:
        delays.append(seconds)
        filler_again.cancel(queued[0])  # room frees up while we wait

    with paused_live_api.client() as filler_again, paused_live_api.client(sleep=sleep) as client:
        job = client.submit_batch([png_bytes()], idempotency_key="batch-1")
    assert delays == [1.0] and job["jobs"][0]["status"] == "queued"


def test_client_submit_without_a_key_is_not_retried(paused_live_api: LiveApi):
    delays: list[float] = []
    with paused_live_api.client(sleep=delays.append) as client:
        for _ in range(3):
            client.submit(png_bytes())
        with pytest.raises(ApiRequestError) as caught:
            client.submit(png_bytes())
    error = caught.value
    assert (error.status, error.code, error.retryable, error.retry_after) == (503, "queue_full", True, 1.0)
    assert delays == []


def test_client_same_key_with_another_body_is_refused_not_retried(paused_live_api: LiveApi):
    delays: list[float] = []
    with paused_live_api.client(sleep=delays.append) as client:
        first = client.submit(png_bytes(), seed=1, idempotency_key="order-3")
        assert client.submit(png_bytes(), seed=1, idempotency_key="order-3")["job_id"] == first["job_id"]
        with pytest.raises(ApiRequestError) as caught:
            client.submit(png_bytes(), seed=2, idempotency_key="order-3")
    assert (caught.value.status, caught.value.code) == (422, "idempotency_key_reused") and delays == []


def test_client_rate_limited_is_429_with_retry_after_and_not_slept_beyond_the_cap(tmp_path: Path):
    # one failed signature blocks its sender's address (here the client's own, loopback) for 30 s
    auth = AuthSettings(rate_limit=RateLimitSettings(max_failures_per_ip=1, backoff_base_s=30))
    with serve_api(tmp_path, auth=auth) as api:
        wrong_secret = base64.b64encode(bytes(32)).decode()
        with AgentClient(api.url, api.key_id, wrong_secret) as impostor:
            with pytest.raises(ApiRequestError) as caught:
                impostor.capabilities()
            assert caught.value.code == "bad_signature"
        delays: list[float] = []
        with api.client(sleep=delays.append, max_retry_wait_s=10) as client:
            with pytest.raises(ApiRequestError) as caught:
                client.submit(png_bytes(), idempotency_key="order-5")
    error = caught.value
    assert (error.status, error.code, error.retryable) == (429, "rate_limited", True)
    assert error.retry_after is not None and 25 <= error.retry_after <= 30 and delays == []


def test_webhook_endpoints_are_created_listed_and_deleted(client: AgentClient):
    created = client.create_webhook("http://127.0.0.1:9/hook", ["job.succeeded", "job.failed"])
    assert created["secret"].startswith("whsec_") and created["events"] == ["job.succeeded", "job.failed"]
    [listed] = client.webhooks()
    assert listed["id"] == created["id"] and "secret" not in listed
    client.delete_webhook(created["id"])
    assert client.webhooks() == []
    with pytest.raises(ApiRequestError) as refused:
        client.delete_webhook(created["id"])
    assert refused.value.status == 404 and refused.value.code == "webhook_not_found"
