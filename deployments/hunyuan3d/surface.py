"""Surface extraction: marching cubes per sample and meshes in the official frame."""

from __future__ import annotations

import numpy as np
import trimesh
from skimage import measure
from torch import Tensor


class EmptySurfaceError(ValueError):
    """The decoded occupancy never crosses the iso level: there is no surface to extract."""


def extract_surface(grid: Tensor | np.ndarray, level: float, box_v: float, resolution: int) -> trimesh.Trimesh:
    """One (R+1)^3 logit grid -> mesh, mapped and wound like the official pipeline."""
    volume = grid.detach().cpu().numpy() if isinstance(grid, Tensor) else np.asarray(grid)
    low, high = float(np.nanmin(volume)), float(np.nanmax(volume))
    if not low < level < high:
        raise EmptySurfaceError(
            f"no surface: occupancy logits span [{low:.3g}, {high:.3g}] and never cross the level {level}; "
            "try another seed or image"
        )
    vertices, faces, _normals, _values = measure.marching_cubes(volume, level, method="lewiner")
    # The official mapping divides by the number of grid points (R+1), not cells (R); kept for parity.
    vertices = (vertices.astype(np.float64) / (resolution + 1) * (2 * box_v) - box_v).astype(np.float32)
    faces = np.ascontiguousarray(faces[:, ::-1])  # official winding
    return trimesh.Trimesh(vertices, faces)


def extract_surfaces(
    grids: Tensor, level: float, box_v: float, resolution: int, return_exceptions: bool = False
) -> list[trimesh.Trimesh | Exception]:
    """:func:`extract_surface` for each (R+1)^3 grid of a batch; with ``return_exceptions`` a sample that
    has no surface gets its error in its slot instead of failing the others."""
    meshes: list[trimesh.Trimesh | Exception] = []
    for grid in grids:
        try:
            meshes.append(extract_surface(grid, level, box_v, resolution))
        except ValueError as exc:
            if not return_exceptions:
                raise
            meshes.append(exc)
    return meshes
