"""A stand-in for ShapePipeline where an in-process test must control time or the decoded volumes.

The GPU section sleeps and returns analytic sphere logits (no network); the CPU section sleeps and then
runs the real marching cubes. Image checks use the real preprocessing. Tests with the real tiny model use
the real ShapePipeline instead.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import trimesh
from PIL import Image

from deployments.hunyuan3d import GenerationParams, StageTimings
from deployments.hunyuan3d.config import ImageProcessorConfig
from deployments.hunyuan3d.image_processing import ImageProcessor
from deployments.hunyuan3d.surface import extract_surfaces
from deployments.hunyuan3d.volume import dense_grid_points


class SyntheticPipeline:
    def __init__(self, gpu_s: float = 0.0, cpu_s: float = 0.0, empty_seeds: Sequence[int] = ()) -> None:
        self.device = torch.device("cpu")
        self.image_processor = ImageProcessor(ImageProcessorConfig(size=64))
        self.gpu_s, self.cpu_s, self.empty_seeds = gpu_s, cpu_s, set(empty_seeds)
        self.gpu_batches: list[list[int]] = []

    def generate_volumes(
        self, images: Sequence[Image.Image], seeds: Sequence[int], params: GenerationParams,
        timings: StageTimings | None = None,
    ) -> torch.Tensor:
        timings = timings or StageTimings()
        with timings.stage("diffusion"):
            self.gpu_batches.append(list(seeds))
            time.sleep(self.gpu_s)
        with timings.stage("volume_decoding"):
            r = params.octree_resolution
            radius = dense_grid_points(r, params.box_v).norm(dim=-1).reshape(r + 1, r + 1, r + 1)
            grids = [(-torch.ones_like(radius)) if s in self.empty_seeds else 0.5 - radius for s in seeds]
            return torch.stack(grids)

    def extract_surfaces(
        self, grids: torch.Tensor, params: GenerationParams, timings: StageTimings | None = None,
        return_exceptions: bool = False,
    ) -> list[trimesh.Trimesh | Exception]:
        timings = timings or StageTimings()
        with timings.stage("surface_extraction"):
            time.sleep(self.cpu_s)
            return extract_surfaces(grids, params.mc_level, params.box_v, params.octree_resolution, return_exceptions)
