"""Mesh clean-up on real trimesh meshes: repair, floaters, decimation to budget, normals, the frame kept."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import trimesh

from deployments.contract import MeshOptions
from deployments.hunyuan3d.surface import extract_surfaces
from deployments.mesh_cleanup import FLOATER_AREA_FRACTION, STEPS, clean_mesh

# What "still close in shape" means after decimation: relative surface area, and the largest move of a
# bounding-box corner as a fraction of the box diagonal.
AREA_TOLERANCE = 0.01
BOUNDS_TOLERANCE = 0.005
BOX_V = 1.01  # the official decoding box half-edge


def sphere(
    subdivisions: int, radius: float = 1.0, center: tuple[float, float, float] = (0.0, 0.0, 0.0)
) -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius).apply_translation(center)


def assert_close_in_shape(before: trimesh.Trimesh, after: trimesh.Trimesh) -> None:
    assert abs(after.area / before.area - 1.0) < AREA_TOLERANCE
    assert np.abs(after.bounds - before.bounds).max() < BOUNDS_TOLERANCE * before.scale


def analytic_grids(resolution: int) -> torch.Tensor:
    """(2, R+1, R+1, R+1) occupancy logits of a torus and a sphere, positive inside, in the official box."""
    x = np.linspace(-BOX_V, BOX_V, resolution + 1, dtype=np.float32)
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    torus = 0.25 - np.sqrt((np.sqrt(X**2 + Z**2) - 0.6) ** 2 + Y**2)
    ball = 0.7 - np.sqrt((X - 0.1) ** 2 + Y**2 + Z**2)
    return torch.from_numpy(np.stack([torus, ball]).astype(np.float32))


# --- floaters ---------------------------------------------------------------------------------------------


def test_clean_mesh_drops_small_floater_and_keeps_large_part():
    body, floater = sphere(3), sphere(2, radius=0.05, center=(2.0, 0.0, 0.0))
    assert floater.area / body.area < FLOATER_AREA_FRACTION
    cleaned, report = clean_mesh(trimesh.util.concatenate([body, floater]), MeshOptions())
    assert (len(cleaned.faces), len(cleaned.vertices)) == (len(body.faces), len(body.vertices))
    assert (report.components_found, report.components_dropped) == (2, 1)
    np.testing.assert_allclose(cleaned.bounds, body.bounds)


def test_clean_mesh_keeps_floater_when_removal_off():
    parts = [sphere(3), sphere(2, radius=0.05, center=(2.0, 0.0, 0.0))]
    cleaned, report = clean_mesh(trimesh.util.concatenate(parts), MeshOptions(remove_floaters=False))
    assert len(cleaned.faces) == sum(len(p.faces) for p in parts)
    assert (report.components_found, report.components_dropped) == (None, 0)
    assert len(cleaned.split(only_watertight=False)) == 2


def test_clean_mesh_keeps_detached_part_above_fraction():
    # a second piece at 4% of the body's area is a real part, not debris
    parts = [sphere(3), sphere(2, radius=0.2, center=(2.0, 0.0, 0.0))]
    cleaned, report = clean_mesh(trimesh.util.concatenate(parts), MeshOptions())
    assert len(cleaned.faces) == sum(len(p.faces) for p in parts)
    assert (report.components_found, report.components_dropped) == (2, 0)


# --- repair -----------------------------------------------------------------------------------------------


def test_clean_mesh_removes_degenerate_and_duplicate_faces():
    base = sphere(2)
    n = len(base.vertices)
    vertices = np.vstack(
        [
            base.vertices,
            base.vertices[base.faces[0]],  # coincident copies of face 0's corners
            [[3.0, 0.0, 0.0], [4.0, 0.0, 0.0], [5.0, 0.0, 0.0]],  # three distinct points on a line
        ]
    )
    extra = [
        base.faces[1],  # exact duplicate
        base.faces[2][[1, 2, 0]],  # duplicate in another rotation
        [n, n + 1, n + 2],  # duplicate of face 0 through the coincident copies
        [0, 0, 1],  # repeated index
        [n + 3, n + 4, n + 5],  # zero area
    ]
    mesh = trimesh.Trimesh(vertices, np.vstack([base.faces, extra]), process=False)
    cleaned, report = clean_mesh(mesh, MeshOptions(max_faces=0))
    assert (len(cleaned.faces), len(cleaned.vertices)) == (len(base.faces), len(base.vertices))
    assert (report.faces_before, report.faces_after) == (len(base.faces) + 5, len(base.faces))
    assert cleaned.is_watertight
    assert cleaned.volume == pytest.approx(base.volume)


def test_clean_mesh_empty_input_comes_back_empty():
    cleaned, report = clean_mesh(trimesh.Trimesh(), MeshOptions())
    assert cleaned.is_empty
    assert (report.faces_after, report.vertices_after, report.decimation_passes) == (0, 0, 0)


def test_clean_mesh_vertices_without_faces_come_back_empty():
    cleaned, report = clean_mesh(trimesh.Trimesh(np.eye(3), np.zeros((0, 3), dtype=np.int64)), MeshOptions())
    assert (len(cleaned.faces), len(cleaned.vertices)) == (0, 0)
    assert report.vertices_before == 3


def test_clean_mesh_single_triangle_kept():
    triangle = trimesh.Trimesh([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0, 1, 2]], process=False)
    cleaned, report = clean_mesh(triangle, MeshOptions())
    np.testing.assert_array_equal(cleaned.faces, [[0, 1, 2]])
    np.testing.assert_array_equal(cleaned.vertices, triangle.vertices)
    assert (report.components_found, report.components_dropped) == (1, 0)


def test_clean_mesh_open_surface_goes_through():
    base = sphere(5)
    keep = base.vertices[base.faces].mean(axis=1)[:, 2] < 0.5  # cut a cap off: no longer watertight
    mesh = trimesh.Trimesh(base.vertices, base.faces[keep])
    cleaned, _ = clean_mesh(mesh, MeshOptions(max_faces=1_000))
    assert 0 < len(cleaned.faces) <= 1_000
    assert not cleaned.is_watertight
    assert cleaned.is_winding_consistent


def test_clean_mesh_leaves_input_unmodified():
    mesh = trimesh.util.concatenate([sphere(6), sphere(1, radius=0.01, center=(2.0, 0.0, 0.0))])
    mesh.invert()
    vertices, faces = mesh.vertices.copy(), mesh.faces.copy()
    clean_mesh(mesh, MeshOptions())
    np.testing.assert_array_equal(mesh.vertices, vertices)
    np.testing.assert_array_equal(mesh.faces, faces)


# --- decimation -------------------------------------------------------------------------------------------


def test_clean_mesh_reduces_to_budget_close_in_shape():
    mesh = sphere(6)
    assert len(mesh.faces) == 81_920
    cleaned, report = clean_mesh(mesh, MeshOptions(max_faces=40_000))
    assert len(cleaned.faces) <= 40_000
    assert report.faces_after == len(cleaned.faces) and report.decimation_passes >= 1
    assert_close_in_shape(mesh, cleaned)
    assert cleaned.is_watertight and cleaned.is_winding_consistent
    assert cleaned.volume > 0


def test_clean_mesh_max_faces_zero_means_no_reduction():
    mesh = sphere(6)
    cleaned, report = clean_mesh(mesh, MeshOptions(max_faces=0))
    assert len(cleaned.faces) == len(mesh.faces)
    assert report.decimation_passes == 0


def test_clean_mesh_under_budget_untouched_by_decimation():
    mesh = sphere(4)
    cleaned, report = clean_mesh(mesh, MeshOptions(max_faces=40_000))
    np.testing.assert_array_equal(cleaned.vertices, mesh.vertices)
    np.testing.assert_array_equal(cleaned.faces, mesh.faces)
    assert report.decimation_passes == 0


def test_clean_mesh_stalled_decimation_still_meets_budget():
    # a random triangle soup (every edge shared by many faces) that quadric collapse cannot reduce far
    rng = np.random.default_rng(0)
    soup = trimesh.Trimesh(rng.random((300, 3)), rng.integers(0, 300, (3_000, 3)), process=False)
    cleaned, _ = clean_mesh(soup, MeshOptions(max_faces=1_000, remove_floaters=False))
    assert 0 < len(cleaned.faces) <= 1_000
    assert (cleaned.bounds[0] >= soup.bounds[0]).all() and (cleaned.bounds[1] <= soup.bounds[1]).all()


# --- normals and frame ------------------------------------------------------------------------------------


def test_clean_mesh_fixes_inverted_winding():
    mesh = sphere(3)
    inverted = mesh.copy()
    inverted.invert()
    assert inverted.volume < 0
    cleaned, _ = clean_mesh(inverted, MeshOptions())
    assert cleaned.volume == pytest.approx(mesh.volume)


def test_clean_mesh_fixes_inconsistent_winding():
    mesh = sphere(3)
    faces = mesh.faces.copy()
    flip = np.random.default_rng(1).random(len(faces)) < 0.3
    faces[flip] = faces[flip][:, ::-1]
    scrambled = trimesh.Trimesh(mesh.vertices, faces, process=False)
    assert not scrambled.is_winding_consistent
    cleaned, _ = clean_mesh(scrambled, MeshOptions())
    assert cleaned.is_winding_consistent
    assert cleaned.volume == pytest.approx(mesh.volume)


def test_clean_mesh_keeps_frame():
    mesh = sphere(6, radius=0.5, center=(0.3, -0.2, 0.1))
    cleaned, _ = clean_mesh(mesh, MeshOptions(max_faces=10_000))
    assert np.abs(cleaned.bounds - mesh.bounds).max() < BOUNDS_TOLERANCE * mesh.scale
    np.testing.assert_allclose(cleaned.center_mass, mesh.center_mass, atol=1e-3)


# --- marching cubes -------------------------------------------------------------------------------------


def test_clean_mesh_marching_cubes_surfaces_within_budget():
    resolution = 128
    meshes = extract_surfaces(analytic_grids(resolution), level=0.0, box_v=BOX_V, resolution=resolution)
    for mesh in meshes:
        assert isinstance(mesh, trimesh.Trimesh) and mesh.is_watertight
        cleaned, report = clean_mesh(mesh, MeshOptions(max_faces=20_000))
        assert report.faces_before > 20_000 >= len(cleaned.faces)
        assert report.components_found == 1 and report.components_dropped == 0
        assert_close_in_shape(mesh, cleaned)
        assert cleaned.is_watertight and cleaned.volume > 0


# --- report ---------------------------------------------------------------------------------------------


def test_cleanup_report_to_dict_has_counts_and_seconds_per_step():
    _, report = clean_mesh(sphere(2), MeshOptions())
    values = report.to_dict()
    assert values["faces_before"] == values["faces_after"] == 320
    assert set(values["seconds"]) == set(STEPS)
    assert all(s >= 0 for s in values["seconds"].values())
    assert report.total_s == pytest.approx(sum(values["seconds"].values()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.faces_after = 0  # type: ignore[misc]
