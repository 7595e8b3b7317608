"""Volume decoding: occupancy logits on the (R+1)^3 grid for a whole batch of token sets at once.

``dense`` evaluates every grid point. ``hierarchical`` (FlashVDM-style coarse-to-fine) evaluates a coarse
grid densely, then at each doubling only the points near the surface found one level up; every other
point takes the trilinear upsampling of the coarser level, which has the right sign there (all its
coarse neighbours agree), so marching cubes sees no holes or NaNs. Unlike the official decoders, both
work on B samples per geometry-decoder call (points padded to the batch's largest set).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# logits(points (1|B, P, 3)) -> (B, P); the geometry decoder with the batch's keys/values bound
PointDecoder = Callable[[Tensor], Tensor]

MIN_COARSE_RESOLUTION = 63
# Points whose |logit - level| is below this are treated as near the surface (as the official decoder).
NEAR_SURFACE_LOGIT = 0.95


def grid_axis(resolution: int, box_v: float) -> np.ndarray:
    return np.linspace(-box_v, box_v, resolution + 1, dtype=np.float32)


def dense_grid_points(resolution: int, box_v: float) -> Tensor:
    """((R+1)^3, 3) float32 points, ``indexing="ij"`` (x slowest), as the official grid."""
    axis = grid_axis(resolution, box_v)
    xs, ys, zs = np.meshgrid(axis, axis, axis, indexing="ij")
    return torch.from_numpy(np.stack((xs, ys, zs), axis=-1).reshape(-1, 3))


def decode_dense(
    decode: PointDecoder, batch_size: int, resolution: int, box_v: float, num_chunks: int, device: torch.device
) -> Tensor:
    """(B, R+1, R+1, R+1) float32 logits."""
    points = dense_grid_points(resolution, box_v).to(device)
    logits = torch.cat(
        [decode(points[None, start : start + num_chunks]).float() for start in range(0, points.shape[0], num_chunks)],
        dim=1,
    )  # (B, P)
    side = resolution + 1
    return logits.view(batch_size, side, side, side)


def hierarchy_levels(resolution: int, min_resolution: int = MIN_COARSE_RESOLUTION) -> list[int]:
    """Resolutions coarse to fine. Only exact halvings nest (fine point 2i == coarse point i), so an odd
    resolution (or one too small to halve) is decoded densely at a single level."""
    levels = [resolution]
    while levels[0] % 2 == 0 and levels[0] // 2 >= min_resolution:
        levels.insert(0, levels[0] // 2)
    return levels


def near_surface_mask(logits: Tensor, level: float) -> Tensor:
    """(B, D, D, D) -> bool mask of points whose sign differs from a 6-neighbour or that sit near the level."""
    inside = logits > level
    padded = F.pad(inside[:, None].float(), (1, 1, 1, 1, 1, 1), mode="replicate")[:, 0].bool()
    d = logits.shape[-1]
    crossing = torch.zeros_like(inside)
    for axis in (1, 2, 3):
        for offset in (0, 2):
            neighbour = padded.narrow(axis, offset, d)
            # narrow the other two padded axes back to the interior
            for other in (1, 2, 3):
                if other != axis:
                    neighbour = neighbour.narrow(other, 1, d)
            crossing |= neighbour != inside
    return crossing | ((logits - level).abs() < NEAR_SURFACE_LOGIT)


def dilate(mask: Tensor, times: int = 1) -> Tensor:
    """3x3x3 binary dilation of a (B, D, D, D) bool mask."""
    x = mask[:, None].float()
    for _ in range(times):
        x = F.max_pool3d(x, kernel_size=3, stride=1, padding=1)
    return x[:, 0] > 0


def decode_hierarchical(
    decode: PointDecoder,
    batch_size: int,
    resolution: int,
    box_v: float,
    num_chunks: int,
    level: float,
    device: torch.device,
) -> Tensor:
    """(B, R+1, R+1, R+1) float32 logits, exact at every point near the surface."""
    levels = hierarchy_levels(resolution)
    grid = decode_dense(decode, batch_size, levels[0], box_v, num_chunks, device)
    for index, fine in enumerate(levels[1:], start=1):
        last = index == len(levels) - 1
        # 1. which fine points to decode: around coarse points near the surface (a wider band before the
        #    last level, so a surface that moves by up to a coarse cell is still caught)
        coarse_mask = near_surface_mask(grid, level)
        if not last:
            coarse_mask = dilate(coarse_mask)
        side = fine + 1
        fine_mask = torch.zeros(batch_size, side, side, side, dtype=torch.bool, device=device)
        fine_mask[:, ::2, ::2, ::2] = coarse_mask
        fine_mask = dilate(fine_mask, times=1 if not last else 2)
        # 2. every other point: the coarse level upsampled (grids nest, hence align_corners)
        grid = F.interpolate(grid[:, None], size=(side, side, side), mode="trilinear", align_corners=True)[:, 0]
        # 3. decode the selected points of all samples together, padded to the largest set
        flat = grid.reshape(batch_size, -1)
        flat_mask = fine_mask.reshape(batch_size, -1)
        counts = flat_mask.sum(dim=1)
        padded_index = _padded_indices(flat_mask, int(counts.max()))
        points = _index_to_points(padded_index, fine, box_v, device)  # (B, Pmax, 3)
        logits = torch.cat(
            [decode(points[:, s : s + num_chunks]).float() for s in range(0, points.shape[1], num_chunks)], dim=1
        )
        for b in range(batch_size):
            n = int(counts[b])
            flat[b, padded_index[b, :n]] = logits[b, :n]
        grid = flat.view(batch_size, side, side, side)
    return grid


def _padded_indices(mask: Tensor, width: int) -> Tensor:
    """(B, N) bool -> (B, width) flat indices of the True entries, each row padded with its first index."""
    rows = []
    for row in mask:
        index = torch.nonzero(row, as_tuple=False)[:, 0]
        if index.numel() == 0:
            index = torch.zeros(1, dtype=torch.long, device=mask.device)
        pad = index[:1].expand(width - index.numel()) if width > index.numel() else index[:0]
        rows.append(torch.cat([index, pad]))
    return torch.stack(rows)


def _index_to_points(flat_index: Tensor, resolution: int, box_v: float, device: torch.device) -> Tensor:
    side = resolution + 1
    axis = torch.from_numpy(grid_axis(resolution, box_v)).to(device)
    i, rem = flat_index // (side * side), flat_index % (side * side)
    j, k = rem // side, rem % side
    return torch.stack((axis[i], axis[j], axis[k]), dim=-1)
