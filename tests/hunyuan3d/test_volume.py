"""Volume decoders and surface extraction on analytic fields (exact answers known)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deployments.hunyuan3d.surface import EmptySurfaceError, extract_surface, extract_surfaces
from deployments.hunyuan3d.volume import (
    SparseVolume,
    _interpolate,
    decode_dense,
    decode_hierarchical,
    dense_grid_points,
    hierarchy_levels,
    upsample_trilinear,
)

BOX_V = 1.01
CPU = torch.device("cpu")
Field = Callable[[torch.Tensor], torch.Tensor]  # (P, 3) -> (P,) logits, positive inside


def sphere(radius: float, centre: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Field:
    def field(points: torch.Tensor) -> torch.Tensor:
        return 10.0 * (radius - (points - torch.tensor(centre)).norm(dim=-1))

    return field


def torus(major: float = 0.55, minor: float = 0.18) -> Field:
    def field(points: torch.Tensor) -> torch.Tensor:
        ring = torch.stack(((points[:, :2].norm(dim=-1) - major), points[:, 2]), dim=-1)
        return 10.0 * (minor - ring.norm(dim=-1))

    return field


def sphere_with_spike(spike_radius: float = 0.012) -> Field:
    """A ball with a needle along +x about 1.5 voxels thick at R = 256: invisible to every coarse level, so
    only following the surface out of the ball finds it."""

    def field(points: torch.Tensor) -> torch.Tensor:
        ball = 10.0 * (0.45 - points.norm(dim=-1))
        off_axis = points[:, 1:].norm(dim=-1)
        needle = 10.0 * torch.minimum(spike_radius - off_axis, 0.9 - points[:, 0])
        return torch.maximum(ball, needle)

    return field


def bumpy_sphere() -> Field:
    def field(points: torch.Tensor) -> torch.Tensor:
        r = points.norm(dim=-1)
        bumps = 0.04 * torch.sin(9 * points[:, 0]) * torch.sin(11 * points[:, 1]) * torch.sin(7 * points[:, 2])
        return 10.0 * (0.6 + bumps - r)

    return field


class AnalyticDecoder:
    """A :class:`~deployments.hunyuan3d.volume.PointDecoder` over analytic fields (one per sample) that counts
    the points it is asked for."""

    def __init__(self, fields: list[Field]) -> None:
        self.fields = fields
        self.batch_size = len(fields)
        self.points = 0
        self.calls = 0

    def shared(self, points: torch.Tensor) -> torch.Tensor:
        self.points += points.shape[0] * self.batch_size
        self.calls += 1
        return torch.stack([field(points) for field in self.fields])

    def ragged(self, points: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        self.points += points.shape[0]
        self.calls += 1
        out = torch.empty(points.shape[0])
        for b, field in enumerate(self.fields):
            rows = owner == b
            out[rows] = field(points[rows])
        return out


def test_hierarchy_levels_halve_only_while_grids_nest():
    assert hierarchy_levels(256) == [32, 64, 128, 256]
    assert hierarchy_levels(380) == [95, 190, 380]
    assert hierarchy_levels(255) == [255]
    assert hierarchy_levels(64) == [32, 64]
    assert hierarchy_levels(48) == [48]
    assert hierarchy_levels(256, min_resolution=63) == [64, 128, 256]


def test_dense_grid_points_use_ij_indexing_over_the_box():
    points = dense_grid_points(4, 1.0).view(5, 5, 5, 3)
    assert points[0, 0, 0].tolist() == [-1.0, -1.0, -1.0]
    assert points[1, 0, 0].tolist() == [-0.5, -1.0, -1.0]  # x varies slowest
    assert points[0, 0, 1].tolist() == [-1.0, -1.0, -0.5]


def test_trilinear_upsampling_is_interpolation_and_matches_the_pointwise_prediction_bit_for_bit():
    torch.manual_seed(0)
    coarse = torch.randn(9, 7, 8) * 10
    fine = upsample_trilinear(coarse)
    reference = F.interpolate(coarse[None, None], size=fine.shape, mode="trilinear", align_corners=True)[0, 0]
    torch.testing.assert_close(fine, reference, atol=1e-5, rtol=0)
    # the refinement predicts signs point by point; the surface stage rebuilds the grid: they must agree exactly
    xyz = torch.stack([torch.randint(0, s, (2000,)) for s in fine.shape], dim=1)
    cell = torch.minimum(xyz // 2, torch.tensor(coarse.shape) - 2)
    corners = torch.stack(
        [coarse[cell[:, 0] + dx, cell[:, 1] + dy, cell[:, 2] + dz] for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)],
        dim=1,
    )
    assert torch.equal(_interpolate(corners, xyz - 2 * cell), fine[xyz[:, 0], xyz[:, 1], xyz[:, 2]])


def _labels_and_meshes_match(fields: list[Field], resolution: int) -> AnalyticDecoder:
    dense = decode_dense(AnalyticDecoder(fields), resolution, BOX_V, 200_000, CPU)
    counting = AnalyticDecoder(fields)
    sparse = decode_hierarchical(counting, resolution, BOX_V, 200_000, 0.0, CPU)
    for b in range(len(fields)):
        # exact wherever the sign can change: every grid point has the dense label ...
        assert torch.equal(dense[b].dense() > 0, sparse[b].dense() > 0)
        # ... and marching cubes gives the dense mesh
        mesh_dense = extract_surface(dense[b], 0.0, BOX_V, resolution)
        mesh_sparse = extract_surface(sparse[b], 0.0, BOX_V, resolution)
        assert np.array_equal(mesh_dense.faces, mesh_sparse.faces)
        np.testing.assert_allclose(mesh_dense.vertices, mesh_sparse.vertices, atol=1e-5)
    return counting


@pytest.mark.parametrize("resolution", [128, 256])
def test_hierarchical_decoding_matches_dense_on_a_batch_of_shapes(resolution):
    fields = [sphere(0.5), sphere(0.7, (0.1, -0.05, 0.0)), torus(), bumpy_sphere()]
    counting = _labels_and_meshes_match(fields, resolution)
    # and it decoded a small fraction of the dense grid
    assert counting.points < 0.12 * len(fields) * (resolution + 1) ** 3


def test_hierarchical_decoding_follows_a_surface_the_coarse_levels_cannot_see():
    counting = _labels_and_meshes_match([sphere_with_spike()], 256)
    # the needle was found by growing out of the ball: more rounds than the one seed pass per level
    assert counting.calls > len(hierarchy_levels(256))


def test_a_sample_decodes_the_same_alone_and_in_a_batch():
    alone = decode_hierarchical(AnalyticDecoder([torus()]), 128, BOX_V, 50_000, 0.0, CPU)[0]
    batched = decode_hierarchical(AnalyticDecoder([sphere(0.3), torus(), sphere(0.8)]), 128, BOX_V, 50_000, 0.0, CPU)
    assert torch.equal(alone.indices, batched[1].indices)
    assert torch.equal(alone.values, batched[1].values)
    assert torch.equal(alone.base, batched[1].base)


def test_sparse_volume_regions_are_cuts_of_the_whole_grid():
    volume = decode_hierarchical(AnalyticDecoder([torus()]), 128, BOX_V, 50_000, 0.0, CPU)[0]
    whole = volume.dense()
    low, high = volume.decoded_box() or ((0, 0, 0), (129, 129, 129))
    region, decoded = volume.region(low, high)
    box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    assert torch.equal(region, whole[box])
    assert decoded is not None and int(decoded.sum()) == volume.indices.numel()
    # the band is what leaves the device: a small part of the dense grid
    assert volume.indices.numel() + volume.base.numel() < 0.15 * whole.numel()


def test_extract_surface_of_a_sphere_has_the_right_area_and_frame():
    resolution = 96
    volume = decode_dense(AnalyticDecoder([sphere(0.7)]), resolution, BOX_V, 100_000, CPU)[0]
    mesh = extract_surface(volume, 0.0, BOX_V, resolution)
    assert mesh.is_watertight
    assert mesh.area == pytest.approx(4 * math.pi * 0.7**2 * (resolution / (resolution + 1)) ** 2, rel=0.02)
    # outward normals: the official winding gives a positive volume
    assert mesh.volume > 0


def test_extract_surfaces_runs_samples_in_parallel_with_the_same_meshes():
    volumes = decode_hierarchical(
        AnalyticDecoder([sphere(0.5), torus(), bumpy_sphere()]), 128, BOX_V, 100_000, 0.0, CPU
    )
    sequential = extract_surfaces(volumes, 0.0, BOX_V, 128, workers=1)
    parallel = extract_surfaces(volumes, 0.0, BOX_V, 128, workers=3)
    for one, other in zip(sequential, parallel, strict=True):
        assert not isinstance(one, Exception) and not isinstance(other, Exception)
        assert np.array_equal(one.faces, other.faces) and np.array_equal(one.vertices, other.vertices)


def test_extract_surface_without_a_crossing_raises_a_clear_error():
    with pytest.raises(EmptySurfaceError, match="never cross the level"):
        extract_surface(torch.ones(9, 9, 9), 0.0, BOX_V, 8)
    # a sparse volume whose field never crosses the level: nothing decoded beyond the coarse grid
    empty = decode_hierarchical(AnalyticDecoder([sphere(-1.0)]), 128, BOX_V, 100_000, 0.0, CPU)[0]
    assert isinstance(empty, SparseVolume) and empty.indices.numel() == 0
    with pytest.raises(EmptySurfaceError, match="never cross the level"):
        extract_surface(empty, 0.0, BOX_V, 128)


def test_extract_surfaces_keeps_each_samples_error_in_its_slot():
    volumes = decode_hierarchical(AnalyticDecoder([sphere(0.5), sphere(-1.0)]), 64, BOX_V, 100_000, 0.0, CPU)
    meshes = extract_surfaces(volumes, 0.0, BOX_V, 64, return_exceptions=True)
    assert not isinstance(meshes[0], Exception) and isinstance(meshes[1], EmptySurfaceError)
    with pytest.raises(EmptySurfaceError):
        extract_surfaces(volumes, 0.0, BOX_V, 64)


def test_extract_surface_hands_the_box_to_another_marching_cubes_and_gets_the_same_mesh():
    """The hook device marching cubes uses: the box's volume (no mask) goes to the given function."""
    from skimage import measure

    volume = decode_hierarchical(AnalyticDecoder([torus()]), 128, BOX_V, 100_000, 0.0, CPU)[0]
    seen: list[tuple[int, ...]] = []

    def skimage_without_mask(grid: torch.Tensor, level: float) -> tuple[np.ndarray, np.ndarray]:
        seen.append(tuple(grid.shape))
        vertices, faces, _, _ = measure.marching_cubes(grid.numpy(), level, method="lewiner")
        return vertices, faces

    mesh = extract_surface(volume, 0.0, BOX_V, 128, marching_cubes=skimage_without_mask)
    reference = extract_surface(volume, 0.0, BOX_V, 128)
    low, high = volume.decoded_box() or ((0, 0, 0), (129, 129, 129))
    assert seen == [tuple(b - a for a, b in zip(low, high, strict=True))]  # the decoded box, not the grid
    assert np.array_equal(mesh.faces, reference.faces)
    np.testing.assert_allclose(mesh.vertices, reference.vertices, atol=1e-6)
