from __future__ import annotations

import asyncio

import pytest

from deployments.scheduling import CRITICAL, NORMAL, PriorityLock, Slots


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_priority_lock_critical_waiter_goes_before_earlier_normal_waiters():
    lock, order = PriorityLock(), []

    async def user(name: str, priority: int) -> None:
        async with lock.hold(priority):
            order.append(name)

    await lock.acquire()
    tasks = [asyncio.create_task(user("batch-1", NORMAL)), asyncio.create_task(user("batch-2", NORMAL))]
    await settle()
    tasks.append(asyncio.create_task(user("critical", CRITICAL)))
    await settle()
    assert lock.waiting == 3
    lock.release()
    await asyncio.gather(*tasks)
    assert order == ["critical", "batch-1", "batch-2"]
    assert not lock.locked


async def test_priority_lock_is_fifo_within_a_priority():
    lock, order = PriorityLock(), []

    async def user(name: str) -> None:
        async with lock.hold(CRITICAL):
            order.append(name)

    await lock.acquire()
    tasks = [asyncio.create_task(user(str(i))) for i in range(4)]
    await settle()
    lock.release()
    await asyncio.gather(*tasks)
    assert order == ["0", "1", "2", "3"]


async def test_priority_lock_cancelled_waiter_is_skipped():
    lock = PriorityLock()
    await lock.acquire()
    cancelled = asyncio.create_task(lock.acquire(CRITICAL))
    waiter = asyncio.create_task(lock.acquire(NORMAL))
    await settle()
    cancelled.cancel()
    await settle()
    lock.release()
    await asyncio.wait_for(waiter, 1)
    assert lock.locked and lock.waiting == 0
    lock.release()
    assert not lock.locked


def test_priority_lock_release_unlocked_is_an_error():
    with pytest.raises(RuntimeError, match="release of an unlocked PriorityLock"):
        PriorityLock().release()


async def test_slots_block_beyond_size_and_wake_in_order():
    slots, entered = Slots(2), []

    async def user(name: str, hold: asyncio.Event) -> None:
        async with slots.slot():
            entered.append(name)
            await hold.wait()

    events = [asyncio.Event() for _ in range(3)]
    tasks = [asyncio.create_task(user(str(i), events[i])) for i in range(3)]
    await settle()
    assert (entered, slots.in_use, slots.waiting) == (["0", "1"], 2, 1)
    events[0].set()
    await settle()
    assert entered == ["0", "1", "2"]
    for event in events:
        event.set()
    await asyncio.gather(*tasks)
    assert slots.in_use == 0


async def test_slots_growing_admits_waiters_at_once():
    slots = Slots(1)
    await slots.acquire()
    waiters = [asyncio.create_task(slots.acquire()) for _ in range(3)]
    await settle()
    slots.resize(4)
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert slots.in_use == 4


async def test_slots_shrinking_keeps_holders_and_delays_newcomers():
    slots = Slots(3)
    for _ in range(3):
        await slots.acquire()
    slots.resize(1)
    newcomer = asyncio.create_task(slots.acquire())
    slots.release()
    slots.release()
    await settle()
    assert not newcomer.done()  # 1 in use = the new size
    slots.release()
    await asyncio.wait_for(newcomer, 1)
    assert slots.in_use == 1


async def test_slots_cancelled_waiter_does_not_leak_a_slot():
    slots = Slots(1)
    await slots.acquire()
    waiter = asyncio.create_task(slots.acquire())
    await settle()
    waiter.cancel()
    await settle()
    slots.release()
    assert slots.in_use == 0


@pytest.mark.parametrize("size", [0, -1])
def test_slots_size_below_one_is_rejected(size):
    with pytest.raises(ValueError, match="at least 1"):
        Slots(size)
