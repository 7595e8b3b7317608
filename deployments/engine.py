"""The replica's work, without Ray: one model copy, one GPU pass at a time, CPU work overlapping it.

A batch goes through three steps:
  1. prepare (worker thread): decode each image (every named view of a multiview job), remove its background
     where its job asks (one remover call for the batch), and run the pipeline's preprocessing on it alone, so
     a bad image fails only its request; the pixels it makes are the ones the GPU pass uses (once per job). A
     job naming views its model does not take fails here, alone;
  2. GPU pass (worker thread, under the GPU lock): one ``generate_volumes`` call per batch key, halved on
     out-of-memory (``run_bisecting``);
  3. CPU pass (worker thread, GPU lock released): marching cubes, each job's mesh clean-up (floaters,
     degenerate faces, face budget) and GLB export with mesh statistics, while the next batch's GPU pass runs.
Critical requests take the same steps alone and jump the queue for the GPU lock. The ``ShapeGenerator``
deployment only adds Serve's batching, config and stats on top.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import trimesh
from PIL import Image
from torch import Tensor

from .background import BackgroundRemover, cut_out
from .batching import Bisection, batch_key, group_positions, run_bisecting
from .contract import (
    CANONICAL_FORMAT,
    FRONT_VIEW,
    ErrorCode,
    GenerationError,
    GenerationRequest,
    GenerationResult,
    MeshStats,
    Outcome,
)
from .hunyuan3d import STAGES, EmptySurfaceError, GenerationParams, ShapePipeline, StageTimings
from .hunyuan3d.multiview import Pixels, cat_pixels
from .image_input import decode_image
from .mesh_cleanup import clean_mesh
from .mesh_io import export_mesh, mesh_stats
from .metrics import GeneratorMetrics
from .scheduling import CRITICAL, NORMAL, PriorityLock, Slots
from .vram import free_cached_memory

logger = logging.getLogger(__name__)

PassPath = Literal["batch", "critical"]
# The stages a pass times: background removal, the pipeline's, then the CPU section's clean-up and export.
PASS_STAGES = ("background_removal", *STAGES, "mesh_cleanup", "export")


@dataclass(frozen=True)
class Queued:
    """A request and when it reached the replica (``time.monotonic``), for its queue wait."""

    request: GenerationRequest
    arrived: float


@dataclass
class PassRecord:
    """One GPU pass, kept in a short history for ``stats()`` and tests (monotonic seconds)."""

    path: PassPath
    size: int
    job_ids: list[str | None]
    waiting_since: float
    gpu_start: float = 0.0
    gpu_end: float = 0.0
    cpu_end: float | None = None
    oom_splits: int = 0


@dataclass
class _Pass:
    """One GPU pass and what it produced, handed from the GPU step to the CPU step."""

    record: PassRecord
    items: list[Queued]
    pixels: list[Pixels]  # per item: one preprocessed (1, 3, S, S) image, or its (1, V, 3, S, S) views
    params: GenerationParams
    timings: StageTimings = field(default_factory=StageTimings)
    bisection: Bisection[Tensor] | None = None
    errors: dict[int, GenerationError] = field(default_factory=dict)  # by index into items

    def fail_all(self, message: str) -> list[GenerationError]:
        return [GenerationError(ErrorCode.INTERNAL_ERROR, message, q.request.job_id) for q in self.items]


class GenerationEngine:
    def __init__(
        self,
        pipeline: ShapePipeline,
        metrics: GeneratorMetrics,
        max_concurrent_batches: int = 2,
        history: int = 1000,
        remover: BackgroundRemover | None = None,
        min_foreground_fraction: float = 0.002,
    ) -> None:
        self.pipeline = pipeline
        self.metrics = metrics
        # None: no background removal at all, whatever a request asks (tests of the scheduling alone)
        self.remover = remover
        self.min_foreground_fraction = min_foreground_fraction
        self.gpu = PriorityLock()  # one GPU pass at a time; critical waiters first
        self.batch_slots = Slots(max_concurrent_batches)  # batch passes in flight, GPU and CPU sections
        self.passes: deque[PassRecord] = deque(maxlen=history)
        self.oom_splits_total = 0
        # Called on the event loop with the largest batch size that succeeded after an OOM (1 if none did).
        self.on_oom: Callable[[int], None] = lambda size: None
        # TEST HOOK (BatchingConfig.inject_oom_above_batch_size): passes larger than this raise OOM.
        self.inject_oom_above: int | None = None
        self._background: set[asyncio.Task[None]] = set()

    # --- public API -------------------------------------------------------------------------------------

    async def start_batch(self, queued: Sequence[Queued]) -> list[asyncio.Future[Outcome]]:
        """Run the GPU passes of a batch; return one future per request, resolved after its CPU pass.

        Returns as soon as the last GPU pass ends, so the caller (Serve's batch loop) can start the next
        batch's GPU work while surfaces are extracted in the background.
        """
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Outcome]] = [loop.create_future() for _ in queued]
        prepared, prepare_timings = await asyncio.to_thread(self._prepare, queued)
        ready = []
        for position, item in enumerate(prepared):
            if isinstance(item, GenerationError):
                self.metrics.record_outcome(item.code.value)
                futures[position].set_result(item)
            else:
                ready.append(position)
        for group in group_positions([batch_key(queued[p].request) for p in ready]):
            positions = [ready[i] for i in group]
            pixels = [prepared[p] for p in positions]  # all preprocessed: errors were set aside above
            job = self._new_pass("batch", [queued[p] for p in positions], pixels, prepare_timings)  # type: ignore[arg-type]
            await self.batch_slots.acquire()
            try:
                await self._gpu_phase(job)
            except BaseException:
                self.batch_slots.release()
                raise
            task = asyncio.create_task(self._finish(job, [futures[p] for p in positions]))
            self._background.add(task)  # keep a reference: the loop holds tasks only weakly
            task.add_done_callback(self._background.discard)
        return futures

    async def run_batch(self, queued: Sequence[Queued]) -> list[Outcome]:
        """``start_batch`` and wait for every result."""
        return list(await asyncio.gather(*await self.start_batch(queued)))

    async def run_critical(self, queued: Queued) -> Outcome:
        """One request alone, ahead of every batch waiting for the GPU; no batch window, no batch slot."""
        [prepared], prepare_timings = await asyncio.to_thread(self._prepare, [queued])
        if isinstance(prepared, GenerationError):
            self.metrics.record_outcome(prepared.code.value)
            return prepared
        job = self._new_pass("critical", [queued], [prepared], prepare_timings)
        await self._gpu_phase(job)
        [outcome] = await self._cpu_phase(job)
        return outcome

    def history(self) -> list[dict[str, object]]:
        return [asdict(record) for record in self.passes]

    # --- steps --------------------------------------------------------------------------------------------

    def _prepare(self, queued: Sequence[Queued]) -> tuple[list[Pixels | GenerationError], dict[str, float]]:
        """Decode, cut out and preprocess each image alone (worker thread); also the seconds per step.

        Alone, so one unusable image (or view) fails only its own request; the pixels are the GPU pass's input.
        """
        timings = StageTimings()
        # per request: its decoded views by name (front first), then its pixels; or its error
        prepared: list[dict[str, Image.Image] | Pixels | GenerationError] = [self._decode(q.request) for q in queued]
        decoded = {i: item for i, item in enumerate(prepared) if isinstance(item, dict)}
        slots = [(i, name) for i, views in decoded.items() for name in views]  # every view of every request
        if self.remover is not None and slots:
            with timings.stage("background_removal"):
                cut = cut_out(
                    [decoded[i][name] for i, name in slots],
                    [queued[i].request.remove_background for i, _ in slots],
                    self.remover,
                    self.min_foreground_fraction,
                )
            for (i, name), outcome in zip(slots, cut, strict=True):
                if prepared[i] is not decoded[i]:
                    continue  # another view of this request already failed it
                if isinstance(outcome, Image.Image):
                    decoded[i][name] = outcome
                else:
                    prepared[i] = _with_job_id(_naming_view(outcome, name, queued[i].request), queued[i])
        with timings.stage("preprocess"):
            for i, item in enumerate(prepared):
                if isinstance(item, dict):
                    prepared[i] = self._preprocess(item, queued[i].request)
        return prepared, timings.seconds  # type: ignore[return-value]

    def _decode(self, request: GenerationRequest) -> dict[str, Image.Image] | GenerationError:
        """Every view of ``request`` decoded, front first; a view its model does not take fails the request."""
        accepted = self.pipeline.view_names
        unsupported = [name for name in request.view_names if name not in accepted]
        if unsupported:
            takes = "only the front view" if len(accepted) == 1 else f"the views {list(accepted)}"
            message = f"model {self.pipeline.name} takes {takes}; this job also sends {unsupported}"
            return GenerationError(ErrorCode.INVALID_REQUEST, message, request.job_id)
        views: dict[str, Image.Image] = {}
        for name in request.view_names:
            data = request.image if name == FRONT_VIEW else request.views[name]
            try:
                views[name] = decode_image(data, request.job_id)
            except GenerationError as exc:
                return _naming_view(exc, name, request)
        return views

    def _preprocess(self, views: dict[str, Image.Image], request: GenerationRequest) -> Pixels | GenerationError:
        try:
            if request.views:  # a multiview job: (1, V, 3, S, S), views in model order
                return self.pipeline.view_processor(views)
            return self.pipeline.image_processor(views[FRONT_VIEW])
        except ValueError as exc:  # EmptyImageError: nothing visible to reconstruct (the view is named)
            return GenerationError(ErrorCode.INVALID_IMAGE, str(exc), request.job_id)

    def _new_pass(
        self, path: PassPath, items: list[Queued], pixels: list[Pixels], prepare_timings: dict[str, float]
    ) -> _Pass:
        record = PassRecord(path, len(items), [q.request.job_id for q in items], waiting_since=time.monotonic())
        job = _Pass(record, items, pixels, items[0].request.params)
        job.timings.seconds.update(prepare_timings)
        return job

    async def _gpu_phase(self, job: _Pass) -> None:
        await self.gpu.acquire(CRITICAL if job.record.path == "critical" else NORMAL)  # cancellable: nothing ran
        # From here the pass runs to its end even if the caller is cancelled: a worker thread cannot be
        # stopped, and the GPU must not start a second pass while this one still runs.
        await asyncio.shield(self._locked_gpu_phase(job))

    async def _locked_gpu_phase(self, job: _Pass) -> None:
        try:
            job.record.gpu_start = time.monotonic()
            try:
                job.bisection = await asyncio.to_thread(self._gpu_pass, job)
            except Exception as exc:  # a bug, not a bad request: fail this pass only, keep the replica
                logger.exception("GPU pass of %d request(s) failed", len(job.items))
                job.errors = dict(enumerate(job.fail_all(f"GPU pass failed: {type(exc).__name__}: {exc}")))
            job.record.gpu_end = time.monotonic()
        finally:
            self.gpu.release()
        self.passes.append(job.record)
        if job.bisection is not None and (job.bisection.splits or job.bisection.out_of_memory):
            self._after_oom(job, job.bisection)

    def _gpu_pass(self, job: _Pass) -> Bisection[Tensor]:
        """One ``generate_volumes`` call for the pass, halved on OOM (worker thread, GPU lock held)."""
        seeds = [q.request.seed for q in job.items]

        def run(positions: list[int]) -> Tensor:
            if self.inject_oom_above is not None and len(positions) > self.inject_oom_above:
                raise torch.cuda.OutOfMemoryError(
                    f"injected by the test hook: batch of {len(positions)} > {self.inject_oom_above}"
                )
            pixels = cat_pixels([job.pixels[i] for i in positions])  # one view set: the batch key holds it
            return self.pipeline.generate_volumes(pixels, [seeds[i] for i in positions], job.params, job.timings)

        return run_bisecting(range(len(job.items)), run, free_cached_memory)

    def _after_oom(self, job: _Pass, bisection: Bisection[Tensor]) -> None:
        job.record.oom_splits = bisection.splits
        self.oom_splits_total += bisection.splits
        self.metrics.record_oom_splits(bisection.splits)
        for index, reason in bisection.out_of_memory.items():
            job.errors[index] = GenerationError(
                ErrorCode.OUT_OF_MEMORY,
                f"the GPU ran out of memory even for this job alone ({reason}); lower octree_resolution or "
                "num_chunks, or retry when the server is less busy",
                job.items[index].request.job_id,
            )
        logger.warning(
            "out of memory in a pass of %d: %d split(s), %d job(s) failed alone, largest size that ran: %s",
            job.record.size,
            bisection.splits,
            len(bisection.out_of_memory),
            bisection.largest_ok,
        )
        self.on_oom(bisection.largest_ok or 1)

    async def _cpu_phase(self, job: _Pass) -> list[Outcome]:
        try:
            outcomes = await asyncio.to_thread(self._cpu_pass, job)
        except Exception as exc:
            logger.exception("surface extraction of %d request(s) failed", len(job.items))
            outcomes = list(job.fail_all(f"surface extraction failed: {type(exc).__name__}: {exc}"))
        job.record.cpu_end = time.monotonic()
        waits = [job.record.gpu_start - q.arrived for q in job.items]
        self.metrics.record_pass(job.record.path, job.record.size, waits, job.timings.seconds)
        for outcome in outcomes:
            self.metrics.record_outcome("ok" if isinstance(outcome, GenerationResult) else outcome.code.value)
        self.metrics.record_gpu_memory(self.pipeline.device)
        return outcomes

    def _cpu_pass(self, job: _Pass) -> list[Outcome]:
        """Marching cubes per item, then GLB bytes and mesh statistics (worker thread, GPU lock not held)."""
        outcomes: dict[int, Outcome] = dict(job.errors)
        meshes: dict[int, tuple[trimesh.Trimesh | Exception, int]] = {}  # index -> (mesh, its sub-batch size)
        for positions, grids in job.bisection.done if job.bisection is not None else []:
            extracted = self.pipeline.extract_surfaces(grids, job.params, job.timings, return_exceptions=True)
            for index, mesh in zip(positions, extracted, strict=True):
                meshes[index] = (mesh, len(positions))
        job.bisection = None  # drop the grids and pixels now: (R+1)^3 floats per item
        job.pixels = []
        cleaned: dict[int, tuple[trimesh.Trimesh, dict[str, Any]]] = {}
        with job.timings.stage("mesh_cleanup"):
            for index, (mesh, _) in meshes.items():
                request = job.items[index].request
                if isinstance(mesh, EmptySurfaceError):
                    outcomes[index] = GenerationError(ErrorCode.EMPTY_SURFACE, str(mesh), request.job_id)
                elif isinstance(mesh, Exception):
                    message = f"surface extraction: {mesh}"
                    outcomes[index] = GenerationError(ErrorCode.INTERNAL_ERROR, message, request.job_id)
                else:
                    mesh, report = clean_mesh(mesh, request.mesh)
                    cleaned[index] = (mesh, report.to_dict())
        exported: dict[int, tuple[bytes, MeshStats]] = {}
        with job.timings.stage(PASS_STAGES[-1]):
            for index, (mesh, _) in cleaned.items():
                if not len(mesh.faces):
                    message = "the decoded volume has no surface left to export"
                    outcomes[index] = GenerationError(ErrorCode.EMPTY_SURFACE, message, job.items[index].request.job_id)
                else:
                    exported[index] = (export_mesh(mesh, CANONICAL_FORMAT), mesh_stats(mesh))
        timings = dict(job.timings.seconds)  # the whole pass, surface extraction and export included
        for index, (glb, stats) in exported.items():
            request = job.items[index].request
            outcomes[index] = GenerationResult(
                glb=glb,
                stats=stats,
                timings=dict(timings),
                batch_size=meshes[index][1],
                cleanup=cleaned[index][1],
                queue_wait_s=job.record.gpu_start - job.items[index].arrived,
                seed=request.seed,
                job_id=request.job_id,
            )
        missing = [i for i in range(len(job.items)) if i not in outcomes]
        if missing:
            raise RuntimeError(f"no outcome for item(s) {missing} of the pass")
        return [outcomes[i] for i in range(len(job.items))]

    async def _finish(self, job: _Pass, futures: list[asyncio.Future[Outcome]]) -> None:
        try:
            outcomes = await self._cpu_phase(job)
        finally:
            self.batch_slots.release()
        for future, outcome in zip(futures, outcomes, strict=True):
            if not future.done():  # a caller that went away cancelled its future
                future.set_result(outcome)


def _with_job_id(error: GenerationError, queued: Queued) -> GenerationError:
    return GenerationError(error.code, error.message, queued.request.job_id)


def _naming_view(error: GenerationError, name: str, request: GenerationRequest) -> GenerationError:
    """A multiview job's error says which view caused it (a single-image job's message stays as it was)."""
    if not request.views:
        return error
    return GenerationError(error.code, f"view {name!r}: {error.message}", request.job_id)
