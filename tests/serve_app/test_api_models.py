"""Two served models through the in-process API: a job's `model` picks its generator, unknown ones get 422,
capabilities list both with their own defaults. The catalog is the one the application builder makes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from deployments.contract import GenerationRequest, Outcome
from serve_app.app import OrfeasArgs
from serve_app.auth.signing import AgentSigner
from serve_app.config import AppConfig, JobSettings
from serve_app.http_app import build_http_app
from serve_app.service import AgentService
from serve_app.worker_service import WorkerService

from .conftest import Api, _client, b64, png_bytes, sphere_model

BASE = "hunyuan3d-dit-v2-0"
FAST = "hunyuan3d-dit-v2-0-fast"
GENERATORS = [
    {"model": f"configs/models/tiny-Hunyuan3D-2/{BASE}"},
    {"model": f"configs/models/tiny-Hunyuan3D-2/{FAST}", "defaults": {"num_inference_steps": 4}},
]


class Recorder:
    """One model's generator: remembers the jobs that reached it, answers with a real mesh."""

    def __init__(self) -> None:
        self.job_ids: list[str | None] = []

    async def __call__(self, request: GenerationRequest) -> Outcome:
        self.job_ids.append(request.job_id)
        return await sphere_model(request)


class TwoModels(Api):
    recorders: dict[str, Recorder]


async def _start(tmp_path: Path, *, dispatch: bool = True) -> TwoModels:
    args = OrfeasArgs.model_validate(
        {"app": {"mode": "dev", "defaults": {"octree_resolution": 64}}, "generators": GENERATORS}
    )
    config = AppConfig(
        mode="dev",
        data_dir=tmp_path / "data",
        defaults=args.app.defaults,
        jobs=JobSettings(poll_interval_s=0.05),
        models=args.catalog(),
    )
    recorders = {BASE: Recorder(), FAST: Recorder()}
    worker = await WorkerService.start(config, dict(recorders), dispatch=dispatch)
    service = await AgentService.start(config, worker.notify)
    dev = json.loads(config.dev_key_file.read_text())
    transport = httpx.ASGITransport(app=build_http_app(service))
    api = TwoModels(service, worker, _client(transport, AgentSigner(dev["key_id"], dev["secret"])))
    api.recorders = recorders
    return api


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[TwoModels]:
    api = await _start(tmp_path)
    yield api
    await api.stop()


@pytest.fixture
async def two_paused(tmp_path: Path) -> AsyncIterator[TwoModels]:
    api = await _start(tmp_path, dispatch=False)
    yield api
    await api.stop()


async def test_api_models_a_job_on_model_b_reaches_bs_generator(two):
    on_fast = await two.client.post("/api/agent/jobs", json={"image": b64(png_bytes()), "model": FAST})
    on_default = await two.client.post("/api/agent/jobs", json={"image": b64(png_bytes())})
    assert (on_fast.status_code, on_default.status_code) == (202, 202), on_fast.text
    fast, default = on_fast.json(), on_default.json()
    assert (fast["model"], default["model"]) == (FAST, BASE)
    # each model's own defaults: 4 steps on the fast one (its entry), the model's own 50 on the other
    assert (fast["params"]["num_inference_steps"], default["params"]["num_inference_steps"]) == (4, 50)
    assert fast["params"]["octree_resolution"] == default["params"]["octree_resolution"] == 64  # the app's
    for job in (fast, default):
        done = await two.wait_finished(job["job_id"])
        assert (done["status"], done["model"]) == ("succeeded", job["model"])
    assert two.recorders[FAST].job_ids == [fast["job_id"]]
    assert two.recorders[BASE].job_ids == [default["job_id"]]


async def test_api_models_multipart_job_names_its_model(two):
    files = {"image": ("cat.png", png_bytes(), "image/png")}
    response = await two.client.post("/api/agent/jobs", files=files, data={"model": FAST, "seed": "4"})
    assert response.status_code == 202, response.text
    done = await two.wait_finished(response.json()["job_id"])
    assert (done["status"], done["model"]) == ("succeeded", FAST)
    assert two.recorders[FAST].job_ids == [done["job_id"]]


async def test_api_models_batch_model_and_item_overrides(two_paused):
    items = [{"image": b64(png_bytes()), "seed": 1}, {"image": b64(png_bytes()), "seed": 2, "model": BASE}]
    response = await two_paused.client.post("/api/agent/batches", json={"items": items, "model": FAST})
    assert response.status_code == 202, response.text
    jobs = response.json()["jobs"]
    assert [(job["model"], job["params"]["num_inference_steps"]) for job in jobs] == [(FAST, 4), (BASE, 50)]
    default = await two_paused.client.post("/api/agent/batches", json={"items": items[:1]})
    assert [job["model"] for job in default.json()["jobs"]] == [BASE]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"model": "hunyuan3d-dit-v2-1"}, "the job's"),
        ({"model": 7}, "the job's"),
    ],
)
async def test_api_models_unknown_model_is_422_with_the_served_list(two_paused, body, where):
    response = await two_paused.client.post("/api/agent/jobs", json={"image": b64(png_bytes()), **body})
    assert response.status_code == 422
    error = response.json()
    assert (error["code"], error["type"], error["retryable"]) == ("unknown_model", "invalid_request_error", False)
    assert error["models"] == [BASE, FAST]
    assert error["message"].startswith(f"{where} 'model'") and FAST in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]


async def test_api_models_unknown_model_in_a_batch_item_or_multipart_is_422(two_paused):
    items = [{"image": b64(png_bytes())}, {"image": b64(png_bytes()), "model": "nope"}]
    response = await two_paused.client.post("/api/agent/batches", json={"items": items})
    assert (response.status_code, response.json()["code"]) == (422, "unknown_model")
    assert response.json()["message"].startswith("items[1] 'model' 'nope'")
    files = {"image": ("cat.png", png_bytes(), "image/png")}
    upload = await two_paused.client.post("/api/agent/jobs", files=files, data={"model": "nope"})
    assert (upload.status_code, upload.json()["code"], upload.json()["models"]) == (422, "unknown_model", [BASE, FAST])
    listed = await two_paused.client.get("/api/agent/jobs")
    assert listed.json()["jobs"] == []  # nothing was stored


async def test_api_models_capabilities_list_every_model(two_paused):
    caps = (await two_paused.client.get("/api/agent/capabilities")).json()
    base, fast = caps["models"]
    assert {key: base[key] for key in ("name", "default", "family", "variant", "views")} == {
        "name": BASE,
        "default": True,
        "family": "hunyuan3d-2",
        "variant": BASE,
        "views": ["front"],
    }
    assert (fast["name"], fast["default"], fast["variant"]) == (FAST, False, FAST)
    assert (base["defaults"]["num_inference_steps"], fast["defaults"]["num_inference_steps"]) == (50, 4)
    assert caps["params"]["defaults"] == base["defaults"]
    assert fast["limits"]["octree_resolution"] == {"min": 32, "max": 384}
    assert fast["limits"]["max_faces"] == caps["params"]["max_faces"]


async def test_api_models_openapi_lists_the_served_models(two_paused):
    document = (await two_paused.client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    model_field = schemas["JobSubmission"]["properties"]["model"]
    assert {"enum": [BASE, FAST], "type": "string"} in model_field["anyOf"]
    assert "unknown_model" in document["paths"]["/api/agent/jobs"]["post"]["responses"]["422"]["description"]
