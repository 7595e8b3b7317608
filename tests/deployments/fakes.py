"""A stand-in for ShapePipeline where an in-process test must control time or the decoded volumes.

The GPU section sleeps and returns analytic sphere logits (no network); the CPU section sleeps (or waits
for a number of GPU passes to have started, so an overlap test does not depend on timing) and then runs the
real marching cubes. Image checks use the real preprocessing. Tests with the real tiny model use the real
ShapePipeline instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import torch
import trimesh

from deployments.hunyuan3d import GenerationParams, StageTimings
from deployments.hunyuan3d.config import ImageProcessorConfig
from deployments.hunyuan3d.image_processing import ImageProcessor
from deployments.hunyuan3d.surface import extract_surfaces
from deployments.hunyuan3d.volume import dense_grid_points


class SyntheticPipeline:
    def __init__(
        self,
        gpu_s: float = 0.0,
        cpu_s: float = 0.0,
        empty_seeds: Sequence[int] = (),
        cpu_holds_until_gpu_passes: int = 0,
    ) -> None:
        self.device = torch.device("cpu")
        self.name = "synthetic"
        self.view_names = ("front",)  # a single-image model
        self.image_processor = ImageProcessor(ImageProcessorConfig(size=64))
        self.gpu_s, self.cpu_s, self.empty_seeds = gpu_s, cpu_s, set(empty_seeds)
        self.cpu_holds_until_gpu_passes = cpu_holds_until_gpu_passes
        self.gpu_batches: list[list[int]] = []
        self._gpu_started = threading.Condition()

    def generate_volumes(
        self,
        pixels: torch.Tensor,
        seeds: Sequence[int],
        params: GenerationParams,
        timings: StageTimings | None = None,
    ) -> torch.Tensor:
        assert pixels.shape[0] == len(seeds)
        timings = timings or StageTimings()
        with timings.stage("diffusion"):
            with self._gpu_started:
                self.gpu_batches.append(list(seeds))
                self._gpu_started.notify_all()
            time.sleep(self.gpu_s)
        with timings.stage("volume_decoding"):
            r = params.octree_resolution
            radius = dense_grid_points(r, params.box_v).norm(dim=-1).reshape(r + 1, r + 1, r + 1)
            grids = [(-torch.ones_like(radius)) if s in self.empty_seeds else 0.5 - radius for s in seeds]
            return torch.stack(grids)

    def extract_surfaces(
        self,
        grids: torch.Tensor,
        params: GenerationParams,
        timings: StageTimings | None = None,
        return_exceptions: bool = False,
    ) -> list[trimesh.Trimesh | Exception]:
        timings = timings or StageTimings()
        with timings.stage("surface_extraction"):
            time.sleep(self.cpu_s)
            with self._gpu_started:
                wanted = self.cpu_holds_until_gpu_passes
                if not self._gpu_started.wait_for(lambda: len(self.gpu_batches) >= wanted, timeout=30):
                    raise TimeoutError(f"fewer than {wanted} GPU passes started within 30 s")
            return extract_surfaces(grids, params.mc_level, params.box_v, params.octree_resolution, return_exceptions)
