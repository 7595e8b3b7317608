from __future__ import annotations

from serve_app.jobs import JobStore
from tests.jobs.helpers import AGENT_A, AGENT_B, ManualClock, new_job

AGENT_C = "agent-c"


async def _claim_agents(store: JobStore, clock: ManualClock, rounds: int) -> list[str]:
    """Claim one job per round (a dispatcher with one free slot), as time passes between rounds."""
    agents = []
    for _ in range(rounds):
        (job,) = await store.claim("worker-1", 1, lease_s=60)
        agents.append(job.agent)
        clock.advance(1)
    return agents


async def test_claim_single_job_is_not_starved_by_a_big_batch(store: JobStore, clock: ManualClock) -> None:
    await store.submit_batch(AGENT_A, [new_job() for _ in range(15)])
    clock.advance(1)
    (single,) = (await store.submit(AGENT_B, new_job())).jobs

    assert await _claim_agents(store, clock, 3) == [AGENT_A, AGENT_B, AGENT_A]
    assert (await store.get(AGENT_B, single.id)).status == "running"  # type: ignore[union-attr]


async def test_claim_many_at_once_interleaves_agents(store: JobStore, clock: ManualClock) -> None:
    await store.submit_batch(AGENT_A, [new_job() for _ in range(15)])
    clock.advance(1)
    await store.submit(AGENT_B, new_job())

    claimed = await store.claim("worker-1", 4, lease_s=60)

    assert sorted(job.agent for job in claimed) == [AGENT_A, AGENT_A, AGENT_A, AGENT_B]


async def test_claim_rotates_across_agents(store: JobStore, clock: ManualClock) -> None:
    for agent in (AGENT_A, AGENT_B, AGENT_C):
        await store.submit_batch(agent, [new_job() for _ in range(4)])
        clock.advance(1)

    assert await _claim_agents(store, clock, 7) == [AGENT_A, AGENT_B, AGENT_C] * 2 + [AGENT_A]


async def test_claim_serves_the_longest_waiting_agent_first(store: JobStore, clock: ManualClock) -> None:
    await store.submit_batch(AGENT_A, [new_job() for _ in range(3)])
    clock.advance(1)
    await store.submit_batch(AGENT_B, [new_job() for _ in range(3)])
    assert await _claim_agents(store, clock, 2) == [AGENT_A, AGENT_B]
    clock.advance(1)
    # C arrives late but has never been served: it goes first, then the rotation continues with A.
    await store.submit(AGENT_C, new_job())

    assert await _claim_agents(store, clock, 3) == [AGENT_C, AGENT_A, AGENT_B]


async def test_claim_critical_before_normal(store: JobStore, clock: ManualClock) -> None:
    await store.submit_batch(AGENT_A, [new_job() for _ in range(3)])
    clock.advance(1)
    (urgent,) = (await store.submit(AGENT_A, new_job(priority="critical"))).jobs

    (first,) = await store.claim("worker-1", 1, lease_s=60)

    assert first.id == urgent.id


async def test_claim_within_an_agent_keeps_submission_order(store: JobStore, clock: ManualClock) -> None:
    submitted = (await store.submit_batch(AGENT_A, [new_job() for _ in range(4)])).jobs

    claimed = [(await store.claim("worker-1", 1, lease_s=60))[0].id for _ in range(4)]

    assert claimed == [job.id for job in submitted]
