"""The replica's work loop in-process: the real tiny model where outputs matter, a synthetic one for timing."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np
import pytest
from PIL import Image

from deployments.background import BackgroundConfig, make_remover
from deployments.contract import GenerationError, GenerationRequest, GenerationResult, MeshOptions
from deployments.engine import PASS_STAGES, GenerationEngine, Queued
from deployments.hunyuan3d import GenerationParams, ShapePipeline
from deployments.metrics import GeneratorMetrics
from deployments.scheduling import CRITICAL

from .conftest import FAST, fixture_png, mesh_of, object_png, png_bytes, transparent_png
from .fakes import SyntheticPipeline


def queued(image: bytes, seed: int, params: GenerationParams = FAST, priority: str = "normal") -> Queued:
    request = GenerationRequest(
        image,
        seed=seed,
        params=params,
        priority=priority,
        job_id=f"job-{seed}",  # type: ignore[arg-type]
    )
    return Queued(request, time.monotonic())


def make_engine(pipeline: object, max_concurrent_batches: int = 2, remover: object = None) -> GenerationEngine:
    return GenerationEngine(pipeline, GeneratorMetrics(), max_concurrent_batches, remover=remover)  # type: ignore[arg-type]


def codes(outcomes: list) -> list[str]:
    return ["ok" if isinstance(o, GenerationResult) else o.code.value for o in outcomes]


def assert_same_mesh(a: GenerationResult, b: GenerationResult) -> None:
    # the pipeline's stated batch == single tolerance (tests/hunyuan3d/test_pipeline.py)
    mesh_a, mesh_b = mesh_of(a), mesh_of(b)
    assert (mesh_a.vertices.shape, mesh_a.faces.shape) == (mesh_b.vertices.shape, mesh_b.faces.shape)
    assert np.abs(mesh_a.vertices - mesh_b.vertices).max() < 1e-4


async def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_engine_batch_results_equal_single_runs(tiny_pipeline: ShapePipeline):
    engine = make_engine(tiny_pipeline)
    items = [
        queued(fixture_png("object_rgba.png"), 11),
        queued(fixture_png("plain_rgb.png"), 12),
        queued(object_png(), 13),
        queued(fixture_png("object_rgba.png"), 14),
    ]
    batched = await engine.run_batch(items)
    assert codes(batched) == ["ok"] * 4
    assert [r.batch_size for r in batched] == [4] * 4
    assert [p.size for p in engine.passes] == [4]
    for item, together in zip(items, batched, strict=True):
        [alone] = await engine.run_batch([item])
        assert alone.batch_size == 1
        assert (together.seed, together.job_id) == (item.request.seed, item.request.job_id)
        assert_same_mesh(together, alone)


async def test_engine_result_carries_stage_timings_and_queue_wait(tiny_pipeline: ShapePipeline):
    [result] = await make_engine(tiny_pipeline).run_batch([queued(object_png(), 1)])
    assert set(result.timings) == set(PASS_STAGES) - {"background_removal"}  # an engine without a remover
    assert result.queue_wait_s >= 0
    mesh = mesh_of(result)
    assert result.stats.to_dict()["faces"] == len(mesh.faces) > 0
    assert result.stats.vertices == len(mesh.vertices) and mesh.faces.max() < len(mesh.vertices)


async def test_engine_bad_items_fail_alone_and_batch_mates_complete(tiny_pipeline: ShapePipeline):
    engine = make_engine(tiny_pipeline)
    items = [
        queued(object_png(), 1),
        queued(b"not an image at all", 2),
        queued(object_png(5), 3),
        queued(transparent_png(), 4),
        queued(object_png()[:200], 5),
    ]
    outcomes = await engine.run_batch(items)
    assert codes(outcomes) == ["ok", "invalid_image", "ok", "invalid_image", "invalid_image"]
    assert "not an image PIL can read" in outcomes[1].message
    assert "fully transparent" in outcomes[3].message
    assert "could not be decoded" in outcomes[4].message  # truncated PNG
    assert [o.job_id for o in outcomes] == ["job-1", "job-2", "job-3", "job-4", "job-5"]
    assert [p.size for p in engine.passes] == [2]


async def test_engine_mixed_keys_split_into_passes_keeping_positions(tiny_pipeline: ShapePipeline):
    other = GenerationParams(num_inference_steps=3, octree_resolution=32, volume_decoder="dense")
    engine = make_engine(tiny_pipeline)
    outcomes = await engine.run_batch(
        [
            queued(object_png(), 1),
            queued(object_png(), 2, other),
            queued(object_png(), 3),
            queued(object_png(), 4, other),
        ]
    )
    assert [o.seed for o in outcomes] == [1, 2, 3, 4]
    assert [o.batch_size for o in outcomes] == [2, 2, 2, 2]
    assert [(p.size, p.job_ids) for p in engine.passes] == [(2, ["job-1", "job-3"]), (2, ["job-2", "job-4"])]


async def test_engine_injected_oom_halves_the_pass_and_reports_the_size_that_ran(tiny_pipeline: ShapePipeline):
    engine = make_engine(tiny_pipeline)
    lowered: list[int] = []
    engine.on_oom = lowered.append
    engine.inject_oom_above = 2
    items = [queued(object_png(), seed) for seed in range(4)]
    outcomes = await engine.run_batch(items)
    assert codes(outcomes) == ["ok"] * 4
    assert [o.batch_size for o in outcomes] == [2, 2, 2, 2]
    assert (engine.passes[-1].oom_splits, engine.oom_splits_total, lowered) == (1, 1, [2])
    # the halves give the same meshes as one pass would have
    engine.inject_oom_above = None
    for item, outcome in zip(items, await engine.run_batch(items), strict=True):
        assert_same_mesh(outcome, outcomes[item.request.seed])


async def test_engine_item_out_of_memory_alone_gets_a_clear_error(tiny_pipeline: ShapePipeline):
    engine = make_engine(tiny_pipeline)
    lowered: list[int] = []
    engine.on_oom = lowered.append
    engine.inject_oom_above = 0
    outcomes = await engine.run_batch([queued(object_png(), 1), queued(object_png(), 2)])
    assert codes(outcomes) == ["out_of_memory", "out_of_memory"]
    assert outcomes[0].retryable
    assert "even for this job alone" in outcomes[0].message and "injected by the test hook" in outcomes[0].message
    assert lowered == [1]


async def test_engine_empty_surface_fails_only_that_item():
    engine = make_engine(SyntheticPipeline(empty_seeds=[2]))
    outcomes = await engine.run_batch([queued(object_png(), 1), queued(object_png(), 2), queued(object_png(), 3)])
    assert codes(outcomes) == ["ok", "empty_surface", "ok"]
    assert "never cross the level" in outcomes[1].message


async def test_engine_gpu_failure_fails_its_pass_as_internal_and_engine_keeps_working():
    pipeline = SyntheticPipeline()
    engine = make_engine(pipeline)
    broken = pipeline.generate_volumes

    def fail_once(*args, **kwargs):
        pipeline.generate_volumes = broken
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    pipeline.generate_volumes = fail_once
    outcomes = await engine.run_batch([queued(object_png(), 1), queued(object_png(), 2)])
    assert codes(outcomes) == ["internal_error", "internal_error"]
    assert "illegal memory access" in outcomes[0].message
    assert codes(await engine.run_batch([queued(object_png(), 3)])) == ["ok"]
    assert engine.batch_slots.in_use == 0 and not engine.gpu.locked


async def test_engine_critical_request_overtakes_batches_waiting_for_the_gpu(tiny_pipeline: ShapePipeline):
    engine = make_engine(tiny_pipeline)
    await engine.gpu.acquire(CRITICAL)  # a GPU pass "in progress"
    first = asyncio.create_task(engine.run_batch([queued(object_png(), 1), queued(object_png(), 2)]))
    await wait_until(lambda: engine.gpu.waiting == 1)
    second = asyncio.create_task(engine.run_batch([queued(object_png(), 3)]))
    await wait_until(lambda: engine.gpu.waiting == 2)
    critical = asyncio.create_task(engine.run_critical(queued(object_png(), 9, priority="critical")))
    await wait_until(lambda: engine.gpu.waiting == 3)
    engine.gpu.release()  # the pass in progress ends
    outcome = await critical
    await asyncio.gather(first, second)
    assert isinstance(outcome, GenerationResult) and outcome.batch_size == 1
    assert [(p.path, p.job_ids) for p in engine.passes] == [
        ("critical", ["job-9"]),
        ("batch", ["job-1", "job-2"]),
        ("batch", ["job-3"]),
    ]


async def test_engine_critical_bad_image_returns_error_without_touching_the_gpu(tiny_pipeline: ShapePipeline):
    engine = make_engine(tiny_pipeline)
    outcome = await engine.run_critical(queued(transparent_png(), 1, priority="critical"))
    assert isinstance(outcome, GenerationError) and outcome.code.value == "invalid_image"
    assert not engine.passes


async def test_engine_surface_extraction_overlaps_the_next_gpu_pass():
    # the first batch's surface extraction cannot end before the second batch's GPU pass has begun
    pipeline = SyntheticPipeline(gpu_s=0.05, cpu_holds_until_gpu_passes=2)
    engine = make_engine(pipeline, max_concurrent_batches=2)
    await asyncio.gather(engine.run_batch([queued(object_png(), 1)]), engine.run_batch([queued(object_png(), 2)]))
    first, second = engine.passes
    assert second.gpu_start >= first.gpu_end  # one GPU pass at a time
    assert second.gpu_start < first.cpu_end  # ... while the first batch extracts its surfaces


async def test_engine_one_concurrent_batch_does_not_overlap():
    engine = make_engine(SyntheticPipeline(gpu_s=0.1, cpu_s=0.1), max_concurrent_batches=1)
    await asyncio.gather(engine.run_batch([queued(object_png(), 1)]), engine.run_batch([queued(object_png(), 2)]))
    first, second = engine.passes
    assert second.gpu_start >= first.cpu_end


async def test_engine_start_batch_returns_after_the_gpu_pass_before_surfaces_are_done():
    engine = make_engine(SyntheticPipeline(gpu_s=0.05, cpu_s=0.3))
    futures = await engine.start_batch([queued(object_png(), 1)])
    assert not futures[0].done() and not engine.gpu.locked
    assert isinstance(await futures[0], GenerationResult)
    assert engine.batch_slots.in_use == 0


async def test_engine_cancelled_caller_keeps_the_gpu_until_its_pass_ends():
    pipeline = SyntheticPipeline(gpu_s=0.3)
    engine = make_engine(pipeline)
    critical = asyncio.create_task(engine.run_critical(queued(object_png(), 1, priority="critical")))
    await wait_until(lambda: bool(pipeline.gpu_batches))  # the pass is running in its worker thread
    critical.cancel()
    with pytest.raises(asyncio.CancelledError):
        await critical
    assert engine.gpu.locked  # a second pass must not start next to the running one
    await wait_until(lambda: not engine.gpu.locked)
    assert [p.path for p in engine.passes] == ["critical"]


async def test_engine_caller_cancelled_while_waiting_for_the_gpu_runs_nothing():
    pipeline = SyntheticPipeline()
    engine = make_engine(pipeline)
    await engine.gpu.acquire()
    waiting = asyncio.create_task(engine.run_critical(queued(object_png(), 1, priority="critical")))
    await wait_until(lambda: engine.gpu.waiting == 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    engine.gpu.release()
    assert not engine.gpu.locked and pipeline.gpu_batches == [] and not engine.passes


def with_options(item: Queued, **changes: object) -> Queued:
    return Queued(dataclasses.replace(item.request, **changes), item.arrived)  # type: ignore[arg-type]


async def test_engine_cleans_each_mesh_to_its_own_face_budget_in_one_pass(tiny_pipeline: ShapePipeline):
    engine = make_engine(tiny_pipeline)
    params = GenerationParams(num_inference_steps=2, octree_resolution=64, volume_decoder="dense")
    raw, budgeted = await engine.run_batch(
        [
            with_options(queued(object_png(), 5, params), mesh=MeshOptions(max_faces=0, remove_floaters=False)),
            with_options(queued(object_png(), 5, params), mesh=MeshOptions(max_faces=1_000)),
        ]
    )
    assert [p.size for p in engine.passes] == [2]  # mesh options are not part of the batch key
    assert raw.cleanup["faces_before"] == raw.stats.faces > 1_000  # no reduction asked
    assert budgeted.cleanup["faces_before"] == raw.cleanup["faces_before"]  # same seed and image: same surface
    assert budgeted.stats.faces <= 1_000 and len(mesh_of(budgeted).faces) == budgeted.stats.faces
    assert set(budgeted.timings) == set(PASS_STAGES) - {"background_removal"}  # nothing to cut out: RGBA


async def test_engine_removes_backgrounds_as_each_request_asks(tiny_pipeline: ShapePipeline):
    engine = make_engine(tiny_pipeline, remover=make_remover(BackgroundConfig()))
    blank = png_bytes(Image.new("RGB", (96, 96), (250, 250, 250)))  # a studio backdrop with nothing on it
    outcomes = await engine.run_batch(
        [
            queued(object_png(), 1),  # RGBA: auto keeps its own alpha
            with_options(queued(blank, 2), remove_background="always"),
            with_options(queued(fixture_png("plain_rgb.png"), 3), remove_background="never"),
        ]
    )
    assert codes(outcomes) == ["ok", "no_foreground", "ok"]
    assert outcomes[1].job_id == "job-2" and "background removal" in outcomes[1].message
    assert "background_removal" in outcomes[0].timings
