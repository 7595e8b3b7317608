"""Mesh clean-up after marching cubes: repair, floater removal, face reduction and outward normals.

What the official Hunyuan3D API server does with pymeshlab (GPL, so not used here: FloaterRemover,
DegenerateFaceRemover, FaceReducer to 40,000 faces), rebuilt on trimesh and fast-simplification (MIT).
It runs per job in the model replica's CPU section, between marching cubes and GLB export. Vertices are
never translated or scaled: the mesh stays in the official Hunyuan3D frame.

Steps, each timed in the :class:`CleanupReport`:

1. ``repair``: merge coincident vertices, drop degenerate and duplicate faces and unreferenced vertices.
2. ``floaters``: drop connected pieces that are small next to the largest one (``remove_floaters``).
3. ``decimation``: quadric edge collapse down to at most ``max_faces`` faces (0: none), then repair again.
4. ``normals``: consistent winding, outward-facing on every closed piece.

On smooth marching-cubes surfaces (R = 128-384 -> 40,000 faces) decimation keeps the surface area within
0.1% and the bounds within 0.1% of the diagonal (benchmarks/mesh_postprocess.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import fast_simplification
import numpy as np
import trimesh

from .contract import MeshOptions

logger = logging.getLogger(__name__)

STEPS = ("repair", "floaters", "decimation", "normals")

# A piece whose area is below this fraction of the largest piece's is a floater. The official server
# drops pieces with fewer than 0.5% of the largest one's faces (meshlab's nbfaceratio=0.005); marching cubes
# makes faces of near-uniform size, so this is the same cut, measured by area so that it still means the
# same on uneven or already decimated meshes. A larger fraction would start deleting real detached parts
# (a separate handle, a wheel) that the official output keeps.
FLOATER_AREA_FRACTION = 0.005

# A face whose 2D bounding box is thinner than this (in the frame's units, about 1) has no width that
# float32 export could keep: zero area up to rounding. trimesh's own merge tolerance.
DEGENERATE_HEIGHT = trimesh.tol.merge

# fast-simplification's default (0 = faithful .. 10 = coarse; it sets how fast the allowed error grows per
# iteration). On a 274k-face marching-cubes torus to 40k faces: 7 moves area by 0.04% and bounds by 0.04% of
# the diagonal, 3 by less at the same speed, and 0 stops at 191k faces. 7 reaches the target on rough meshes.
DECIMATION_AGGRESSION = 7
# A pass normally lands exactly on its target and repair can only remove faces; should a pass still end
# over budget, the next one aims this fraction lower (2%, 4%, ...).
DECIMATION_MARGIN = 0.02
MAX_DECIMATION_PASSES = 3
# The fallback's first grid: cells of 1/1000 of the diagonal, doubled until the budget is met.
CLUSTER_START_CELLS = 1000.0


@dataclass(frozen=True)
class CleanupReport:
    """What :func:`clean_mesh` did to one mesh.

    ``components_found``: connected pieces (by shared edges) before floater removal; ``None`` when floater
    removal was off. ``decimation_passes``: 0 when the mesh was already within budget or ``max_faces`` is 0.
    ``seconds``: wall-clock seconds per step of :data:`STEPS`.
    """

    faces_before: int
    vertices_before: int
    faces_after: int
    vertices_after: int
    components_found: int | None
    components_dropped: int
    decimation_passes: int
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: counts, and ``seconds`` per step (a copy)."""
        values = asdict(self)
        values["seconds"] = dict(self.seconds)
        return values


def clean_mesh(mesh: trimesh.Trimesh, options: MeshOptions) -> tuple[trimesh.Trimesh, CleanupReport]:
    """A cleaned copy of ``mesh`` (the input is not modified) and the report of what was done.

    Never raises for a valid but odd mesh: an empty mesh comes back empty, a single triangle or an open
    (non-watertight) surface goes through every step that applies to it.
    """
    seconds: dict[str, float] = {}
    faces_before, vertices_before = len(mesh.faces), len(mesh.vertices)
    components_found: int | None = None
    dropped = passes = 0
    # process=False: every change below is explicit (and timed), none done behind our back by trimesh
    current = trimesh.Trimesh(np.array(mesh.vertices), np.array(mesh.faces), process=False)

    with _timed(seconds, "repair"):
        current = repair(current)
    with _timed(seconds, "floaters"):
        if options.remove_floaters and len(current.faces):
            current, components_found, dropped = remove_floaters(current)
    with _timed(seconds, "decimation"):
        if options.max_faces and len(current.faces) > options.max_faces:
            current, passes = reduce_faces(current, options.max_faces)
    with _timed(seconds, "normals"):
        # after decimation: on at most max_faces faces, and decimation keeps the winding it is given
        if len(current.faces):
            trimesh.repair.fix_normals(current, multibody=True)

    report = CleanupReport(
        faces_before=faces_before,
        vertices_before=vertices_before,
        faces_after=len(current.faces),
        vertices_after=len(current.vertices),
        components_found=components_found,
        components_dropped=dropped,
        decimation_passes=passes,
        seconds=seconds,
    )
    return current, report


def repair(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Merge coincident vertices, then drop degenerate and duplicate faces and unreferenced vertices (in place)."""
    if not len(mesh.faces):
        return trimesh.Trimesh()
    # merging first turns faces with coincident corners into faces with a repeated index, caught below
    mesh.merge_vertices()
    faces = mesh.faces
    distinct = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    keep = distinct & mesh.nondegenerate_faces(height=DEGENERATE_HEIGHT) & mesh.unique_faces()
    if not keep.all():
        mesh.update_faces(keep)
    mesh.remove_unreferenced_vertices()
    return mesh


def remove_floaters(mesh: trimesh.Trimesh) -> tuple[trimesh.Trimesh, int, int]:
    """Drop pieces smaller than :data:`FLOATER_AREA_FRACTION` of the largest; -> (mesh, found, dropped).

    Pieces are faces connected through shared edges (pieces touching at a single vertex count apart). The
    largest piece is always kept.
    """
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    areas = np.bincount(labels, weights=mesh.area_faces)
    keep = areas >= FLOATER_AREA_FRACTION * areas.max()
    keep[np.argmax(areas)] = True
    dropped = int((~keep).sum())
    if dropped:
        mesh.update_faces(keep[labels])
        mesh.remove_unreferenced_vertices()
    return mesh, len(areas), dropped


def reduce_faces(mesh: trimesh.Trimesh, max_faces: int) -> tuple[trimesh.Trimesh, int]:
    """Quadric decimation to at most ``max_faces`` faces, repaired after each pass; -> (mesh, passes).

    A pass normally lands on its target. Should one end over budget, the next aims lower; should one stall
    (heavily non-manifold input, which marching cubes does not make), vertex clustering finishes the job.
    """
    passes = 0
    while len(mesh.faces) > max_faces and passes < MAX_DECIMATION_PASSES:
        before = len(mesh.faces)
        target = int(max_faces * (1.0 - DECIMATION_MARGIN * passes))
        vertices, faces = fast_simplification.simplify(
            mesh.vertices, mesh.faces, target_count=target, agg=DECIMATION_AGGRESSION
        )
        # collapses can leave slivers and faces folded onto each other: repair before counting
        mesh = repair(trimesh.Trimesh(vertices, faces, process=False))
        passes += 1
        if before - len(mesh.faces) < (before - target) / 2:
            break  # less than half the way: another pass of the same will not get there
    if len(mesh.faces) > max_faces:
        logger.warning("decimation stalled at %d faces (budget %d): clustering vertices", len(mesh.faces), max_faces)
        mesh = cluster_vertices(mesh, max_faces)
    return mesh, passes


def cluster_vertices(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    """Crude but certain reduction: merge the vertices in each cell of a grid made coarser until in budget.

    Each cluster moves to the mean of its vertices, so the mesh stays in its frame. Once a cell spans the
    whole mesh at most 8 clusters are left, so the loop ends for any budget of 56 faces or more.
    """
    cell = mesh.scale / CLUSTER_START_CELLS
    while len(mesh.faces) > max_faces:
        _, cluster, counts = np.unique(
            np.floor(mesh.vertices / cell).astype(np.int64), axis=0, return_inverse=True, return_counts=True
        )
        cluster = cluster.reshape(-1)
        means = np.stack([np.bincount(cluster, weights=mesh.vertices[:, i]) for i in range(3)], axis=1)
        mesh = repair(trimesh.Trimesh(means / counts[:, None], cluster[mesh.faces], process=False))
        cell *= 2.0
    return mesh


@contextmanager
def _timed(seconds: dict[str, float], step: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[step] = time.perf_counter() - start
