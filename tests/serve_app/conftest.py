"""An in-process agent API: the real ingress service (SQLite, artifacts, auth) over ASGI and a real job
worker beside it, with a model stand-in that returns a real mesh. The Ray end-to-end tests live in
tests/integration."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trimesh
from PIL import Image

from deployments.contract import ErrorCode, GenerationError, GenerationRequest, Outcome
from serve_app.auth.keys import KeyStore
from serve_app.auth.signing import AgentSigner
from serve_app.config import AppConfig, JobSettings
from serve_app.http_app import build_http_app
from serve_app.service import AgentService
from serve_app.worker_service import WorkerService
from tests.jobs.helpers import result_of

# What every job's params hold besides the generation parameters, when the agent does not set them.
MESH_DEFAULTS = {"max_faces": 40_000, "remove_floaters": True, "remove_background": "auto"}


def png_bytes(size=(64, 48), color=(200, 40, 40, 255), mode="RGBA") -> bytes:
    buf = io.BytesIO()
    image = Image.new(mode, size, (0, 0, 0, 0) if mode == "RGBA" else (255, 255, 255))
    image.paste(Image.new(mode, (size[0] // 2, size[1] // 2), color), (size[0] // 4, size[1] // 4))
    image.save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def sphere_model(request: GenerationRequest) -> Outcome:
    """Stands in for the ShapeGenerator: a real mesh whose size depends on the seed."""
    if request.params.num_inference_steps == 13:  # lets a test make the model fail on purpose
        return GenerationError(ErrorCode.EMPTY_SURFACE, "no surface found", request.job_id)
    await asyncio.sleep(0.01)
    return result_of(trimesh.creation.icosphere(subdivisions=2, radius=0.5 + (request.seed % 5) / 10), request)


class Api:
    def __init__(self, service: AgentService, worker: WorkerService, client: httpx.AsyncClient) -> None:
        self.service = service
        self.worker = worker
        self.client = client

    async def stop(self) -> None:
        await self.client.aclose()
        await self.worker.stop()
        await self.service.stop()

    async def wait_finished(self, job_id: str, timeout: float = 10.0) -> dict:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            job = (await self.client.get(f"/api/agent/jobs/{job_id}")).json()
            if job["status"] in ("succeeded", "failed", "cancelled", "expired"):
                return job
            assert asyncio.get_running_loop().time() < deadline, f"job {job_id} still {job['status']}"
            await asyncio.sleep(0.05)

    async def client_for(self, agent: str, scopes=("jobs:read", "jobs:write")) -> httpx.AsyncClient:
        keys = KeyStore(self.service.engine, self.service.master_key)
        material = await keys.create(agent, scopes=list(scopes))
        return _client(self.client._transport, AgentSigner(material.info.key_id, material.secret_b64()))


def _client(transport: httpx.AsyncBaseTransport, signer: AgentSigner) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, base_url="http://testserver", auth=signer)


async def start_api(tmp_path: Path, *, dispatcher: bool = True, **overrides) -> Api:
    config = AppConfig(
        mode="dev",
        data_dir=tmp_path / "data",
        jobs=JobSettings(poll_interval_s=0.05, **overrides.pop("jobs", {})),
        **overrides,
    )
    worker = await WorkerService.start(config, sphere_model, dispatch=dispatcher)
    service = await AgentService.start(config, worker.notify)
    dev = json.loads(config.dev_key_file.read_text())
    transport = httpx.ASGITransport(app=build_http_app(service))
    return Api(service, worker, _client(transport, AgentSigner(dev["key_id"], dev["secret"])))


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    api = await start_api(tmp_path)
    yield api
    await api.stop()


@pytest.fixture
async def paused_api(tmp_path: Path) -> AsyncIterator[Api]:
    """No job worker dispatching: jobs stay queued."""
    api = await start_api(tmp_path, dispatcher=False, jobs={"max_queued": 3})
    yield api
    await api.stop()
