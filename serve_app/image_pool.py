"""Images are decoded in a bounded thread pool, never on the ingress's event loop.

The loop also answers ``/healthz``, Serve's health checks and every other request: one batch of flat
4096x4096 PNGs decoded inline held it for seconds. Pillow releases the GIL while it decodes and encodes, so a
few threads keep the loop free, and their number bounds the CPU that images take in one process. One
request's images together must also fit a pixel budget, checked from their headers before any is decoded,
so a single batch cannot occupy the pool for long.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

from serve_app.images import DecodedImage, ImageLimits, ImageRejected, normalise_image, probe_image

T = TypeVar("T")

# one ingress per process; a second size only appears in tests that start apps with other limits
_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def decode_pool(workers: int) -> ThreadPoolExecutor:
    """The process's pool of ``workers`` decode threads (created on first use)."""
    with _pools_lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = _pools[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="orfeas-decode")
        return pool


async def decode_images(payloads: Sequence[tuple[bytes, str]], limits: ImageLimits, workers: int) -> list[DecodedImage]:
    """``(bytes, field name)`` pairs of one request -> their normalised images, in order.

    1. probe every image (header and container, no pixels) in the pool
    2. the request's decode budget: total pixels against ``limits.max_request_pixels`` (413)
    3. decode, check and re-encode every image in the pool
    The first refused image by position is the one reported, whichever thread finished first.
    """
    pool = decode_pool(workers)
    headers = await _each(pool, [partial(probe_image, data, limits, field) for data, field in payloads])
    total = sum(header.pixels for header in headers)
    if total > limits.max_request_pixels:
        raise ImageRejected(
            413,
            "decode_budget_exceeded",
            f"the request's {len(payloads)} image(s) hold {total} pixels together; at most "
            f"{limits.max_request_pixels} are decoded per request: send fewer or smaller images, or split the batch",
        )
    return await _each(
        pool,
        [
            partial(normalise_image, data, header, limits, field)
            for (data, field), header in zip(payloads, headers, strict=True)
        ],
    )


async def _each(pool: ThreadPoolExecutor, calls: Sequence[Callable[[], T]]) -> list[T]:
    loop = asyncio.get_running_loop()
    futures: list[Awaitable[T]] = [loop.run_in_executor(pool, call) for call in calls]
    # wait for all (a thread cannot be stopped midway), then raise the first failure by position
    results: list[T] = []
    for outcome in await asyncio.gather(*futures, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome
        results.append(outcome)
    return results
