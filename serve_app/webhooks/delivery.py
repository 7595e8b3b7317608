"""The delivery loop of a job worker: claim due attempts from the outbox, POST them signed, record outcomes.

A 2xx answer delivers; anything else (another status, a 3xx included: redirects are never followed, a
timeout, a refused connection, an address the SSRF guard refuses) is a failed attempt, retried with backoff
by :class:`~serve_app.webhooks.outbox.Outbox`. Nothing lives only in memory: stopping the loop mid-attempt
leaves the attempt leased, and another worker (or this one, restarted) makes it again after ``lease_s`` with
the same ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable
from datetime import datetime

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from serve_app.auth.crypto import load_master_key
from serve_app.auth.secret import Secret
from serve_app.config import AppConfig
from serve_app.webhooks.endpoints import EndpointStore
from serve_app.webhooks.outbox import Delivery, Outbox
from serve_app.webhooks.settings import WebhookSettings
from serve_app.webhooks.signing import signed_headers
from serve_app.webhooks.ssrf import HostPolicy, UrlGuard, UrlRefused, guarded_client

logger = logging.getLogger("orfeas.webhooks")

MasterKeyLoader = Callable[[], Secret]


class DeliveryWorker:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: WebhookSettings,
        master_key: MasterKeyLoader,
        *,
        dev: bool,
        clock: Callable[[], datetime],
        guard: UrlGuard | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id or f"webhooks-{socket.gethostname()}-{secrets.token_hex(4)}"
        self.outbox = Outbox(engine, settings, clock=clock)
        self._engine = engine
        self._master_key = master_key
        self._endpoints: EndpointStore | None = None
        self._clock = clock
        self._guard = guard or UrlGuard(HostPolicy.from_settings(settings.allowed_hosts, dev=dev))
        self._client: httpx.AsyncClient | None = None
        self._wake = asyncio.Event()
        self.loop_task: asyncio.Task[None] | None = None

    def _store(self) -> EndpointStore:
        # The master key is loaded at the first delivery, not at start: in dev mode the ingress creates it.
        if self._endpoints is None:
            self._endpoints = EndpointStore(self._engine, self._master_key(), clock=self._clock)
        return self._endpoints

    def start(self) -> None:
        self._client = guarded_client(self._guard, timeout_s=self.settings.timeout_s)
        self.loop_task = asyncio.create_task(self._loop(), name="webhook-deliveries")

    def notify(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Stop at once: an attempt in flight stays leased and is made again after ``lease_s``."""
        if self.loop_task is not None:
            self.loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.loop_task
            self.loop_task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _loop(self) -> None:
        while True:
            try:
                sent = await self.run_once()
            except Exception:
                logger.exception("webhook delivery pass failed; retrying in %s s", self.settings.poll_interval_s)
                sent = 0
            if sent < self.settings.batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval_s)
                self._wake.clear()

    async def run_once(self) -> int:
        """Claim one batch of due attempts and make them concurrently; returns how many were claimed."""
        claimed = await self.outbox.claim(self.worker_id, self.settings.batch_size)
        if claimed:
            await asyncio.gather(*(self._attempt(delivery) for delivery in claimed))
        return len(claimed)

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            await self._attempt_once(delivery)
        except Exception:
            # a database error recording the outcome: the lease expires and the attempt is made again
            logger.exception("webhook delivery %s: recording the attempt failed", delivery.id)

    async def _attempt_once(self, delivery: Delivery) -> None:
        target = await self._store().target(delivery.endpoint_id)
        if target is None or target[0].status != "active":
            await self.outbox.abandon(delivery, self.worker_id, reason="the endpoint was deleted or disabled")
            return
        endpoint, secret = target
        headers = signed_headers(secret, delivery.id, delivery.payload, self._clock())
        status_code: int | None = None
        try:
            await self._guard.check(endpoint.url)  # before the connect-time check: refuses with a clear reason
            assert self._client is not None
            request = self._client.build_request("POST", endpoint.url, content=delivery.payload, headers=headers)
            response = await self._client.send(request, stream=True)  # the receiver's body is not read
            await response.aclose()
            status_code = response.status_code
        except UrlRefused as exc:
            error = f"refused by the SSRF guard: {exc}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        else:
            if 200 <= status_code < 300:
                await self.outbox.delivered(delivery, self.worker_id, status_code=status_code)
                return
            error = f"HTTP {status_code}" + (" (redirects are not followed)" if 300 <= status_code < 400 else "")
        outcome = await self.outbox.attempt_failed(delivery, self.worker_id, error=error, status_code=status_code)
        logger.info(
            "webhook delivery %s to %s attempt %d failed (%s): %s",
            delivery.id,
            endpoint.id,
            delivery.attempts,
            outcome,
            error,
        )


def master_key_loader(config: AppConfig) -> MasterKeyLoader:
    """Loads the master key the ingress uses: in dev mode, without a configured source, the dev key file the
    ingress creates at start (the worker may start first, hence a loader called at the first delivery)."""
    auth = config.auth
    if config.mode == "dev" and auth.master_key_file is None and not os.environ.get(auth.master_key_env):
        auth = auth.model_copy(update={"master_key_file": config.dev_master_key_file})
    return lambda: load_master_key(auth)
