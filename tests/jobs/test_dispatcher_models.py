"""The dispatcher with several models: each job reaches its own model's call; an unserved model fails the job."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from deployments.contract import ErrorCode
from serve_app.artifacts import ArtifactStore
from serve_app.config import JobSettings
from serve_app.jobs import Dispatcher, JobStore
from tests.jobs.helpers import AGENT_A, FakeModel, new_job, wait_for_status

FAST = JobSettings(poll_interval_s=0.05, maintenance_interval_s=0.1, lease_s=3.0, stop_grace_s=5)


async def test_dispatcher_models_each_job_reaches_its_models_call(engine: AsyncEngine, artifacts: ArtifactStore):
    store = JobStore(engine, artifacts, FAST)
    small, large = FakeModel(), FakeModel()
    dispatcher = Dispatcher(store, artifacts, {"small": small, "large": large}, FAST)
    await dispatcher.start()
    try:
        (on_large,) = (await store.submit(AGENT_A, new_job(model="large", seed=1))).jobs
        (on_small,) = (await store.submit(AGENT_A, new_job(model="small", seed=2))).jobs
        dispatcher.notify()
        for job in (on_large, on_small):
            await wait_for_status(store, AGENT_A, job.id, ["succeeded"])
    finally:
        await dispatcher.stop()
    assert [request.job_id for request in large.calls] == [on_large.id]
    assert [request.job_id for request in small.calls] == [on_small.id]


async def test_dispatcher_models_a_job_on_an_unserved_model_fails_naming_it(
    engine: AsyncEngine, artifacts: ArtifactStore
):
    store = JobStore(engine, artifacts, FAST)
    served = FakeModel()
    dispatcher = Dispatcher(store, artifacts, {"small": served}, FAST)
    await dispatcher.start()
    try:
        (gone,) = (await store.submit(AGENT_A, new_job(model="retired"))).jobs
        (kept,) = (await store.submit(AGENT_A, new_job(model="small"))).jobs
        dispatcher.notify()
        failed = await wait_for_status(store, AGENT_A, gone.id, ["failed"])
        await wait_for_status(store, AGENT_A, kept.id, ["succeeded"])
    finally:
        await dispatcher.stop()
    assert (failed.error_code, failed.attempts) == (ErrorCode.MODEL_UNAVAILABLE.value, 1)
    assert failed.error_message is not None and "'retired'" in failed.error_message
    assert "['small']" in failed.error_message
    assert [request.job_id for request in served.calls] == [kept.id]
