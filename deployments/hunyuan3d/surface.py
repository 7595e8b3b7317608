"""Surface extraction: marching cubes per sample, in parallel, and meshes in the official frame."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import trimesh
from skimage import measure
from torch import Tensor

from .volume import SparseVolume

# What marching cubes accepts: a decoder's sparse volume, or one dense (R+1)^3 grid
SurfaceInput = SparseVolume | Tensor | np.ndarray
# (D, H, W) volume, level -> vertices (V, 3) in voxel index units and faces (F, 3), scikit-image's convention
MarchingCubes = Callable[[Tensor, float], tuple[np.ndarray, np.ndarray]]


class EmptySurfaceError(ValueError):
    """The decoded occupancy never crosses the iso level: there is no surface to extract."""


def extract_surface(
    grid: SurfaceInput, level: float, box_v: float, resolution: int, marching_cubes: MarchingCubes | None = None
) -> trimesh.Trimesh:
    """One volume -> mesh, mapped and wound like the official pipeline.

    A :class:`SparseVolume` is cut to the box of its decoded points and marched only where they are (skimage's
    ``mask``): every cell that changes sign lies there, so the mesh is the one of the whole grid, in a fraction
    of the time. ``marching_cubes`` replaces scikit-image (the GPU's, on a volume left on the device); having
    no mask, it marches the whole box.
    """
    volume, decoded, offset = _volume_box(grid)
    if not volume.numel() or not float(volume.nan_to_num(nan=level).amin()) < level < float(volume.amax()):
        span = f"[{volume.amin():.3g}, {volume.amax():.3g}]" if volume.numel() else "nothing"
        raise EmptySurfaceError(
            f"no surface: occupancy logits span {span} and never cross the level {level}; try another seed or image"
        )
    if marching_cubes is not None:
        vertices, faces = marching_cubes(volume, level)
        if not len(faces):
            raise EmptySurfaceError(f"no surface at level {level}; try another seed or image")
    else:
        mask = None if decoded is None else decoded.cpu().numpy()
        try:
            vertices, faces, _normals, _values = measure.marching_cubes(
                volume.cpu().numpy(), level, method="lewiner", mask=mask
            )
        except (ValueError, RuntimeError) as exc:  # skimage: nothing to march in the masked region
            raise EmptySurfaceError(f"no surface at level {level}: {exc}") from exc
    return _official_frame(vertices, faces, offset, box_v, resolution)


def _volume_box(grid: SurfaceInput) -> tuple[Tensor, Tensor | None, np.ndarray]:
    """The part of ``grid`` to march (float32), which of its points were decoded (None: all), and where the
    part starts in the whole grid."""
    if isinstance(grid, SparseVolume):
        box = grid.decoded_box()
        low, high = box if box is not None else ((0, 0, 0), (grid.side,) * 3)
        values, decoded = grid.region(low, high)
        return values, decoded, np.asarray(low, dtype=np.float64)
    volume = grid.detach() if isinstance(grid, Tensor) else torch.from_numpy(np.asarray(grid))
    return volume.float(), None, np.zeros(3)


def _official_frame(
    vertices: np.ndarray, faces: np.ndarray, offset: np.ndarray, box_v: float, resolution: int
) -> trimesh.Trimesh:
    """Voxel-index vertices (of a box starting at ``offset``) -> the official pipeline's frame and winding."""
    # The official mapping divides by the number of grid points (R+1), not cells (R); kept for parity.
    vertices = ((vertices.astype(np.float64) + offset) / (resolution + 1) * (2 * box_v) - box_v).astype(np.float32)
    faces = np.ascontiguousarray(faces[:, ::-1])  # official winding
    return trimesh.Trimesh(vertices, faces)


def extract_surfaces(
    grids: Sequence[SurfaceInput] | Tensor,
    level: float,
    box_v: float,
    resolution: int,
    return_exceptions: bool = False,
    workers: int | None = None,
    marching_cubes: MarchingCubes | None = None,
) -> list[trimesh.Trimesh | Exception]:
    """:func:`extract_surface` for each volume of a batch, ``workers`` at a time (default: torch's intra-op
    threads, which Ray sets to the replica's CPUs; skimage's marching cubes releases the GIL for most of its
    work). With ``return_exceptions`` a sample that has no surface gets its error in its slot instead of
    failing the others."""
    items = list(grids)
    workers = max(1, min(len(items), workers or torch.get_num_threads()))

    def one(grid: SurfaceInput) -> trimesh.Trimesh | Exception:
        try:
            return extract_surface(grid, level, box_v, resolution, marching_cubes)
        except ValueError as exc:
            if not return_exceptions:
                raise
            return exc

    if workers == 1:
        return [one(grid) for grid in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="marching-cubes") as pool:
        return list(pool.map(one, items))
