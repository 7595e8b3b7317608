"""The job worker's runtime: storage, the dispatcher, the retention sweeper and the webhook deliveries, started
and stopped together (no Ray here).

The ``JobWorker`` deployment wraps it with one model call per served model (each ShapeGenerator's handle);
in-process tests run it with plain async functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from serve_app.config import AppConfig
from serve_app.jobs import Dispatcher, utcnow
from serve_app.jobs.dispatcher import ModelCalls
from serve_app.retention import Sweeper
from serve_app.storage import Storage
from serve_app.webhooks.delivery import DeliveryWorker, master_key_loader

logger = logging.getLogger("orfeas.worker")


@dataclass
class WorkerService:
    config: AppConfig
    storage: Storage
    dispatcher: Dispatcher
    sweeper: Sweeper
    running: bool = False
    webhooks: DeliveryWorker | None = None
    _sweep_task: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    async def start(
        cls, config: AppConfig, generate: ModelCalls, *, dispatch: bool | None = None, sweep: bool = True
    ) -> WorkerService:
        """Open storage and start claiming at once, so jobs left by a previous run resume; start sweeping.

        ``generate``: model name -> model call (a job runs on its ``model``'s), or one call for every job.

        ``dispatch`` overrides ``config.jobs.dispatch`` (tests that keep jobs queued); ``sweep=False``
        leaves retention to explicit ``sweeper.sweep()`` calls (tests). A worker that does not dispatch still
        sweeps: retention does not depend on jobs being run.
        """
        storage = await Storage.open(config)
        dispatcher = Dispatcher(
            storage.store,
            storage.artifacts,
            generate,
            config.jobs,
            storage_retry_s=config.retention.storage_retry_after_s,
        )
        service = cls(config, storage, dispatcher, Sweeper(storage.store, storage.artifacts, config.retention))
        if config.jobs.dispatch if dispatch is None else dispatch:
            await dispatcher.start()
            service.running = True
        if config.webhooks.deliver:
            service.webhooks = DeliveryWorker(
                storage.engine, config.webhooks, master_key_loader(config), dev=config.mode == "dev", clock=utcnow
            )
            service.webhooks.start()
        if sweep:
            service._sweep_task = asyncio.create_task(service._sweep_loop(), name="retention-sweeper")
        logger.info("job worker %s up (dispatching: %s)", dispatcher.worker_id, service.running)
        return service

    def notify(self) -> None:
        """A job was submitted: claim now instead of at the next poll."""
        self.dispatcher.notify()

    def check_health(self) -> None:
        """Raise only for what a replica restart would cure: the dispatcher's or the sweeper's loop died.

        A database blip is not one of those: the loops ride it out (leases protect the jobs), and
        restarting the replica would only requeue its jobs in flight.
        """
        webhooks = self.webhooks.loop_task if self.webhooks is not None else None
        for name, task in (
            ("dispatcher", self.dispatcher.loop_task),
            ("sweeper", self._sweep_task),
            ("webhooks", webhooks),
        ):
            if task is not None and task.done() and not self.dispatcher.stopping:
                raise RuntimeError(f"the job worker's {name} loop stopped")

    async def _sweep_loop(self) -> None:
        # Several workers sweep the same store; each pass is idempotent, so no coordination is needed.
        while True:
            try:
                await self.sweeper.sweep()
            except Exception:
                logger.exception("retention sweep failed; retrying in %s s", self.config.retention.sweep_interval_s)
            await asyncio.sleep(self.config.retention.sweep_interval_s)

    async def stop(self) -> None:
        """Jobs in flight get ``jobs.stop_grace_s`` to finish; the rest go back to the queue."""
        if self._sweep_task is not None:
            self._sweep_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweep_task
            self._sweep_task = None
        if self.running:
            await self.dispatcher.stop()
            self.running = False
        if self.webhooks is not None:
            await self.webhooks.stop()  # an attempt in flight is made again after its lease (at-least-once)
        await self.storage.close()
