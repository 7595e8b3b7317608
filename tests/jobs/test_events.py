from __future__ import annotations

from datetime import datetime

from serve_app.jobs import JobEvent, JobEvents

AT = datetime(2030, 1, 1)


def _event(job_id: str, progress: int) -> JobEvent:
    return JobEvent(job_id, "agent-a", "running", "generating", progress, AT)


async def test_job_events_reach_job_and_global_subscribers() -> None:
    events = JobEvents()
    with events.subscribe("job_1") as mine, events.subscribe() as everything:
        events.publish(_event("job_1", 10))
        events.publish(_event("job_2", 20))

        assert [mine.get_nowait().progress] == [10]
        assert mine.empty()
        assert [everything.get_nowait().job_id, everything.get_nowait().job_id] == ["job_1", "job_2"]


async def test_job_events_slow_follower_loses_oldest() -> None:
    events = JobEvents(max_pending=2)
    with events.subscribe("job_1") as queue:
        for progress in (10, 50, 90):
            events.publish(_event("job_1", progress))

        assert [queue.get_nowait().progress, queue.get_nowait().progress] == [50, 90]


async def test_job_events_unsubscribe_on_exit() -> None:
    events = JobEvents()
    with events.subscribe("job_1") as queue:
        pass

    events.publish(_event("job_1", 10))

    assert queue.empty()
