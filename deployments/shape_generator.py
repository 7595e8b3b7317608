"""ShapeGenerator: the Ray Serve deployment that turns images into meshes, batching concurrent jobs.

How the ingress calls it (``handle`` is the ``DeploymentHandle`` bound in the application builder)::

    outcome = await handle.generate.remote(GenerationRequest(image=png_bytes, seed=7, params={...}))
    if isinstance(outcome, GenerationError):   # RETURNED, never raised, for per-request failures
        job failed with outcome.code (an ErrorCode: invalid_image, out_of_memory, empty_surface, ...),
        outcome.message and outcome.retryable
    else:
        outcome.glb (the mesh as GLB bytes), outcome.stats (vertices, faces, area, bounds, watertight)

The types are in ``deployments/contract.py``, shared with the job worker.

``generate`` raises only for a caller bug (a non-``GenerationRequest`` argument) or when the replica itself
fails; Ray then raises it at the caller as usual.

Inside the replica: normal requests pass an admission gate of ``max_batch_size * max_concurrent_batches``
slots, then ``@serve.batch`` collects up to ``max_batch_size`` of them for the engine. Serve forms batches
eagerly and the caller's router retries a full replica with a backoff, so the gate (with
``max_ongoing_requests`` one batch larger, see configs/serve_generator.yaml) keeps the next batch waiting
inside the replica: when a batch finishes, a whole one enters at once. Critical requests
skip the gate and the batch window and wait only for the GPU pass in progress. All the work is in
``engine.py``; this class wires config, Serve batching and stats.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
from ray import serve
from ray.serve import Application

from .background import make_remover
from .contract import GenerationRequest, Outcome
from .engine import GenerationEngine, Queued
from .generator_config import BatchingConfig, GeneratorConfig
from .hunyuan3d import ShapePipeline
from .image_input import warmup_image
from .metrics import (
    GeneratorMetrics,
    live_object_counts,
    process_rss_bytes,
    release_free_memory,
    traced_python_bytes,
)
from .paths import resolve_path
from .scheduling import CRITICAL, Slots
from .vram import Sizing, VramTable, size_batches

logger = logging.getLogger("ray.serve")

# Serve may prepare this many batches at once (decode, then wait for the GPU lock). It is not the
# configurable max_concurrent_batches: a Serve batch ends with its GPU pass, and the engine's own
# resizable slots bound batches in flight including their surface extraction.
SERVE_BATCHES_PREPARING = 2
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def load_pipeline(config: GeneratorConfig) -> ShapePipeline:
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = _DTYPES.get(config.dtype)  # None ("auto"): fp16 on CUDA, fp32 on CPU
    if config.random_weights:
        path = resolve_path(config.model)
        source = str(path) if path.exists() else config.model  # else a variant name
        return ShapePipeline.from_config(
            source,
            seed=config.weights_seed,
            device=device,
            dtype=dtype,
            acceleration=config.acceleration,
            position_interpolation=config.position_embedding_interpolation,
        )
    return ShapePipeline.from_pretrained(
        resolve_path(config.model),
        device=device,
        dtype=dtype,
        acceleration=config.acceleration,
        vae=resolve_path(config.vae) if config.vae else None,
        position_interpolation=config.position_embedding_interpolation,
    )


@serve.deployment(
    # = max_batch_size (4) * (max_concurrent_batches (2) + 1 batch waiting at the gate) + 2 for critical
    # requests; configs/serve_generator.yaml explains it and sets it together with the batch settings
    max_ongoing_requests=14,
    ray_actor_options={"num_cpus": 1},
)
class ShapeGenerator:
    def __init__(self, config: GeneratorConfig | dict[str, Any] | None = None) -> None:
        # 1. what this replica is: model, device, threads
        self.config = GeneratorConfig.model_validate(config or {})
        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        self.pipeline = load_pipeline(self.config)
        self.metrics = GeneratorMetrics()
        background = self.config.background
        self.engine = GenerationEngine(
            self.pipeline,
            self.metrics,
            remover=make_remover(background),
            min_foreground_fraction=background.min_foreground_fraction,
        )
        self.engine.on_oom = self._lower_max_batch_size
        self.table = VramTable.from_yaml(resolve_path(self.config.vram_table))
        self.admission = Slots(1)
        # 2. warm up (first-call allocations, kernel selection) before the first job and before sizing
        self.warmup_params = self.config.generation_params()
        if self.config.warmup:
            started = time.perf_counter()
            self.pipeline.generate_shape_batch([warmup_image()], [0], self.warmup_params)
            logger.info("ShapeGenerator warm-up took %.2f s", time.perf_counter() - started)
        # 3. batch settings: defaults until Serve calls reconfigure with the user_config (it does not when
        #    the deployment has none)
        defaults = BatchingConfig()
        self._apply(defaults, self._size(defaults, measure=None))

    async def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Apply a new ``BatchingConfig``, live: the next batch uses it, queued requests are kept."""
        batching = BatchingConfig.model_validate(user_config or {})
        if batching.max_batch_size == "auto" and self.pipeline.device.type == "cuda":
            # measuring runs GPU passes: take the GPU like a critical job, between two live passes
            async with self.engine.gpu.hold(CRITICAL):
                sizing = await asyncio.to_thread(self._size, batching, self._measure_peak)
        else:
            sizing = self._size(batching, measure=None)
        self._apply(batching, sizing)
        logger.info(
            "ShapeGenerator batching: max_batch_size=%d (%s: %s), batch_wait_timeout_s=%s, max_concurrent_batches=%d",
            sizing.batch_size,
            sizing.source,
            sizing.detail,
            batching.batch_wait_timeout_s,
            batching.max_concurrent_batches,
        )

    async def generate(self, request: GenerationRequest) -> Outcome:
        """One mesh, or the ``GenerationError`` of this request (returned, not raised)."""
        if not isinstance(request, GenerationRequest):
            raise TypeError(f"generate() takes a GenerationRequest, got {type(request).__name__}")
        queued = Queued(request, time.monotonic())
        if request.priority == "critical":
            return await self.engine.run_critical(queued)
        async with self.admission.slot():
            result = await self._start_batch(queued)
            return await result

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05, max_concurrent_batches=SERVE_BATCHES_PREPARING)
    async def _start_batch(self, queued: list[Queued]) -> list[asyncio.Future[Outcome]]:
        # Returns once the GPU passes are done, with one future per request; surface extraction finishes
        # them in the background while the next batch takes the GPU.
        return await self.engine.start_batch(queued)

    async def stats(self, collect_garbage: bool = False) -> dict[str, Any]:
        """Batch settings, recent GPU passes, what runs now and memory of this replica (for tests,
        benchmarks, debugging). ``collect_garbage``: collect and trim the heap first, and count live
        objects by kind (a fraction of a second)."""
        live_objects = None
        if collect_garbage:
            release_free_memory()
            live_objects = live_object_counts()
        device = self.pipeline.device
        return {
            "pid": os.getpid(),
            "torch_threads": torch.get_num_threads(),
            "max_batch_size": self.max_batch_size,
            "sizing": asdict(self.sizing),
            "batching": self.batching.model_dump(),
            "admission_slots": self.admission.size,
            "oom_splits": self.engine.oom_splits_total,
            "passes": self.engine.history(),
            "gpu_busy": self.engine.gpu.locked,
            "gpu_waiting": self.engine.gpu.waiting,
            "live_objects": live_objects,
            "traced_python_bytes": traced_python_bytes(),
            "rss_bytes": process_rss_bytes(),
            "cuda_allocated_bytes": torch.cuda.memory_allocated(device) if device.type == "cuda" else None,
            "cuda_peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        }

    async def trace_python_memory(self, on: bool) -> None:
        """Start (or stop) ``tracemalloc`` in this replica, for exact heap readings in ``stats()``."""
        if on and not tracemalloc.is_tracing():
            tracemalloc.start()
        elif not on:
            tracemalloc.stop()

    # --- internals --------------------------------------------------------------------------------------

    def _size(self, batching: BatchingConfig, measure: Callable[[int], int] | None) -> Sizing:
        return size_batches(
            batching,
            self.pipeline.device,
            self.table,
            self.config.variant_name(),
            self.warmup_params.octree_resolution,
            measure,
        )

    def _apply(self, batching: BatchingConfig, sizing: Sizing) -> None:
        self.batching, self.sizing = batching, sizing
        self.engine.inject_oom_above = batching.inject_oom_above_batch_size
        self.engine.batch_slots.resize(batching.max_concurrent_batches)
        self._start_batch.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)  # type: ignore[attr-defined]  # added by @serve.batch
        self._set_max_batch_size(sizing.batch_size)

    def _set_max_batch_size(self, size: int) -> None:
        self.max_batch_size = size
        self._start_batch.set_max_batch_size(size)  # type: ignore[attr-defined]  # added by @serve.batch
        self.admission.resize(size * self.batching.max_concurrent_batches)
        self.metrics.set_max_batch_size(size)

    def _lower_max_batch_size(self, succeeded: int) -> None:
        if succeeded < self.max_batch_size:
            logger.warning(
                "ShapeGenerator: out of memory, max_batch_size %d -> %d until the next reconfigure",
                self.max_batch_size,
                succeeded,
            )
            self._set_max_batch_size(succeeded)

    def _measure_peak(self, size: int) -> int:
        """One GPU section at ``size`` warm-up images; its peak reserved memory (what the allocator holds)."""
        device = self.pipeline.device
        torch.cuda.reset_peak_memory_stats(device)
        pixels = self.pipeline.preprocess([warmup_image()] * size)
        self.pipeline.generate_volumes(pixels, list(range(size)), self.warmup_params)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_reserved(device)


def build_app(args: GeneratorConfig | dict[str, Any]) -> Application:
    """Application builder named in configs/serve_generator.yaml (``import_path``).

    Validates ``args`` here, so a bad config fails ``serve run`` / ``serve deploy`` before any replica
    starts (Serve's own pydantic conversion does not see through postponed annotations).
    """
    return ShapeGenerator.bind(GeneratorConfig.model_validate(args))  # type: ignore[attr-defined]  # a Deployment after @serve.deployment
