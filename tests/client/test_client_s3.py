"""The synchronous SDK against an API whose artifacts are in an S3 bucket (moto): downloads work whether the
result is streamed through the ingress or answered with a 307 to a presigned URL."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import trimesh

from serve_app.artifact_settings import S3ArtifactSettings
from tests.serve_app.conftest import png_bytes

from .conftest import serve_api


@pytest.mark.parametrize("download", ["stream", "redirect"])
def test_client_download_from_s3_artifacts(tmp_path: Path, s3_settings: S3ArtifactSettings, download: str) -> None:
    settings = s3_settings.model_copy(update={"download": download})
    with serve_api(tmp_path, artifacts=settings) as live, live.client() as client:
        job_id = client.submit(png_bytes(), params={"num_inference_steps": 5, "octree_resolution": 64})["job_id"]
        assert client.wait(job_id, timeout=30)["status"] == "succeeded"

        data = client.download(job_id, "ply", path=tmp_path / "mesh.ply")

    assert (tmp_path / "mesh.ply").read_bytes() == data
    assert len(trimesh.load(io.BytesIO(data), file_type="ply", force="mesh").faces) == 320
