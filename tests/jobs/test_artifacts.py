from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pytest
import trimesh

from deployments.contract import CONTENT_TYPES, MESH_FORMATS
from deployments.mesh_io import export_mesh, load_mesh, mesh_stats
from serve_app.artifacts import ArtifactStore


def test_artifact_store_put_read_delete(artifacts: ArtifactStore) -> None:
    path = artifacts.put_bytes("results/job_1/mesh.glb", b"abc")

    assert path == artifacts.root / "results" / "job_1" / "mesh.glb"
    assert artifacts.read_bytes("results/job_1/mesh.glb") == b"abc"
    assert artifacts.exists("results/job_1/mesh.glb") is True
    assert artifacts.delete("results/job_1/mesh.glb") is True
    assert artifacts.exists("results/job_1/mesh.glb") is False
    assert artifacts.delete("results/job_1/mesh.glb") is False


@pytest.mark.parametrize("relpath", ["../escape", "/etc/passwd", "a/../../b", "", "a\\b"])
def test_artifact_store_path_outside_data_dir_refused(artifacts: ArtifactStore, relpath: str) -> None:
    with pytest.raises(ValueError, match="must be relative and inside the data directory"):
        artifacts.path(relpath)


def test_artifact_store_put_replaces_whole_file_under_concurrent_reads(artifacts: ArtifactStore) -> None:
    old, new = b"a" * 4_000_000, b"b" * 3_000_000
    artifacts.put_bytes("big.bin", old)
    seen: set[bytes] = set()
    done = threading.Event()

    def read_repeatedly() -> None:
        while not done.is_set():
            data = artifacts.read_bytes("big.bin")
            seen.add(data[:1] + str(len(data)).encode())

    reader = threading.Thread(target=read_repeatedly)
    reader.start()
    try:
        for i in range(10):
            artifacts.put_bytes("big.bin", new if i % 2 == 0 else old)
    finally:
        done.set()
        reader.join()

    # Every read saw one complete version, never a mix or a prefix.
    assert seen <= {b"a4000000", b"b3000000"}
    assert sorted(os.listdir(artifacts.root)) == ["big.bin"]


def test_artifact_store_failed_write_leaves_no_partial_file(artifacts: ArtifactStore) -> None:
    # The target is a directory: the rename fails after the data was fully written to the temp file.
    (artifacts.root / "results" / "taken").mkdir(parents=True)

    with pytest.raises(OSError):
        artifacts.put_bytes("results/taken", b"mesh bytes")

    assert os.listdir(artifacts.root / "results") == ["taken"]
    assert os.listdir(artifacts.root / "results" / "taken") == []


@pytest.mark.parametrize("fmt", MESH_FORMATS)
def test_export_mesh_reads_back_with_trimesh(fmt: str) -> None:
    mesh = trimesh.creation.icosphere(subdivisions=2)

    data = export_mesh(mesh, fmt)  # type: ignore[arg-type]
    loaded = trimesh.load(io.BytesIO(data), file_type=fmt, force="mesh")

    assert isinstance(loaded, trimesh.Trimesh)
    assert len(loaded.faces) == 320
    assert len(loaded.vertices) == 162
    assert loaded.is_watertight is True


def test_export_mesh_unknown_format_refused() -> None:
    with pytest.raises(ValueError, match=r"format must be one of \['glb', 'obj', 'stl', 'ply'\], got 'fbx'"):
        export_mesh(trimesh.creation.box(), "fbx")  # type: ignore[arg-type]


def test_mesh_file_converts_from_glb_once_and_caches(artifacts: ArtifactStore) -> None:
    mesh = trimesh.creation.icosphere(subdivisions=1)
    artifacts.put_bytes("results/job_1/mesh-1.glb", export_mesh(mesh, "glb"))

    glb = artifacts.mesh_file("results/job_1/mesh-1.glb", "glb")
    stl = artifacts.mesh_file("results/job_1/mesh-1.glb", "stl")
    stl_mtime = stl.stat().st_mtime_ns
    again = artifacts.mesh_file("results/job_1/mesh-1.glb", "stl")

    assert glb == artifacts.root / "results/job_1/mesh-1.glb"
    assert stl == artifacts.root / "results/job_1/mesh-1.stl"
    assert again.stat().st_mtime_ns == stl_mtime
    assert len(load_mesh(stl.read_bytes(), "stl").faces) == 80


def test_content_types_are_the_documented_ones() -> None:
    assert CONTENT_TYPES == {
        "glb": "model/gltf-binary",
        "obj": "model/obj",
        "stl": "model/stl",
        "ply": "application/x-ply",
    }


def test_mesh_stats_of_unit_box() -> None:
    stats = mesh_stats(trimesh.creation.box(extents=(1.0, 2.0, 4.0)))

    assert stats.to_dict() == {
        "vertices": 8,
        "faces": 12,
        "area": 28.0,
        "bounds": [[-0.5, -1.0, -2.0], [0.5, 1.0, 2.0]],
        "watertight": True,
    }


def test_artifact_store_creates_root(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "new" / "dir")

    assert store.root.is_dir()
