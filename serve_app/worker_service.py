"""The job worker's runtime: storage and the dispatcher, started and stopped together (no Ray here).

The ``JobWorker`` deployment wraps it with the ShapeGenerator handle as the model call; in-process tests
run it with a plain async function.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from serve_app.config import AppConfig
from serve_app.jobs import Dispatcher, GenerateFn
from serve_app.storage import Storage

logger = logging.getLogger("orfeas.worker")


@dataclass
class WorkerService:
    config: AppConfig
    storage: Storage
    dispatcher: Dispatcher
    running: bool = False

    @classmethod
    async def start(cls, config: AppConfig, generate: GenerateFn, *, dispatch: bool | None = None) -> WorkerService:
        """Open storage and start claiming at once, so jobs left by a previous run resume.

        ``dispatch`` overrides ``config.jobs.dispatch`` (tests that keep jobs queued).
        """
        storage = await Storage.open(config)
        dispatcher = Dispatcher(storage.store, storage.artifacts, generate, config.jobs)
        service = cls(config, storage, dispatcher)
        if config.jobs.dispatch if dispatch is None else dispatch:
            await dispatcher.start()
            service.running = True
        logger.info("job worker %s up (dispatching: %s)", dispatcher.worker_id, service.running)
        return service

    def notify(self) -> None:
        """A job was submitted: claim now instead of at the next poll."""
        self.dispatcher.notify()

    async def stop(self) -> None:
        """Jobs in flight get ``jobs.stop_grace_s`` to finish; the rest go back to the queue."""
        if self.running:
            await self.dispatcher.stop()
            self.running = False
        await self.storage.close()
