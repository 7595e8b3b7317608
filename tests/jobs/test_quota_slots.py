"""Leased stream and long-poll slots in the shared database, on SQLite and on the local Postgres."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from serve_app.quota_store import SLOTS, SlotLimitReached, StreamSlots

from .helpers import AGENT_A, AGENT_B, ManualClock


@pytest.fixture
def slots(engine: AsyncEngine, clock: ManualClock) -> StreamSlots:
    return StreamSlots(engine, lease_s=30.0, clock=clock)


async def test_slots_acquire_up_to_the_limit_then_refuse(slots: StreamSlots) -> None:
    await slots.acquire(AGENT_A, "event_stream", 2)
    await slots.acquire(AGENT_A, "event_stream", 2)

    with pytest.raises(SlotLimitReached) as raised:
        await slots.acquire(AGENT_A, "event_stream", 2)

    assert (raised.value.kind, raised.value.limit) == ("event_stream", 2)
    assert str(raised.value) == "this agent already holds 2 open event streams (its limit)"
    assert await slots.live(AGENT_A, "event_stream") == 2  # the refused insert was rolled back


async def test_slots_count_per_agent_and_kind(slots: StreamSlots) -> None:
    await slots.acquire(AGENT_A, "event_stream", 1)

    await slots.acquire(AGENT_A, "long_poll", 1)
    await slots.acquire(AGENT_B, "event_stream", 1)

    assert [await slots.live(a, k) for a, k in ((AGENT_A, "event_stream"), (AGENT_A, "long_poll"))] == [1, 1]
    assert await slots.live(AGENT_B, "event_stream") == 1


async def test_slots_lease_context_releases_on_exit_and_on_cancel(slots: StreamSlots) -> None:
    async with await slots.acquire(AGENT_A, "long_poll", 1):
        assert await slots.live(AGENT_A, "long_poll") == 1
    assert await slots.live(AGENT_A, "long_poll") == 0

    held = asyncio.Event()

    async def hold_forever() -> None:
        async with await slots.acquire(AGENT_A, "long_poll", 1):
            held.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(hold_forever())
    await asyncio.wait_for(held.wait(), timeout=30)
    task.cancel()  # what a disconnecting client does to its request
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await slots.live(AGENT_A, "long_poll") == 0


async def test_slots_of_a_crashed_replica_free_themselves(slots: StreamSlots, clock: ManualClock) -> None:
    # held and never released: the replica died mid-stream
    await slots.acquire(AGENT_A, "event_stream", 2)
    await slots.acquire(AGENT_A, "event_stream", 2)
    clock.advance(29)
    with pytest.raises(SlotLimitReached):
        await slots.acquire(AGENT_A, "event_stream", 2)

    clock.advance(2)  # past the 30 s lease

    assert await slots.live(AGENT_A, "event_stream") == 0
    await slots.acquire(AGENT_A, "event_stream", 2)
    await slots.acquire(AGENT_A, "event_stream", 2)


async def test_slots_acquire_deletes_the_agents_dead_slots(
    engine: AsyncEngine, slots: StreamSlots, clock: ManualClock
) -> None:
    await slots.acquire(AGENT_A, "long_poll", 5)
    await slots.acquire(AGENT_B, "long_poll", 5)
    clock.advance(31)

    fresh = await slots.acquire(AGENT_A, "long_poll", 5)

    async with engine.connect() as conn:
        rows = (await conn.execute(select(SLOTS.c.id, SLOTS.c.agent))).all()
    # agent A's dead slot is gone; agent B's waits for B's next acquire (it no longer counts anyway)
    assert sorted(agent for _, agent in rows) == [AGENT_A, AGENT_B]
    assert fresh.slot_id in {slot_id for slot_id, _ in rows}


async def test_slots_renew_keeps_a_long_stream_alive(slots: StreamSlots, clock: ManualClock) -> None:
    lease = await slots.acquire(AGENT_A, "event_stream", 1)
    for _ in range(4):  # two minutes of renewals every 20 s, four times the lease
        clock.advance(20)
        assert await slots.renew(lease.slot_id)
    with pytest.raises(SlotLimitReached):
        await slots.acquire(AGENT_A, "event_stream", 1)

    await slots.release(lease.slot_id)

    assert not await slots.renew(lease.slot_id)
    await slots.acquire(AGENT_A, "event_stream", 1)


async def test_slots_lease_renews_in_the_background(engine: AsyncEngine, clock: ManualClock) -> None:
    slots = StreamSlots(engine, lease_s=0.3, clock=clock)  # renewed every 0.1 s of real time
    async with await slots.acquire(AGENT_A, "event_stream", 1):
        clock.advance(60)  # long past the lease: only a renewal made after this makes the slot count again
        deadline = time.monotonic() + 30
        while await slots.live(AGENT_A, "event_stream") == 0:
            assert time.monotonic() < deadline, "the lease was not renewed"
            await asyncio.sleep(0.05)
    assert await slots.live(AGENT_A, "event_stream") == 0


async def test_slots_cap_is_exact_under_concurrent_acquires(slots: StreamSlots) -> None:
    outcomes = await asyncio.gather(
        *(slots.acquire(AGENT_A, "event_stream", 3) for _ in range(8)), return_exceptions=True
    )

    refused = [o for o in outcomes if isinstance(o, SlotLimitReached)]
    assert (len(outcomes) - len(refused), len(refused)) == (3, 5)
    assert await slots.live(AGENT_A, "event_stream") == 3
