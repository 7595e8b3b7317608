"""The artifact backend contract, run on both backends with the same tests: files under a data directory
and objects in an S3 bucket (moto's server); plus the downloads each answers."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import trimesh
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deployments.mesh_io import export_mesh, load_mesh
from serve_app.artifact_backend import ArtifactBackend, mesh_artifact
from serve_app.artifact_settings import S3ArtifactSettings
from serve_app.artifacts import LocalArtifactStore
from serve_app.artifacts_s3 import S3ArtifactStore


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactBackend:
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "data")
    return S3ArtifactStore(request.getfixturevalue("s3_settings"))


def test_backend_put_read_exists_delete(backend: ArtifactBackend) -> None:
    backend.put_bytes("results/job_1/mesh.glb", b"abc")
    backend.put_bytes("results/job_1/mesh.glb", b"replaced")

    assert backend.read_bytes("results/job_1/mesh.glb") == b"replaced"
    assert backend.exists("results/job_1/mesh.glb") is True
    assert backend.delete("results/job_1/mesh.glb") is True
    assert backend.exists("results/job_1/mesh.glb") is False
    assert backend.delete("results/job_1/mesh.glb") is False


def test_backend_read_of_a_missing_artifact_is_file_not_found(backend: ArtifactBackend) -> None:
    with pytest.raises(FileNotFoundError):
        backend.read_bytes("inputs/job_missing.png")


@pytest.mark.parametrize("relpath", ["../escape", "/etc/passwd", "a/../../b", "", "a\\b"])
def test_backend_path_outside_the_root_refused(backend: ArtifactBackend, relpath: str) -> None:
    with pytest.raises(ValueError, match="must be relative and inside the data directory"):
        backend.put_bytes(relpath, b"x")


def test_backend_delete_tree_removes_one_job_and_nothing_else(backend: ArtifactBackend) -> None:
    for relpath in ("results/job_1/mesh-a.glb", "results/job_1/mesh-a.stl", "results/job_1/old/mesh.glb"):
        backend.put_bytes(relpath, b"mesh")
    backend.put_bytes("results/job_10/mesh.glb", b"another job whose id starts the same")

    assert backend.delete_tree("results/job_1") is True

    assert [f.relpath for f in backend.list_files("results/job_1")] == []
    assert backend.exists("results/job_1/old/mesh.glb") is False
    assert backend.exists("results/job_10/mesh.glb") is True
    assert backend.delete_tree("results/job_never") is True


def test_backend_list_files_direct_children_with_mtime(backend: ArtifactBackend) -> None:
    backend.put_bytes("inputs/job_a.png", b"a")
    backend.put_bytes("inputs/job_b.png", b"b")
    backend.put_bytes("inputs/nested/job_c.png", b"not directly inside")

    listed = sorted(backend.list_files("inputs"), key=lambda f: f.relpath)

    assert [(f.relpath, f.temporary) for f in listed] == [("inputs/job_a.png", False), ("inputs/job_b.png", False)]
    assert all(abs(f.mtime - time.time()) < 3600 for f in listed)  # seconds since the epoch, not a counter
    assert backend.list_files("nothing_here") == []


def test_backend_mesh_conversion_is_cached_next_to_the_glb(backend: ArtifactBackend) -> None:
    backend.put_bytes("results/job_1/mesh-1.glb", export_mesh(trimesh.creation.icosphere(subdivisions=1), "glb"))

    assert mesh_artifact(backend, "results/job_1/mesh-1.glb", "glb") == "results/job_1/mesh-1.glb"
    stl = mesh_artifact(backend, "results/job_1/mesh-1.glb", "stl")
    backend.delete("results/job_1/mesh-1.glb")  # a second request must not need the GLB again
    again = mesh_artifact(backend, "results/job_1/mesh-1.glb", "stl")

    assert stl == again == "results/job_1/mesh-1.stl"
    assert len(load_mesh(backend.read_bytes(stl), "stl").faces) == 80
    with pytest.raises(FileNotFoundError):
        mesh_artifact(backend, "results/job_1/mesh-1.glb", "obj")  # gone: nothing to convert from
    with pytest.raises(ValueError, match="format must be one of"):
        mesh_artifact(backend, "results/job_1/mesh-1.glb", "fbx")  # type: ignore[arg-type]


# ---- downloads ----------------------------------------------------------------------------------------------


def _download_app(backend: ArtifactBackend) -> Starlette:
    async def download(request: Request) -> Response:
        relpath = request.path_params["relpath"]
        try:
            return await backend.download(relpath, media_type="model/stl", filename="job_1.stl")
        except FileNotFoundError:
            return Response(status_code=410)

    return Starlette(routes=[Route("/{relpath:path}", download)])


async def test_backend_download_streams_with_the_file_response_headers(
    backend: ArtifactBackend, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 6 * 4096  # 6 MiB: a multipart upload to S3, several chunks back
    backend.put_bytes("results/job_1/mesh-1.stl", data)
    transport = httpx.ASGITransport(app=_download_app(backend))

    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/results/job_1/mesh-1.stl")
        gone = await client.get("/results/job_1/mesh-2.stl")

    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["content-type"] == "model/stl"
    assert response.headers["content-disposition"] == 'attachment; filename="job_1.stl"'
    assert gone.status_code == 410


async def test_s3_download_redirect_to_a_presigned_url(s3_settings: S3ArtifactSettings) -> None:
    backend = S3ArtifactStore(s3_settings.model_copy(update={"download": "redirect", "presign_expiry_s": 60}))
    backend.put_bytes("results/job_1/mesh-1.stl", b"solid mesh")
    transport = httpx.ASGITransport(app=_download_app(backend))

    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/results/job_1/mesh-1.stl")
        gone = await client.get("/results/job_1/mesh-2.stl")
    # no credentials, no signing: the URL carries its own signature
    async with httpx.AsyncClient() as anonymous:
        fetched = await anonymous.get(response.headers["location"])

    assert response.status_code == 307
    assert response.headers["cache-control"] == "no-store"
    assert "X-Amz-Expires=60" in response.headers["location"]
    assert fetched.status_code == 200 and fetched.content == b"solid mesh"
    assert fetched.headers["content-type"] == "model/stl"  # stored with the object
    assert gone.status_code == 410


def test_s3_errors_are_oserrors_and_deletes_never_raise(s3_settings: S3ArtifactSettings) -> None:
    backend = S3ArtifactStore(s3_settings.model_copy(update={"bucket": "orfeas-no-such-bucket"}))

    with pytest.raises(OSError):
        backend.put_bytes("inputs/job_a.png", b"a")
    assert backend.delete("inputs/job_a.png") is False
    assert backend.delete_tree("results/job_1") in (True, False)  # logged, not raised
