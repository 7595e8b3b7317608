"""ShapeGenerator on a real local Ray + Serve, deployed from configs/serve_generator.yaml.

One app for the whole module. Batch settings change the way production changes them: a declarative
deploy of the config with a new ``user_config`` (the path ``serve deploy`` takes), which Serve applies
through ``reconfigure`` on the running replica.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import yaml
from ray import serve
from ray.serve._private.api import serve_start  # what `serve deploy` ends up calling; no public Python API
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ServeDeploySchema

from deployments.contract import GenerationError, GenerationRequest, GenerationResult
from deployments.hunyuan3d import GenerationParams
from deployments.paths import resolve_path

from .conftest import FAST_DICT, mesh_of, object_png, transparent_png

pytestmark = pytest.mark.ray

APP = "shape_generator"
# Slower passes (~1 s for 4 jobs here) for the test that needs batches queued behind a running pass.
SLOW = {**FAST_DICT, "num_inference_steps": 4}
TINY = GenerationParams(num_inference_steps=1, octree_resolution=16, volume_decoder="dense").to_dict()


class Generator:
    """The deployed app: its handle, and redeploys of the committed config with user_config overrides."""

    def __init__(self) -> None:
        self.config = yaml.safe_load(resolve_path("configs/serve_generator.yaml").read_text())
        app = self.config["applications"][0]
        app["args"]["warmup_params"] = FAST_DICT
        deployment = app["deployments"][0]
        deployment["ray_actor_options"]["num_cpus"] = 0  # 2-core machines: do not wait for a free CPU
        # Requests sent together reach the replica within milliseconds; a window far wider than that makes
        # the batches the tests count independent of how busy the machine is (lone requests wait it out).
        deployment["user_config"]["batch_wait_timeout_s"] = 0.5
        self.base_user_config = dict(deployment["user_config"])
        self.handle: DeploymentHandle = self.deploy({})

    def deploy(self, user_config: dict[str, Any]) -> DeploymentHandle:
        config = copy.deepcopy(self.config)
        config["applications"][0]["deployments"][0]["user_config"] = {**self.base_user_config, **user_config}
        serve_start().deploy_apps(ServeDeploySchema.model_validate(config), _blocking=True)
        handle = serve.get_deployment_handle("ShapeGenerator", APP)
        expected = {**self.base_user_config, **user_config}
        deadline = time.monotonic() + 30
        while any(handle.stats.remote().result()["batching"][k] != v for k, v in expected.items()):
            assert time.monotonic() < deadline, "reconfigure did not reach the replica"
            time.sleep(0.1)
        return handle

    def stats(self) -> dict[str, Any]:
        return self.handle.stats.remote().result()

    def call_all(self, requests: list[GenerationRequest]) -> list[GenerationResult | GenerationError]:
        """All requests at once (concurrent callers), results in request order."""
        responses = [self.handle.generate.remote(request) for request in requests]
        return [response.result(timeout_s=120) for response in responses]

    def new_passes(self, before: int) -> list[dict[str, Any]]:
        return self.stats()["passes"][before:]


@pytest.fixture(scope="module")
def generator(ray_session: str) -> Iterator[Generator]:
    deployed = Generator()
    yield deployed
    serve.delete(APP)


def requests(count: int, params: dict[str, Any] = FAST_DICT, first_seed: int = 0) -> list[GenerationRequest]:
    return [
        GenerationRequest(object_png(shift=seed % 7), seed=seed, params=params, job_id=f"job-{seed}")
        for seed in range(first_seed, first_seed + count)
    ]


def test_generator_concurrent_requests_form_batches_equal_to_sequential_calls(generator: Generator):
    before = len(generator.stats()["passes"])
    jobs = requests(8)
    batched = generator.call_all(jobs)
    assert all(isinstance(r, GenerationResult) for r in batched)
    sizes = [p["size"] for p in generator.new_passes(before)]
    assert sum(sizes) == 8 and max(sizes) == 4  # max_batch_size 4 from the committed config
    assert max(r.batch_size for r in batched) == 4
    for job, together in zip(jobs, batched, strict=True):
        alone = generator.handle.generate.remote(job).result(timeout_s=60)
        assert alone.batch_size == 1 and together.job_id == alone.job_id == job.job_id
        mesh_alone, mesh_together = mesh_of(alone), mesh_of(together)
        assert (mesh_alone.vertices.shape, mesh_alone.faces.shape) == (
            mesh_together.vertices.shape,
            mesh_together.faces.shape,
        )
        assert np.abs(mesh_alone.vertices - mesh_together.vertices).max() < 1e-4


def test_generator_bad_items_do_not_fail_their_batch_mates(generator: Generator):
    before = len(generator.stats()["passes"])
    jobs = requests(4)
    jobs[1] = GenerationRequest(b"\x89PNG\r\n\x1a\n garbage", seed=1, params=FAST_DICT, job_id="undecodable")
    jobs[2] = GenerationRequest(transparent_png(), seed=2, params=FAST_DICT, job_id="transparent")
    outcomes = generator.call_all(jobs)
    assert [isinstance(o, GenerationResult) for o in outcomes] == [True, False, False, True]
    assert [(o.code, o.job_id) for o in outcomes[1:3]] == [
        ("invalid_image", "undecodable"),
        ("invalid_image", "transparent"),
    ]
    assert [p["size"] for p in generator.new_passes(before)] == [2]


def test_generator_critical_request_overtakes_queued_batches(generator: Generator):
    before = len(generator.stats()["passes"])
    normal = [generator.handle.generate.remote(r) for r in requests(12, SLOW)]
    deadline = time.monotonic() + 60
    while not ((now := generator.stats())["gpu_busy"] and now["gpu_waiting"] >= 1):
        assert time.monotonic() < deadline, "no batch queued behind a running pass"  # a batch on the "GPU"
        time.sleep(0.01)  # and the next one waiting for it
    critical = GenerationRequest(object_png(), seed=99, params=SLOW, priority="critical", job_id="critical")
    urgent = generator.handle.generate.remote(critical).result(timeout_s=60)
    for response in normal:
        assert isinstance(response.result(timeout_s=120), GenerationResult)
    assert isinstance(urgent, GenerationResult) and urgent.batch_size == 1
    passes = generator.new_passes(before)
    [mine] = [p for p in passes if p["path"] == "critical"]
    overtaken = [
        p
        for p in passes
        if p["path"] == "batch" and p["waiting_since"] < mine["waiting_since"] and p["gpu_start"] > mine["gpu_start"]
    ]
    assert overtaken, f"no batch that was waiting ran after the critical request: {passes}"
    # it waited only for the pass in progress, not in a batch window
    running = [p for p in passes if p["gpu_start"] < mine["waiting_since"] < p["gpu_end"]]
    assert all(mine["gpu_start"] >= p["gpu_end"] for p in running)


def test_generator_live_reconfigure_changes_batch_size_without_restart(generator: Generator):
    pid = generator.stats()["pid"]
    try:
        generator.deploy({"max_batch_size": 2})
        stats = generator.stats()
        assert (stats["pid"], stats["max_batch_size"], stats["admission_slots"]) == (pid, 2, 4)
        before = len(stats["passes"])
        assert all(isinstance(r, GenerationResult) for r in generator.call_all(requests(8)))
        sizes = [p["size"] for p in generator.new_passes(before)]
        assert max(sizes) == 2 and sum(sizes) == 8
    finally:
        generator.deploy({})
    assert generator.stats()["max_batch_size"] == 4


def test_generator_oom_bisection_completes_the_batch_and_lowers_max_batch_size(generator: Generator):
    try:
        generator.deploy({"inject_oom_above_batch_size": 2})
        before_stats = generator.stats()
        before = len(before_stats["passes"])
        outcomes = generator.call_all(requests(4))
        assert all(isinstance(o, GenerationResult) for o in outcomes)
        assert [o.batch_size for o in outcomes] == [2, 2, 2, 2]
        stats = generator.stats()
        assert stats["oom_splits"] - before_stats["oom_splits"] == 1
        assert stats["max_batch_size"] == 2  # lowered to the size that succeeded
        assert [p["oom_splits"] for p in stats["passes"][before:]] == [1]
        # the lowered limit holds: no more splits
        generator.call_all(requests(4))
        assert generator.stats()["oom_splits"] == stats["oom_splits"]

        generator.deploy({"inject_oom_above_batch_size": 0})
        [alone] = generator.call_all(requests(1))
        assert isinstance(alone, GenerationError)  # returned through the handle, not raised
        assert (alone.code, alone.retryable, alone.job_id) == ("out_of_memory", True, "job-0")
    finally:
        generator.deploy({})
    assert generator.stats()["max_batch_size"] == 4  # a reconfigure restores the configured size


def test_generator_non_request_argument_raises_at_the_caller(generator: Generator):
    with pytest.raises(TypeError, match="generate\\(\\) takes a GenerationRequest, got str"):
        generator.handle.generate.remote("an image, please").result(timeout_s=30)


def test_generator_memory_returns_to_baseline_after_200_requests(generator: Generator):
    """Nothing a request touches outlives it, measured exactly rather than through RSS.

    After a 36-request warm-up, 204 more requests must leave behind (each reading after gc):
    - live objects by kind (torch tensors, PIL images, meshes, asyncio futures and tasks): at most 8 more
      of any kind; a leak of one per request would add 204, one per GPU pass about 50 (Serve freezes the
      objects made at replica start, gc.freeze, so the counts see only what requests made since);
    - the traced Python heap (tracemalloc: every Python object, bytes such as the GLBs, numpy buffers):
      under 1 MiB more; the bounded pass history accounts for tens of KiB, while leaking one GLB, image
      or grid per request would add several MiB;
    - on CUDA: exactly the allocator bytes of the baseline (only the weights stay allocated between jobs);
    - RSS, which also holds what allocators cache (readings jump by up to ~30 MiB here and come back):
      under 128 MiB more, a coarse guard against leaks in native code that the counts cannot see.
    """
    seed = iter(range(10_000, 20_000, 12))

    def wave() -> None:
        # 12 at a time = max_ongoing_requests - 2: full batches, no waiting in the router's retry backoff
        outcomes = generator.call_all(requests(12, TINY, first_seed=next(seed)))
        assert all(isinstance(r, GenerationResult) for r in outcomes)

    def reading() -> dict[str, Any]:
        return generator.handle.stats.remote(collect_garbage=True).result(timeout_s=60)

    for _ in range(3):
        wave()
    generator.handle.trace_python_memory.remote(True).result()
    try:
        baseline = reading()
        for _ in range(17):
            wave()
        after = reading()
    finally:
        generator.handle.trace_python_memory.remote(False).result()

    grown = {kind: after["live_objects"][kind] - count for kind, count in baseline["live_objects"].items()}
    assert all(extra <= 8 for extra in grown.values()), f"live objects grew over 204 requests: {grown}"
    heap_growth = after["traced_python_bytes"] - baseline["traced_python_bytes"]
    assert heap_growth < 2**20, f"the Python heap grew {heap_growth / 1024:.0f} KiB over 204 requests"
    if baseline["cuda_allocated_bytes"] is not None:  # a GPU replica
        assert after["cuda_allocated_bytes"] == baseline["cuda_allocated_bytes"]
    rss_growth_mib = (after["rss_bytes"] - baseline["rss_bytes"]) / 2**20
    assert rss_growth_mib < 128, f"replica RSS grew {rss_growth_mib:.1f} MiB over 204 requests"
