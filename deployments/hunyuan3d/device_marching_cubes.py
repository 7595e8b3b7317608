"""Marching cubes on the GPU with NVIDIA Warp (``pip install 'warp-lang>=1.19'``; not a project dependency).

Why Warp: it is maintained by NVIDIA with frequent releases, ships binary wheels that do not depend on the
installed torch build (it reads torch tensors zero-copy through ``wp.from_torch``), and its
``warp.geometry.IsoSurfaceMarchingCubes`` is classic marching cubes on the nodes of a dense grid. The other
candidates need a CUDA toolkit to build against the exact torch (``diso``, PyTorch3D, ``torchmcubes`` from
git), ship wheels only for a few pinned torch versions (kaolin) or are unmaintained (``cumcubes``, 2022).

Conventions against ``skimage.measure.marching_cubes(volume, level, method="lewiner")``, measured with Warp
1.19.0 (``tests/hunyuan3d/test_acceleration.py`` checks them):
- axis order: both give vertex ``(i, j, k)`` for ``volume[i, j, k]`` (Warp's x is array axis 0);
- units: both in voxel index units, node ``(0, 0, 0)`` at the origin, spacing 1 (Warp's default bounds);
- vertices: one per crossed grid edge in both, linearly interpolated: the same points within 1e-5 voxel,
  in a different order;
- winding: the same orientation (for logits, positive inside, both wind the faces inwards; the caller
  reverses them as it does for scikit-image). Warp may split a cell's polygon along the other diagonal,
  so the triangles themselves differ while the surface, its area and its signed volume agree;
- topology: Warp uses the classic (Lorensen) case table, Lewiner resolves ambiguous cells (MC33). Smooth
  fields have none (same face count); white noise gets ~10 % more faces from Lewiner;
- NaN (cells the hierarchical decoder skipped): scikit-image emits NaN vertices next to them and Warp emits
  faces that index vertex -1, so NaN is replaced by the lowest float32 here: unknown counts as outside, and
  the surface closes on the last known nodes.
Outputs are converted to scikit-image's types (float32 vertices, int32 faces), so a caller treats both alike.
Warp allocates its scratch memory itself, outside torch's caching allocator: by its source about 40 bytes
per grid point at the peak (0.7 GB at R=256, 5.5 GB at R=512; estimated, not measured on a GPU).
"""

from __future__ import annotations

import importlib.metadata
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

PACKAGE = "warp-lang"
MIN_VERSION = (1, 19)
INSTALL_HINT = f"pip install '{PACKAGE}>={'.'.join(map(str, MIN_VERSION))}'"

_warp: ModuleType | None = None


def installed_warp_version() -> str | None:
    """The installed warp-lang version, or None (read from package metadata: importing Warp takes seconds)."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_problem(version: str | None) -> str | None:
    """Why ``version`` of warp-lang cannot serve (None: it can)."""
    if version is None:
        return f"needs NVIDIA Warp, which is not installed: {INSTALL_HINT}"
    try:
        found = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return f"cannot read the warp-lang version {version!r}: {INSTALL_HINT}"
    if found < MIN_VERSION:
        return f"needs warp-lang >= {'.'.join(map(str, MIN_VERSION))} (warp.geometry), found {version}: {INSTALL_HINT}"
    return None


def warp_problem() -> str | None:
    """Why device marching cubes cannot run in this environment (None: it can)."""
    return version_problem(installed_warp_version())


def marching_cubes_on_device(volume: Tensor, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of a (D, H, W) CUDA volume at ``level``, in scikit-image's convention (module docstring).

    Returns vertices float32 (V, 3) in voxel index units and faces int32 (F, 3), both numpy on the host;
    empty arrays when ``level`` is never crossed. Raises ValueError for a volume that is not on a CUDA
    device or not 3-D, ImportError naming warp-lang when it is missing.
    """
    if volume.device.type != "cuda":
        raise ValueError(
            f"marching_cubes_on_device needs a CUDA tensor, got one on {volume.device}; "
            "on the CPU use scikit-image (surface.extract_surface)"
        )
    return warp_marching_cubes(volume, level)


def warp_marching_cubes(volume: Tensor, level: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`marching_cubes_on_device` on whichever device ``volume`` is (Warp runs on CPUs too: the tests
    check the conventions there)."""
    if volume.ndim != 3 or min(volume.shape) < 2:
        raise ValueError(f"volume must be 3-D with at least 2 nodes per axis, got shape {tuple(volume.shape)}")
    wp = _import_warp()
    # NaN -> the lowest float32 (not -inf, whose interpolation weight is inf/inf): outside, and a vertex on
    # an edge to a skipped node lands on the known node
    lowest = torch.finfo(torch.float32).min
    values = torch.nan_to_num(volume.detach().float(), nan=lowest, neginf=lowest).contiguous()
    if values.is_cuda:
        # Warp launches on its own stream: let torch's finish the volume first (one sync per mesh; Warp's
        # docs warn that on a torch stream its scratch arrays can be freed under queued kernels)
        torch.cuda.current_stream(values.device).synchronize()
    vertices, indices = wp.geometry.IsoSurfaceMarchingCubes.extract(wp.from_torch(values), float(level))
    # .numpy() copies to the host and waits for Warp's stream
    vertices_np = vertices.numpy().reshape(-1, 3).astype(np.float32, copy=False)
    faces_np = indices.numpy().reshape(-1, 3).astype(np.int32, copy=False)
    return vertices_np, faces_np


def _import_warp() -> Any:
    """Import and initialise Warp once."""
    global _warp
    if _warp is None:
        problem = warp_problem()
        if problem is not None:
            raise ImportError(f"device marching cubes {problem}")
        import warp
        import warp.geometry  # a submodule that `import warp` does not load

        warp.config.log_level = warp.LOG_WARNING  # no banner nor per-kernel load lines in replica logs
        warp.init()
        _warp = warp
    return _warp
