from __future__ import annotations

import torch

from deployments.hunyuan3d import STAGES
from deployments.metrics import GeneratorMetrics, process_rss_bytes


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
