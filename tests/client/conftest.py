"""A live agent API on 127.0.0.1 for the synchronous SDK: the in-process service of tests/serve_app (real
auth, SQLite, artifacts, dispatcher; stand-in model) served by uvicorn on a free port, in a background
thread with its own event loop. httpx's ASGITransport is async-only, so a sync client needs a real socket.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvicorn

from serve_app.auth.keys import KeyStore
from serve_app.client import AgentClient
from serve_app.http_app import build_http_app
from serve_app.service import AgentService
from tests.serve_app.conftest import Api, start_api

T = TypeVar("T")


class LiveApi:
    """The running server: its URL, the dev key file it wrote, and a way to run coroutines on its loop."""

    def __init__(self, url: str, api: Api, loop: asyncio.AbstractEventLoop) -> None:
        self.url = url
        self.service: AgentService = api.service
        self.api = api
        self.loop = loop
        self.key_file = api.service.config.dev_key_file
        dev = json.loads(self.key_file.read_text())
        self.key_id: str = dev["key_id"]
        self.secret: str = dev["secret"]

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def client(self, **kwargs: Any) -> AgentClient:
        return AgentClient(self.url, self.key_id, self.secret, **kwargs)

    def new_key(self, agent: str, scopes: tuple[str, ...] = ("jobs:read", "jobs:write")) -> tuple[str, str]:
        material = self.run(KeyStore(self.service.engine, self.service.master_key).create(agent, scopes=list(scopes)))
        return material.info.key_id, material.secret_b64()

    def wait_until(self, job_id: str, status: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while (job := self.run(self.service.store.get("dev-agent", job_id))).status != status:
            assert time.monotonic() < deadline, f"job {job_id} still {job.status}, not {status}"
            time.sleep(0.02)


@contextmanager
def serve_api(tmp_path: Path, **overrides: Any) -> Iterator[LiveApi]:
    """Start the service and uvicorn on a fresh loop in a thread; stop both on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="live-api", daemon=True)
    thread.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(15)

    # public_url goes into the dev key file, so `--key-file` alone reaches this server
    api = run(start_api(tmp_path, public_url=url, **overrides))
    run(api.client.aclose())  # start_api's ASGI client; we serve over a socket instead (closing twice is fine)
    config = uvicorn.Config(
        build_http_app(api.service),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    serving = asyncio.run_coroutine_threadsafe(server.serve(sockets=[sock]), loop)
    deadline = time.monotonic() + 10
    while not server.started:
        assert not serving.done(), serving.exception()
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield LiveApi(url, api, loop)
    finally:
        server.should_exit = True
        serving.result(15)
        run(api.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        sock.close()


@pytest.fixture
def live_api(tmp_path: Path) -> Iterator[LiveApi]:
    with serve_api(tmp_path) as api:
        yield api


@pytest.fixture
def paused_live_api(tmp_path: Path) -> Iterator[LiveApi]:
    """No dispatcher (jobs stay queued) and room for 3 queued jobs, with a 1 s Retry-After when full."""
    with serve_api(tmp_path, dispatcher=False, jobs={"max_queued": 3, "queue_full_retry_after_s": 1}) as api:
        yield api


@pytest.fixture
def client(live_api: LiveApi) -> Iterator[AgentClient]:
    with live_api.client() as client:
        yield client
