"""Meshes to bytes and back (trimesh), and the statistics agents see: one place for both sides.

The model replica exports each mesh as GLB in its CPU section; the agent API converts a stored GLB to the
other download formats on demand. GLB keeps vertices and faces exactly as produced (float32 positions,
indexed faces), so every other format can be derived from it without loss.
"""

from __future__ import annotations

import io

import numpy as np
import trimesh

from .contract import MESH_FORMATS, MeshFormat, MeshStats


def export_mesh(mesh: trimesh.Trimesh, fmt: MeshFormat) -> bytes:
    """Serialize ``mesh`` as ``fmt`` (binary GLB/STL/PLY, text OBJ)."""
    if fmt not in MESH_FORMATS:
        raise ValueError(f"format must be one of {list(MESH_FORMATS)}, got {fmt!r}")
    data = mesh.export(file_type=fmt)
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def load_mesh(data: bytes, fmt: MeshFormat) -> trimesh.Trimesh:
    """Parse bytes written by :func:`export_mesh`, keeping vertices and faces as stored (no merging)."""
    return trimesh.load_mesh(io.BytesIO(data), file_type=fmt, process=False)


def mesh_stats(mesh: trimesh.Trimesh) -> MeshStats:
    if len(mesh.vertices):
        low, high = (tuple(float(v) for v in row) for row in np.asarray(mesh.bounds))
    else:
        low = high = (0.0, 0.0, 0.0)
    return MeshStats(
        vertices=len(mesh.vertices),
        faces=len(mesh.faces),
        area=float(mesh.area),
        bounds=(low, high),  # type: ignore[arg-type]
        watertight=bool(mesh.is_watertight),
    )
