"""The ShapeGenerator's Prometheus metrics (``ray.serve.metrics``; exported with a ``ray_`` prefix).

Serve already exports ``serve_batch_wait_time_ms``, ``serve_actual_batch_size`` and friends for the
``@serve.batch`` queue; these add what Serve cannot see: the size of each GPU pass after splitting by
batch key and OOM bisection, the wait from arrival to the GPU, per-stage latency, and memory.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import resource
import sys
import tracemalloc

import torch
import trimesh
from PIL import Image
from ray.serve.metrics import Counter, Gauge, Histogram

BATCH_SIZE_BUCKETS: list[float] = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
SECONDS_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300]


class GeneratorMetrics:
    def __init__(self) -> None:
        self.pass_size = Histogram(
            "orfeas_generator_batch_size",
            description="Requests per GPU pass (after key split and OOM halving).",
            boundaries=BATCH_SIZE_BUCKETS,
            tag_keys=("path",),
        )
        self.queue_wait = Histogram(
            "orfeas_generator_queue_wait_seconds",
            description="Arrival at the replica to the start of its GPU pass.",
            boundaries=SECONDS_BUCKETS,
            tag_keys=("path",),
        )
        self.stage_seconds = Histogram(
            "orfeas_generator_stage_seconds",
            description="Wall-clock seconds of one pipeline stage for one pass.",
            boundaries=SECONDS_BUCKETS,
            tag_keys=("stage",),
        )
        self.outcomes = Counter(
            "orfeas_generator_requests",
            description="Finished requests by outcome (ok or an error code).",
            tag_keys=("outcome",),
        )
        self.oom_splits = Counter(
            "orfeas_generator_oom_splits", description="GPU passes halved after running out of memory."
        )
        self.max_batch_size = Gauge(
            "orfeas_generator_max_batch_size", description="Current max batch size of the replica."
        )
        self.gpu_allocated = Gauge(
            "orfeas_generator_gpu_memory_allocated_bytes", description="torch.cuda.memory_allocated after a pass."
        )
        self.gpu_peak = Gauge(
            "orfeas_generator_gpu_memory_peak_bytes", description="torch.cuda.max_memory_allocated since start."
        )

    def record_pass(self, path: str, size: int, queue_waits: list[float], stage_seconds: dict[str, float]) -> None:
        self.pass_size.observe(size, tags={"path": path})
        for wait in queue_waits:
            self.queue_wait.observe(wait, tags={"path": path})
        for stage, seconds in stage_seconds.items():
            self.stage_seconds.observe(seconds, tags={"stage": stage})

    def record_outcome(self, outcome: str) -> None:
        self.outcomes.inc(tags={"outcome": outcome})

    def record_oom_splits(self, splits: int) -> None:
        if splits:
            self.oom_splits.inc(splits)

    def set_max_batch_size(self, size: int) -> None:
        self.max_batch_size.set(size)

    def record_gpu_memory(self, device: torch.device) -> None:
        if device.type == "cuda":
            self.gpu_allocated.set(torch.cuda.memory_allocated(device))
            self.gpu_peak.set(torch.cuda.max_memory_allocated(device))


def process_rss_bytes() -> int:
    """Resident memory of this process now (Linux: /proc); elsewhere the peak, which only grows.

    Read directly: psutil is only vendored inside Ray (ray/thirdparty_files), not a dependency we can import.
    """
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so that RSS read
    right after reflects memory still in use rather than what the allocator keeps cached for reuse."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): RSS stays an upper bound
        pass


# What a request handles, by kind: a leak of any of them per request or per pass shows as a count that grows
# with the number of requests (the model's own parameters and buffers are constant).
_COUNTED_KINDS: dict[str, type] = {
    "tensors": torch.Tensor,
    "images": Image.Image,
    "meshes": trimesh.Trimesh,
    "futures": asyncio.Future,  # tasks too
}


def live_object_counts() -> dict[str, int]:
    """How many objects of each counted kind are alive now (after ``gc.collect()``): exact, not sampled.

    Walks every object the garbage collector tracks (torch tensors, PIL images, meshes and futures all
    are), so it takes a fraction of a second: for tests and debugging, not for a hot path.
    """
    gc.collect()
    counts = dict.fromkeys(_COUNTED_KINDS, 0)
    for obj in gc.get_objects():
        kind = type(obj)
        for name, counted in _COUNTED_KINDS.items():
            if issubclass(kind, counted):
                counts[name] += 1
    return counts


def traced_python_bytes() -> int | None:
    """Bytes of the Python heap (every Python object, bytes and numpy buffers) allocated since tracing began
    and still alive, or None when ``tracemalloc`` is not tracing. Exact: no allocator caches in it."""
    return tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None
