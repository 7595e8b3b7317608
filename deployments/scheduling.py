"""Two asyncio primitives the replica schedules with: a priority lock for the GPU and resizable slots.

asyncio's own Lock is FIFO only and its Semaphore cannot change size; we need critical jobs to jump the
GPU queue and batch limits that ``reconfigure`` can change while requests are waiting. Both primitives
hand ownership directly to the next waiter on release, so a newcomer can never barge past the queue.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

CRITICAL = 0
NORMAL = 1


class PriorityLock:
    """A lock whose waiters are served by priority (lower first), then by arrival."""

    def __init__(self) -> None:
        self._held = False
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @property
    def locked(self) -> bool:
        return self._held

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, future in self._waiters if not future.done())

    async def acquire(self, priority: int = NORMAL) -> None:
        if not self._held and not self.waiting:
            self._held = True
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._arrivals), future))
        try:
            await future
        except asyncio.CancelledError:
            # granted just before the cancellation landed: we own the lock, so pass it on
            if future.done() and not future.cancelled():
                self.release()
            raise

    def release(self) -> None:
        if not self._held:
            raise RuntimeError("release of an unlocked PriorityLock")
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():  # skips waiters that were cancelled
                future.set_result(None)  # ownership moves to this waiter; _held stays True
                return
        self._held = False

    @asynccontextmanager
    async def hold(self, priority: int = NORMAL) -> AsyncIterator[None]:
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()


class Slots:
    """A FIFO counting semaphore whose size can change at any time.

    Shrinking never revokes a held slot; new holders wait until usage is below the new size.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"Slots size must be at least 1, got {size}")
        self._size = size
        self._used = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def size(self) -> int:
        return self._size

    @property
    def in_use(self) -> int:
        return self._used

    @property
    def waiting(self) -> int:
        return sum(1 for future in self._waiters if not future.done())

    def resize(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"Slots size must be at least 1, got {size}")
        self._size = size
        self._wake()

    async def acquire(self) -> None:
        if self._used < self._size and not self.waiting:
            self._used += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed to us as we were cancelled
            raise

    def release(self) -> None:
        if self._used <= 0:
            raise RuntimeError("release of a Slots with no slot in use")
        self._used -= 1
        self._wake()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    def _wake(self) -> None:
        while self._waiters and self._used < self._size:
            future = self._waiters.popleft()
            if not future.done():
                self._used += 1
                future.set_result(None)
