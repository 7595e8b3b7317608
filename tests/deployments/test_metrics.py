from __future__ import annotations

import torch

from deployments.hunyuan3d import STAGES
from deployments.metrics import GeneratorMetrics, live_object_counts, process_rss_bytes, traced_python_bytes


def test_process_rss_bytes_follows_allocations():
    before = process_rss_bytes()
    block = bytearray(64 * 2**20)  # zero-filled, so the pages are touched
    assert process_rss_bytes() - before > 48 * 2**20
    del block


def test_generator_metrics_record_without_a_running_ray():
    metrics = GeneratorMetrics()
    metrics.record_pass("batch", 4, [0.1, 0.2, 0.3, 0.4], {stage: 0.5 for stage in STAGES})
    metrics.record_outcome("ok")
    metrics.record_oom_splits(2)
    metrics.set_max_batch_size(4)
    metrics.record_gpu_memory(torch.device("cpu"))  # a no-op without CUDA


def test_live_object_counts_see_new_tensors_and_their_release():
    before = live_object_counts()["tensors"]
    tensors = [torch.zeros(4) for _ in range(10)]
    assert live_object_counts()["tensors"] - before == 10
    del tensors
    assert live_object_counts()["tensors"] == before


def test_traced_python_bytes_only_while_tracing():
    import tracemalloc

    assert traced_python_bytes() is None
    tracemalloc.start()
    try:
        before = traced_python_bytes()
        block = bytes(4 * 2**20)
        assert traced_python_bytes() - before >= 4 * 2**20  # type: ignore[operator]
        del block
    finally:
        tracemalloc.stop()
