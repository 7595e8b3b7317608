"""Artifacts in an S3 bucket (moto's server): retention sweeps objects, and a job through the in-process
API stores its input and mesh in the bucket and downloads its result streamed or by presigned redirect."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path

import boto3
import httpx
import pytest
import trimesh

from serve_app.artifact_settings import LocalArtifactSettings, S3ArtifactSettings
from serve_app.artifacts import LocalArtifactStore
from serve_app.artifacts_s3 import S3ArtifactStore
from serve_app.config import AppConfig, JobSettings
from serve_app.jobs import Dispatcher, JobStore
from serve_app.retention import RetentionSettings, Sweeper
from serve_app.storage import open_artifacts
from tests.conftest import engine_with_schema
from tests.jobs.helpers import AGENT_A, FakeModel, ManualClock, new_job, wait_for_status

from .conftest import b64, png_bytes, start_api

DAY = 24 * 3600.0


def _keys(settings: S3ArtifactSettings) -> list[str]:
    """Every key in the bucket, relative to the configured prefix."""
    client = boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    listed = client.list_objects_v2(Bucket=settings.bucket).get("Contents", [])
    return sorted(item["Key"].removeprefix(settings.prefix + "/") for item in listed)


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Polls ``condition`` (blocking calls, off the loop): the input is deleted just after the job's transition."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await asyncio.to_thread(condition):
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def test_config_artifacts_kind_selects_the_backend(tmp_path: Path, s3_settings: S3ArtifactSettings) -> None:
    local = AppConfig(mode="dev", data_dir=tmp_path)
    s3 = AppConfig.model_validate({"mode": "dev", "data_dir": tmp_path, "artifacts": s3_settings.model_dump()})

    assert local.artifacts == LocalArtifactSettings()
    assert isinstance(open_artifacts(local), LocalArtifactStore)
    assert isinstance(open_artifacts(s3), S3ArtifactStore)


@pytest.mark.parametrize(
    ("artifacts", "message"),
    [
        ({"kind": "gcs"}, "does not match any of the expected tags"),
        ({"kind": "s3"}, "bucket\n  Field required"),
        ({"kind": "s3", "bucket": "orfeas", "download": "proxy"}, "Input should be 'stream' or 'redirect'"),
        ({"kind": "s3", "bucket": "orfeas", "prefix": "/abs"}, "String should match pattern"),
        ({"kind": "s3", "bucket": "orfeas", "secret_access_key": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_config_artifacts_invalid_refused(artifacts: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AppConfig.model_validate({"mode": "dev", "artifacts": artifacts})


async def test_retention_on_s3_sweeps_expired_results_and_orphaned_inputs(
    tmp_path: Path, s3_settings: S3ArtifactSettings
) -> None:
    artifacts = S3ArtifactStore(s3_settings)
    clock = ManualClock()
    async with engine_with_schema(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}") as engine:
        store = JobStore(engine, artifacts, JobSettings(), clock=clock, retention=RetentionSettings(result_ttl_s=DAY))
        (done, ended) = (await store.submit_batch(AGENT_A, [new_job(seed=1), new_job(seed=2)])).jobs
        await store.cancel(AGENT_A, ended.id)
        dispatcher = Dispatcher(store, artifacts, FakeModel(), JobSettings(poll_interval_s=0.02))
        await dispatcher.start()
        try:
            await wait_for_status(store, AGENT_A, done.id, ["succeeded"])
        finally:
            await dispatcher.stop()
        finished = await store.get(AGENT_A, done.id)
        assert finished is not None and finished.result_path is not None
        await _until(lambda: not artifacts.exists(done.input_path))  # deleted when the job ended
        artifacts.put_bytes(ended.input_path, b"left by a crash after the transition")
        artifacts.put_bytes(finished.result_path.replace(".glb", ".obj"), b"a converted format")
        clock.advance(DAY + 1)

        report = await Sweeper(store, artifacts, store.retention).sweep()

        assert (report.results, report.inputs, report.temp_files) == (1, 1, 0)
        assert _keys(s3_settings) == []
        expired = await store.get(AGENT_A, done.id)
        assert expired is not None and expired.result_path is None


async def test_api_job_on_s3_stores_input_and_mesh_and_streams_the_result(
    tmp_path: Path, s3_settings: S3ArtifactSettings
) -> None:
    api = await start_api(tmp_path, artifacts=s3_settings)
    try:
        job = (await api.client.post("/api/agent/jobs", json={"image": b64(png_bytes()), "seed": 3})).json()
        assert _keys(s3_settings) in ([f"inputs/{job['job_id']}.png"], [])  # [] if the worker was already done
        done = await api.wait_finished(job["job_id"])
        assert done["status"] == "succeeded"
        # the input goes with the job's end, the mesh stays in the bucket
        await _until(lambda: len(_keys(s3_settings)) == 1)
        (glb_key,) = _keys(s3_settings)
        assert glb_key.startswith(f"results/{job['job_id']}/mesh-") and glb_key.endswith(".glb")

        glb = await api.client.get(done["result_urls"]["glb"])
        obj = await api.client.get(done["result_urls"]["obj"])

        assert glb.status_code == 200 and glb.headers["content-type"] == "model/gltf-binary"
        assert glb.content == api.service.artifacts.read_bytes(glb_key)
        assert glb.headers["content-length"] == str(len(glb.content))
        assert glb.headers["content-disposition"] == f'attachment; filename="{job["job_id"]}.glb"'
        assert obj.status_code == 200 and obj.headers["content-type"].startswith("model/obj")
        assert len(trimesh.load(io.BytesIO(obj.content), file_type="obj", force="mesh").faces) == 320
        assert _keys(s3_settings) == sorted([glb_key, glb_key.replace(".glb", ".obj")])  # cached next to it
        assert not (tmp_path / "data" / "artifacts" / "results").exists()  # nothing on the local disk
    finally:
        await api.stop()


async def test_api_job_on_s3_redirects_the_result_to_a_presigned_url(
    tmp_path: Path, s3_settings: S3ArtifactSettings
) -> None:
    settings = s3_settings.model_copy(update={"download": "redirect", "presign_expiry_s": 120})
    api = await start_api(tmp_path, artifacts=settings)
    try:
        job = (await api.client.post("/api/agent/jobs", json={"image": b64(png_bytes())})).json()
        done = await api.wait_finished(job["job_id"])

        response = await api.client.get(done["result_urls"]["stl"])
        async with httpx.AsyncClient() as anonymous:  # no agent signature: the URL is the credential
            fetched = await anonymous.get(response.headers["location"])

        assert response.status_code == 307
        assert "X-Amz-Expires=120" in response.headers["location"]
        assert fetched.status_code == 200 and fetched.headers["content-type"] == "model/stl"
        assert len(trimesh.load(io.BytesIO(fetched.content), file_type="stl", force="mesh").faces) == 320
    finally:
        await api.stop()
