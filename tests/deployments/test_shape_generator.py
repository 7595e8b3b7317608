"""The ShapeGenerator class in-process: construction, reconfigure and the critical path.

Serve's batched method needs a running replica (see notes/ray_serve.md), so the batch path is covered by
test_engine.py in-process and test_shape_generator_ray.py on a real Ray; everything else runs here.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from ray.serve import Application

from deployments.contract import GenerationError, GenerationRequest, GenerationResult
from deployments.shape_generator import ShapeGenerator, build_app

from .conftest import FAST_DICT, TINY_MODEL, object_png, transparent_png


@pytest.fixture(scope="module")
def generator() -> ShapeGenerator:
    # the user class behind the Serve deployment
    return ShapeGenerator.func_or_class({"model": str(TINY_MODEL), "device": "cpu", "warmup_params": FAST_DICT})


def test_generator_starts_with_default_batching_until_reconfigured(generator: ShapeGenerator):
    assert (generator.max_batch_size, generator.admission.size, generator.engine.batch_slots.size) == (4, 8, 2)
    assert generator.sizing.source == "config"


async def test_generator_reconfigure_applies_every_batch_setting(generator: ShapeGenerator):
    await generator.reconfigure(
        {
            "max_batch_size": 3,
            "batch_wait_timeout_s": 0.2,
            "max_concurrent_batches": 1,
            "inject_oom_above_batch_size": 2,
        }
    )
    assert (generator.max_batch_size, generator.admission.size, generator.engine.batch_slots.size) == (3, 3, 1)
    assert generator._start_batch._get_max_batch_size() == 3
    assert generator._start_batch._get_batch_wait_timeout_s() == 0.2
    assert generator.engine.inject_oom_above == 2
    await generator.reconfigure({})
    assert (generator.max_batch_size, generator.engine.inject_oom_above) == (4, None)


async def test_generator_reconfigure_auto_without_gpu_uses_the_table_cpu_entry(generator: ShapeGenerator):
    await generator.reconfigure({"max_batch_size": "auto"})
    stats = await generator.stats()
    assert stats["max_batch_size"] == generator.table.row("hunyuan3d-dit-v2-0").cpu
    assert stats["sizing"]["source"] == "table" and "no GPU" in stats["sizing"]["detail"]
    await generator.reconfigure({})


async def test_generator_reconfigure_rejects_an_invalid_user_config(generator: ShapeGenerator):
    with pytest.raises(ValidationError, match="max_concurrent_batches"):
        await generator.reconfigure({"max_concurrent_batches": 0})
    assert generator.max_batch_size == 4  # unchanged


async def test_generator_oom_lowers_max_batch_size_only_downwards(generator: ShapeGenerator):
    generator._lower_max_batch_size(2)
    assert (generator.max_batch_size, generator.admission.size) == (2, 4)
    generator._lower_max_batch_size(3)
    assert generator.max_batch_size == 2
    await generator.reconfigure({})
    assert generator.max_batch_size == 4


async def test_generator_critical_request_runs_alone_in_process(generator: ShapeGenerator):
    request = GenerationRequest(object_png(), seed=5, params=FAST_DICT, priority="critical", job_id="urgent")
    outcome = await generator.generate(request)
    assert isinstance(outcome, GenerationResult) and (outcome.batch_size, outcome.job_id) == (1, "urgent")
    assert (await generator.stats())["passes"][-1]["path"] == "critical"


async def test_generator_critical_bad_image_is_returned_not_raised(generator: ShapeGenerator):
    request = GenerationRequest(transparent_png(), params=FAST_DICT, priority="critical")
    outcome = await generator.generate(request)
    assert isinstance(outcome, GenerationError) and outcome.code == "invalid_image"


async def test_generator_non_request_argument_is_a_type_error(generator: ShapeGenerator):
    with pytest.raises(TypeError, match="takes a GenerationRequest, got dict"):
        await generator.generate({"image": object_png()})  # type: ignore[arg-type]


async def test_generator_stats_report_memory_and_settings(generator: ShapeGenerator):
    stats = await generator.stats(collect_garbage=True)
    assert stats["rss_bytes"] > 0 and stats["cuda_allocated_bytes"] is None
    assert stats["batching"]["max_batch_size"] == 4


def test_generator_random_weights_variant_builds_without_a_checkpoint():
    tiny = {"model": str(TINY_MODEL / "config.yaml"), "random_weights": True, "device": "cpu", "warmup": False}
    generator = ShapeGenerator.func_or_class(tiny)
    assert generator.config.variant_name() == "hunyuan3d-dit-v2-0"


def test_build_app_validates_args_before_any_replica_starts():
    assert isinstance(build_app({"device": "cpu"}), Application)
    with pytest.raises(ValidationError, match="device must be auto, cpu, cuda or cuda:N"):
        build_app({"device": "tpu"})
