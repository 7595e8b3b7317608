"""Artifact storage on the local filesystem, and the mesh formats agents can download.

Every write is atomic: the bytes go to a hidden temp file in the target's own directory, are fsynced, and
replace the target with ``os.replace`` (atomic on POSIX within one filesystem); the directory is fsynced so
the rename itself survives a power cut. A reader therefore sees the old file, the new file or no file,
never a partial one, and a crash leaves at worst a ``.tmp-*`` file behind.

Meshes are stored once, as GLB, and converted on download (then cached next to the GLB). GLB is the
default download, the most compact of the four, and keeps vertices and faces exactly as produced (float32
positions, indexed faces), so every other format can be derived from it without loss of what the model made.
Storing all four at completion would quadruple the disk for formats most agents never ask for.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import trimesh

MeshFormat = Literal["glb", "obj", "stl", "ply"]
MESH_FORMATS: tuple[MeshFormat, ...] = ("glb", "obj", "stl", "ply")
CANONICAL_FORMAT: MeshFormat = "glb"

# IANA-registered types where one exists (model/gltf-binary, model/obj, model/stl). PLY has no registered
# type; application/x-ply is the one desktop mesh tools and freedesktop.org use.
CONTENT_TYPES: dict[MeshFormat, str] = {
    "glb": "model/gltf-binary",
    "obj": "model/obj",
    "stl": "model/stl",
    "ply": "application/x-ply",
}

_TEMP_PREFIX = ".tmp-"


class ArtifactStore:
    """Files under one data directory, addressed by relative POSIX paths such as ``results/job_x/mesh.glb``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, relpath: str) -> Path:
        """The absolute path of ``relpath``; refuses anything that would leave the data directory."""
        parts = PurePosixPath(relpath).parts
        if not parts or relpath.startswith("/") or any(p in ("..", ".", "") for p in parts) or "\\" in relpath:
            raise ValueError(f"artifact path must be relative and inside the data directory, got {relpath!r}")
        return self.root.joinpath(*parts)

    def put_bytes(self, relpath: str, data: bytes) -> Path:
        """Write ``data`` at ``relpath`` atomically (replacing any previous file) and return its path."""
        target = self.path(relpath)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX + target.name + ".", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, target)
        except BaseException:
            # Never leave the half-written temp file behind; the target is untouched.
            Path(temp_name).unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
        return target

    def read_bytes(self, relpath: str) -> bytes:
        return self.path(relpath).read_bytes()

    def exists(self, relpath: str) -> bool:
        return self.path(relpath).is_file()

    def delete(self, relpath: str) -> bool:
        """Remove one file; True when it existed."""
        try:
            self.path(relpath).unlink()
        except FileNotFoundError:
            return False
        return True

    def mesh_file(self, canonical_relpath: str, fmt: MeshFormat) -> Path:
        """The file of a stored mesh in ``fmt``, converting from the canonical GLB once and caching it."""
        if fmt not in MESH_FORMATS:
            raise ValueError(f"format must be one of {list(MESH_FORMATS)}, got {fmt!r}")
        if fmt == CANONICAL_FORMAT:
            return self.path(canonical_relpath)
        relpath = str(PurePosixPath(canonical_relpath).with_suffix("." + fmt))
        if not self.exists(relpath):
            mesh = load_mesh(self.read_bytes(canonical_relpath), CANONICAL_FORMAT)
            # Two concurrent downloads may both convert; the atomic write makes the last one win harmlessly.
            self.put_bytes(relpath, export_mesh(mesh, fmt))
        return self.path(relpath)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def export_mesh(mesh: trimesh.Trimesh, fmt: MeshFormat) -> bytes:
    """Serialize ``mesh`` as ``fmt`` (binary GLB/STL/PLY, text OBJ)."""
    if fmt not in MESH_FORMATS:
        raise ValueError(f"format must be one of {list(MESH_FORMATS)}, got {fmt!r}")
    data = mesh.export(file_type=fmt)
    return data.encode("utf-8") if isinstance(data, str) else data


def load_mesh(data: bytes, fmt: MeshFormat) -> trimesh.Trimesh:
    """Parse bytes written by :func:`export_mesh`, keeping vertices and faces as stored (no merging)."""
    return trimesh.load_mesh(io.BytesIO(data), file_type=fmt, process=False)


@dataclass(frozen=True)
class MeshStats:
    """What an agent sees about a mesh in the job status (JSON-friendly through :meth:`to_dict`)."""

    vertices: int
    faces: int
    area: float
    bounds: tuple[tuple[float, float, float], tuple[float, float, float]]
    watertight: bool

    @classmethod
    def of(cls, mesh: trimesh.Trimesh) -> MeshStats:
        if len(mesh.vertices):
            low, high = (tuple(float(v) for v in row) for row in mesh.bounds)
        else:
            low = high = (0.0, 0.0, 0.0)
        return cls(
            vertices=len(mesh.vertices),
            faces=len(mesh.faces),
            area=float(mesh.area),
            bounds=(low, high),  # type: ignore[arg-type]
            watertight=bool(mesh.is_watertight),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "vertices": self.vertices,
            "faces": self.faces,
            "area": self.area,
            "bounds": [list(self.bounds[0]), list(self.bounds[1])],
            "watertight": self.watertight,
        }
