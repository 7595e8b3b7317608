"""The per-agent event-stream cap through Serve's real HTTP proxy: the slot is held across the proxy hop, the
429 keeps its headers, and a client that hangs up frees its slot (the proxy cancels the replica's request)."""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.hunyuan3d.conftest import IMAGES
from tests.integration.conftest import APP_NAME, deploy

pytestmark = [pytest.mark.ray, pytest.mark.slow]

IMAGE_B64 = base64.b64encode((IMAGES / "soft_rgba.png").read_bytes()).decode()


def _open_stream(stack: contextlib.ExitStack, client: httpx.Client, job_id: str) -> Iterator[str]:
    """An event stream held open until ``stack`` closes: its response lines, the first event read.

    Keep the iterator: dropping it closes the connection (httpcore closes a stream whose reader goes away)."""
    response = stack.enter_context(client.stream("GET", f"/api/agent/jobs/{job_id}/events"))
    assert response.status_code == 200, response.read()
    lines = response.iter_lines()
    assert next(lines) == "event: job"
    return lines


def _refused_stream(client: httpx.Client, job_id: str) -> httpx.Response:
    # streamed, so that a stream wrongly let through fails the test instead of blocking it
    with client.stream("GET", f"/api/agent/jobs/{job_id}/events") as response:
        if response.status_code == 200:
            return response
        response.read()
        return response


@pytest.mark.timeout(300)
def test_quota_proxy_third_stream_is_429_and_hanging_up_frees_a_slot(ray_session, tmp_path):
    from ray import serve

    app = deploy(
        ray_session,
        tmp_path / "data",
        jobs={"dispatch": False},  # jobs stay queued, so their streams stay open
        quotas={"max_event_streams": 2, "retry_after_s": 3},
    )
    try:
        with app.client() as client, contextlib.ExitStack() as first, contextlib.ExitStack() as second:
            job_id = client.post("/api/agent/jobs", json={"image": IMAGE_B64}).json()["job_id"]
            held = [_open_stream(first, client, job_id), _open_stream(second, client, job_id)]

            refused = _refused_stream(client, job_id)

            assert refused.status_code == 429
            assert refused.json() == {
                "type": "rate_limit_error",
                "code": "too_many_streams",
                "message": "this agent already holds 2 open event streams (its limit); close one or retry later",
                "retryable": True,
                "request_id": refused.headers["x-request-id"],
            }
            assert refused.headers["retry-after"] == "3"
            assert refused.headers["ratelimit-policy"] == '"event-streams";q=2;qu="concurrent-requests"'
            assert refused.headers["ratelimit"] == '"event-streams";r=0;t=3'

            first.close()  # hang up: the proxy cancels that request and its slot is released
            deadline = time.monotonic() + 60
            while (retry := _refused_stream(client, job_id)).status_code == 429:
                assert time.monotonic() < deadline, "the slot was never freed"
                time.sleep(0.2)
            assert retry.status_code == 200 and len(held) == 2
    finally:
        serve.delete(APP_NAME)
