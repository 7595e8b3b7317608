"""End to end over real HTTP through Ray Serve's proxy: every endpoint, and every way a request can fail
authentication, refused with the right status and logged by the replica."""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass, field

import httpx
import pytest
import trimesh
from PIL import Image

from serve_app.auth.signing import AgentSigner
from tests.auth.independent_signer import independent_sign
from tests.hunyuan3d.conftest import IMAGES

pytestmark = [pytest.mark.ray, pytest.mark.slow]

IMAGE_B64 = base64.b64encode((IMAGES / "object_rgba.png").read_bytes()).decode()
STUDIO = IMAGES.parent / "studio"  # synthetic studio photos (tests/fixtures/studio/make_studio_photos.py)


def _submit(client: httpx.Client, seed: int) -> dict:
    response = client.post("/api/agent/jobs", json={"image": IMAGE_B64, "seed": seed})
    assert response.status_code == 202, response.text
    return response.json()


@pytest.fixture(scope="module")
def finished_job(live_app) -> dict:
    with live_app.client() as client:
        return live_app.wait_finished(client, _submit(client, 1)["job_id"])


def test_e2e_jobs_submitted_together_share_a_gpu_pass_and_download(live_app):
    items = [{"image": IMAGE_B64, "seed": seed} for seed in range(10, 14)]
    with live_app.client() as client:
        batch = client.post("/api/agent/batches", json={"items": items}).json()
        done = [live_app.wait_finished(client, job["job_id"]) for job in batch["jobs"]]
        assert [job["status"] for job in done] == ["succeeded"] * 4
        # the worker claims the four together and the model batches their calls
        assert [job["timings"]["model"]["batch_size"] for job in done] == [4] * 4
        for fmt in ("glb", "obj", "stl", "ply"):
            response = client.get(done[0]["result_urls"][fmt])
            assert response.status_code == 200
            mesh = trimesh.load(io.BytesIO(response.content), file_type=fmt, force="mesh")
            assert len(mesh.faces) == done[0]["mesh"]["faces"]


def test_e2e_batch_endpoint_and_listing(live_app):
    with live_app.client() as client:
        items = [{"image": IMAGE_B64, "seed": seed} for seed in (21, 22)]
        batch = client.post("/api/agent/batches", json={"items": items}).json()
        for job in batch["jobs"]:
            live_app.wait_finished(client, job["job_id"])
        status = client.get(batch["status_url"]).json()
        assert status["finished"] and status["counts"]["succeeded"] == 2
        listed = client.get("/api/agent/jobs", params={"status": "succeeded", "limit": 100}).json()
        assert {job["job_id"] for job in batch["jobs"]} <= {job["job_id"] for job in listed["jobs"]}


def test_e2e_independent_signer_is_accepted(live_app, finished_job):
    request = httpx.Request("GET", f"{live_app.base_url}/api/agent/jobs/{finished_job['job_id']}")
    independent_sign(request, live_app.key_id, base64.b64decode(live_app.secret), created=int(time.time()))
    response = httpx.Client().send(request)
    assert response.status_code == 200 and response.json()["status"] == "succeeded"


def test_e2e_bad_input_is_a_4xx_through_the_proxy(live_app):
    with live_app.client() as client:
        response = client.post("/api/agent/jobs", json={"image": base64.b64encode(b"nope").decode()})
        assert response.status_code == 400 and response.json()["code"] == "invalid_image"
        assert response.headers["x-request-id"] == response.json()["request_id"]


# --- the refusal matrix -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # {job} and {batch} are filled in
    json: dict | None = None
    headers: dict[str, str] = field(default_factory=dict)


ENDPOINTS = {
    "submit": Endpoint("POST", "/api/agent/jobs", {"image": IMAGE_B64, "seed": 5}),
    "batch": Endpoint("POST", "/api/agent/batches", {"items": [{"image": IMAGE_B64}]}),
    "list": Endpoint("GET", "/api/agent/jobs?limit=5"),
    "status": Endpoint("GET", "/api/agent/jobs/{job}"),
    "cancel": Endpoint("DELETE", "/api/agent/jobs/{job}"),
    "result": Endpoint("GET", "/api/agent/jobs/{job}/result?format=obj"),
    "events": Endpoint("GET", "/api/agent/jobs/{job}/events"),
    "batch_status": Endpoint("GET", "/api/agent/batches/{batch}"),
    "capabilities": Endpoint("GET", "/api/agent/capabilities"),
}


def _signed(live_app, endpoint: Endpoint, ids: dict, signer: AgentSigner) -> httpx.Request:
    url = live_app.base_url + endpoint.path.format(**ids)
    headers = dict(endpoint.headers)
    if endpoint.json is None:
        # a covered header to tamper with on body-less requests (POSTs cover their Content-Type)
        headers.setdefault("Idempotency-Key", "k-1")
    request = httpx.Request(endpoint.method, url, json=endpoint.json, headers=headers)
    signer.sign(request)
    return request


def _rebuild(request: httpx.Request, *, method=None, url=None, headers=None, content=None) -> httpx.Request:
    new_headers = httpx.Headers(request.headers)
    new_headers.update(headers or {})
    body = request.content if content is None else content
    new_headers["Content-Length"] = str(len(body))
    return httpx.Request(method or request.method, url or request.url, headers=new_headers, content=body)


@pytest.fixture(scope="module")
def refusal_ids(live_app, finished_job) -> dict:
    with live_app.client() as client:
        batch = client.post("/api/agent/batches", json={"items": [{"image": IMAGE_B64}]}).json()
    return {"job": finished_job["job_id"], "batch": batch["batch_id"]}


@pytest.fixture(scope="module")
def other_keys(live_app) -> dict:
    """A revoked key and a key limited to a network the test client is not in, in the app's database."""
    import asyncio

    from serve_app.auth.crypto import load_master_key
    from serve_app.auth.keys import KeyStore
    from serve_app.auth.settings import AuthSettings
    from serve_app.db import make_engine

    async def make() -> dict:
        engine = make_engine(live_app.config.resolved_database_url)
        keys = KeyStore(engine, load_master_key(AuthSettings(master_key_file=live_app.config.dev_master_key_file)))
        scopes = ["jobs:read", "jobs:write"]
        revoked = await keys.create("revoked-agent", scopes=scopes)
        await keys.revoke(revoked.info.key_id)
        fenced = await keys.create("fenced-agent", scopes=scopes, cidrs=["10.0.0.0/8"])
        await engine.dispose()
        return {
            "revoked": AgentSigner(revoked.info.key_id, revoked.secret_b64()),
            "foreign_ip": AgentSigner(fenced.info.key_id, fenced.secret_b64()),
        }

    return asyncio.run(make())


def _tamper(kind: str, request: httpx.Request) -> httpx.Request:
    if kind == "method":
        return _rebuild(request, method={"POST": "PUT", "GET": "DELETE", "DELETE": "GET"}[request.method])
    if kind == "path":
        return _rebuild(request, url=request.url.copy_with(path=request.url.path + "x"))
    if kind == "query":
        return _rebuild(request, url=request.url.copy_merge_params({"limit": "99"}))
    if kind == "header":
        if "content-type" in request.headers:
            return _rebuild(request, headers={"Content-Type": "application/json; charset=latin-1"})
        return _rebuild(request, headers={"Idempotency-Key": "k-2"})
    if kind == "body":
        return _rebuild(request, content=request.content + b" " if request.content else b"{}")
    raise AssertionError(kind)


REFUSALS = {
    # kind: (status, reason logged)
    "replayed": (401, "replay"),
    "expired": (401, "expired"),
    "future_dated": (401, "clock_skew"),
    "unknown_key": (401, "unknown_key"),
    "revoked_key": (401, "revoked_key"),
    "foreign_ip": (403, "ip_denied"),
    "tampered_method": (401, "bad_signature"),
    "tampered_path": (401, "bad_signature"),
    "tampered_query": (401, "bad_signature"),
    "tampered_header": (401, "bad_signature"),
    "tampered_body": (401, "digest_mismatch"),
}


@pytest.mark.parametrize("endpoint_name", sorted(ENDPOINTS))
def test_e2e_every_protected_endpoint_refuses_bad_requests(live_app, refusal_ids, other_keys, endpoint_name):
    endpoint = ENDPOINTS[endpoint_name]
    now = time.time()
    signers = {
        "expired": AgentSigner(live_app.key_id, live_app.secret, clock=lambda: now - 400),
        "future_dated": AgentSigner(live_app.key_id, live_app.secret, clock=lambda: now + 120),
        "unknown_key": AgentSigner("ak_dev_doesnotexist000000", live_app.secret),
        "revoked_key": other_keys["revoked"],
        "foreign_ip": other_keys["foreign_ip"],
    }
    good = AgentSigner(live_app.key_id, live_app.secret)
    outcomes = {}
    with httpx.Client(timeout=60) as http:
        for kind in REFUSALS:
            request = _signed(live_app, endpoint, refusal_ids, signers.get(kind, good))
            if kind == "replayed":
                first = http.send(request)
                assert first.status_code < 400 or first.status_code == 409, (endpoint_name, first.text)
            elif kind.startswith("tampered_"):
                request = _tamper(kind.removeprefix("tampered_"), request)
            response = http.send(request)
            outcomes[kind] = (response.status_code, response.json().get("code"), response.headers["x-request-id"])
    audit = live_app.audit()
    for kind, (status, reason) in REFUSALS.items():
        got_status, _code, request_id = outcomes[kind]
        assert got_status == status, (endpoint_name, kind, outcomes[kind])
        assert audit[request_id]["reason"] == reason, (endpoint_name, kind, audit[request_id])
        assert audit[request_id]["decision"] == "deny"


@pytest.mark.parametrize("photo", ["plain_white.png", "vertical_gradient.png", "mug_gradient.png"])
def test_e2e_photo_with_a_background_comes_back_cut_out_and_within_its_face_budget(live_app, photo):
    image = base64.b64encode((STUDIO / photo).read_bytes()).decode()
    with live_app.client() as client:
        body = {"image": image, "seed": 5, "params": {"max_faces": 2_000}}
        done = live_app.wait_finished(client, client.post("/api/agent/jobs", json=body).json()["job_id"])
        assert done["status"] == "succeeded", done["error"]
        model = done["timings"]["model"]
        assert model["background_removal_s"] > 0  # an RGB photo: auto removed its background
        assert model["cleanup"]["faces_before"] > 2_000 >= done["mesh"]["faces"] == model["cleanup"]["faces_after"]
        mesh = trimesh.load(io.BytesIO(client.get(done["result_urls"]["glb"]).content), file_type="glb", force="mesh")
        assert len(mesh.faces) == done["mesh"]["faces"]
        assert len(mesh.split(only_watertight=False)) == 1  # one piece: no floaters


def test_e2e_photo_that_is_all_background_fails_with_no_foreground(live_app):
    buffer = io.BytesIO()
    Image.new("RGB", (128, 128), (245, 245, 240)).save(buffer, format="PNG")
    with live_app.client() as client:
        body = {"image": base64.b64encode(buffer.getvalue()).decode()}
        done = live_app.wait_finished(client, client.post("/api/agent/jobs", json=body).json()["job_id"])
    assert (done["status"], done["error"]["code"], done["error"]["retryable"]) == ("failed", "no_foreground", False)
