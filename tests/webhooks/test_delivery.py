"""Deliveries to a real local receiver: signed, retried, disabled, never redirected, redelivered after a crash."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks import Webhook

from serve_app.auth.secret import Secret
from serve_app.jobs import JobStore, utcnow
from serve_app.webhooks.endpoints import EndpointStore
from serve_app.webhooks.outbox import EVENT_TYPES, Outbox
from serve_app.webhooks.signing import secret_text
from tests.webhooks.helpers import AGENT, eventually, failed_job, settings, succeeded_job, worker
from tests.webhooks.receiver import always, receiver


async def _endpoint_state(endpoints: EndpointStore, endpoint_id: str) -> dict:
    endpoint = await endpoints.get(AGENT, endpoint_id)
    assert endpoint is not None
    return endpoint.__dict__


async def test_delivery_arrives_signed_and_verifies(
    engine: AsyncEngine, store: JobStore, endpoints: EndpointStore, master_key: Secret
) -> None:
    with receiver(always(200)) as target:
        endpoint, secret = await endpoints.create(AGENT, target.url, EVENT_TYPES, limit=10)
        job_id = await succeeded_job(store)  # enqueued before any worker runs: picked up at start
        deliveries = worker(engine, master_key)
        deliveries.start()
        try:
            (got,) = await target.wait_for(1)
            outbox = deliveries.outbox

            async def recorded() -> bool:
                return (await outbox.deliveries())[0]["status"] == "delivered"

            await eventually(recorded)
        finally:
            await deliveries.stop()
    assert got.headers["content-type"] == "application/json"
    assert got.headers["webhook-signature"].startswith("v1,")
    payload = Webhook(secret_text(secret)).verify(got.body, got.headers)
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["job_id"] == job_id
    (row,) = await outbox.deliveries()
    assert got.headers["webhook-id"] == row["id"]
    state = await _endpoint_state(endpoints, endpoint.id)
    assert (state["delivered_count"], state["last_status_code"], state["status"]) == (1, 200, "active")


async def test_delivery_retried_until_the_receiver_recovers_with_the_same_id(
    engine: AsyncEngine, store: JobStore, endpoints: EndpointStore, master_key: Secret
) -> None:
    with receiver(lambda n: (500 if n <= 2 else 204, {})) as target:
        endpoint, secret = await endpoints.create(AGENT, target.url, ["job.failed"], limit=10)
        await failed_job(store)
        deliveries = worker(engine, master_key)
        deliveries.start()
        try:
            received = await target.wait_for(3)

            async def delivered() -> bool:
                return (await deliveries.outbox.deliveries())[0]["status"] == "delivered"

            await eventually(delivered)
        finally:
            await deliveries.stop()
    assert len({r.headers["webhook-id"] for r in received}) == 1
    assert len({r.body for r in received}) == 1  # every attempt signs the same bytes
    for attempt in received:
        assert Webhook(secret_text(secret)).verify(attempt.body, attempt.headers)["type"] == "job.failed"
    (row,) = await deliveries.outbox.deliveries()
    assert row["attempts"] == 3
    state = await _endpoint_state(endpoints, endpoint.id)
    assert (state["delivered_count"], state["consecutive_failures"], state["failed_count"]) == (1, 0, 0)


async def test_delivery_endpoint_disabled_after_consecutive_failed_deliveries(
    engine: AsyncEngine, store: JobStore, endpoints: EndpointStore, master_key: Secret
) -> None:
    with receiver(always(500)) as target:
        endpoint, _ = await endpoints.create(AGENT, target.url, EVENT_TYPES, limit=10)
        await succeeded_job(store)
        await succeeded_job(store)
        deliveries = worker(engine, master_key, max_attempts=2, disable_after_failures=2)
        deliveries.start()
        try:

            async def disabled() -> bool:
                return (await _endpoint_state(endpoints, endpoint.id))["status"] == "disabled"

            await eventually(disabled)
        finally:
            await deliveries.stop()
        assert len(target.requests) == 4  # two deliveries, two attempts each
    state = await _endpoint_state(endpoints, endpoint.id)
    assert state["failed_count"] == 2 and state["consecutive_failures"] == 2
    assert state["last_error"] == "HTTP 500" and state["disabled_at"] is not None
    assert "2 deliveries in a row failed" in state["disabled_reason"]
    assert [row["status"] for row in await deliveries.outbox.deliveries()] == ["failed", "failed"]
    await succeeded_job(store)  # a disabled endpoint gets nothing more
    assert len(await deliveries.outbox.deliveries()) == 2


async def test_delivery_redirect_is_a_failure_and_not_followed(
    engine: AsyncEngine, store: JobStore, endpoints: EndpointStore, master_key: Secret
) -> None:
    with receiver(always(204)) as elsewhere, receiver() as target:
        target.answer = always(307, {"location": elsewhere.url})
        await endpoints.create(AGENT, target.url, EVENT_TYPES, limit=10)
        await succeeded_job(store)
        deliveries = worker(engine, master_key, max_attempts=1)
        deliveries.start()
        try:

            async def failed() -> bool:
                return (await deliveries.outbox.deliveries())[0]["status"] == "failed"

            await eventually(failed)
        finally:
            await deliveries.stop()
        assert len(target.requests) == 1
        assert elsewhere.requests == []
    (row,) = await deliveries.outbox.deliveries()
    assert row["last_status_code"] == 307
    assert row["last_error"] == "HTTP 307 (redirects are not followed)"


async def test_delivery_worker_restart_redelivers_pending_with_the_same_id(
    engine: AsyncEngine, store: JobStore, endpoints: EndpointStore, master_key: Secret
) -> None:
    hold = threading.Event()
    with receiver(always(200), hold=hold) as target:
        _, secret = await endpoints.create(AGENT, target.url, EVENT_TYPES, limit=10)
        await succeeded_job(store)
        await succeeded_job(store)
        first = worker(engine, master_key, batch_size=1)
        first.start()
        (in_flight,) = await target.wait_for(1)  # the receiver holds this attempt unanswered
        await first.stop()  # the worker goes away mid-attempt; the second delivery was never claimed
        rows = await Outbox(engine, settings(), clock=store.now).deliveries()
        assert [row["status"] for row in rows] == ["pending", "pending"]
        hold.set()
        # the restarted worker runs past the first one's lease (6 s), which it finds expired
        second = worker(engine, master_key, clock=lambda: utcnow() + timedelta(seconds=7))
        second.start()
        try:

            async def all_delivered() -> bool:
                rows = await second.outbox.deliveries()
                return all(row["status"] == "delivered" for row in rows)

            await eventually(all_delivered)
        finally:
            await second.stop()
        received = list(target.requests)
    ids = [r.headers["webhook-id"] for r in received]
    assert ids.count(in_flight.headers["webhook-id"]) == 2  # the interrupted attempt, made again
    assert len(set(ids)) == 2 and len(ids) == 3
    for attempt in received:
        Webhook(secret_text(secret)).verify(attempt.body, attempt.headers)
    assert {json.loads(r.body)["type"] for r in received} == {"job.succeeded"}
