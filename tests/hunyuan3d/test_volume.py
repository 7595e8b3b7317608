"""Volume decoders and surface extraction on analytic fields (exact answers known)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deployments.hunyuan3d.surface import EmptySurfaceError, extract_surface
from deployments.hunyuan3d.volume import (
    decode_dense,
    decode_hierarchical,
    dense_grid_points,
    hierarchy_levels,
    near_surface_mask,
)

RADII = torch.tensor([0.5, 0.7])  # one sphere per batch sample


def sphere_logits(points: torch.Tensor) -> torch.Tensor:
    """Occupancy-like logits, positive inside: scaled signed distance to sphere b, (1|B, P, 3) -> (B, P)."""
    points = points.expand(len(RADII), -1, -1)
    return 10.0 * (RADII[:, None] - points.norm(dim=-1))


def test_hierarchy_levels_halve_only_while_grids_nest():
    assert hierarchy_levels(256) == [64, 128, 256]
    assert hierarchy_levels(380) == [95, 190, 380]
    assert hierarchy_levels(255) == [255]
    assert hierarchy_levels(64) == [64]


def test_dense_grid_points_use_ij_indexing_over_the_box():
    points = dense_grid_points(4, 1.0).view(5, 5, 5, 3)
    assert points[0, 0, 0].tolist() == [-1.0, -1.0, -1.0]
    assert points[1, 0, 0].tolist() == [-0.5, -1.0, -1.0]  # x varies slowest
    assert points[0, 0, 1].tolist() == [-1.0, -1.0, -0.5]


def test_near_surface_mask_marks_sign_changes_only():
    logits = torch.full((1, 5, 5, 5), -5.0)
    logits[0, 2, 2, 2] = 5.0
    mask = near_surface_mask(logits, 0.0)
    assert mask[0, 2, 2, 2] and mask[0, 1, 2, 2] and mask[0, 2, 2, 3]
    assert not mask[0, 1, 1, 2]  # diagonal neighbours are not 6-neighbours
    assert int(mask.sum()) == 7


@pytest.mark.parametrize("resolution", [128, 256])
def test_hierarchical_decoding_matches_dense_on_spheres(resolution):
    dense = decode_dense(sphere_logits, 2, resolution, 1.01, 50_000, torch.device("cpu"))
    calls: list[int] = []

    def counting(points: torch.Tensor) -> torch.Tensor:
        calls.append(points.shape[1])
        return sphere_logits(points)

    hierarchical = decode_hierarchical(counting, 2, resolution, 1.01, 50_000, 0.0, torch.device("cpu"))
    # exact wherever the sign can change, so the surfaces are identical
    assert torch.equal(dense > 0, hierarchical > 0)
    for b in range(2):
        mesh_dense = extract_surface(dense[b], 0.0, 1.01, resolution)
        mesh_hier = extract_surface(hierarchical[b], 0.0, 1.01, resolution)
        assert len(mesh_dense.vertices) == len(mesh_hier.vertices)
        np.testing.assert_allclose(mesh_dense.vertices, mesh_hier.vertices, atol=1e-5)
    # and it decoded far fewer points than the dense grid
    assert sum(calls) < 0.35 * (resolution + 1) ** 3


def test_extract_surface_of_a_sphere_has_the_right_area_and_frame():
    resolution, box_v = 96, 1.01
    grid = decode_dense(sphere_logits, 2, resolution, box_v, 100_000, torch.device("cpu"))
    mesh = extract_surface(grid[1], 0.0, box_v, resolution)
    assert mesh.is_watertight
    assert mesh.area == pytest.approx(4 * math.pi * 0.7**2 * (resolution / (resolution + 1)) ** 2, rel=0.02)
    # outward normals: the official winding gives a positive volume
    assert mesh.volume > 0


def test_extract_surface_without_a_crossing_raises_a_clear_error():
    with pytest.raises(EmptySurfaceError, match="never cross the level"):
        extract_surface(torch.ones(9, 9, 9), 0.0, 1.01, 8)
