"""The ingress's runtime: storage and auth, started and stopped together. It runs no jobs.

Built from the one :class:`AppConfig`. Submitting a job stores it and calls ``wake_workers`` (behind Ray
Serve: a fire-and-forget call to a ``JobWorker``; in-process tests: the test's dispatcher), so the
ingress never waits for, or holds, the workers; they also poll the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from concurrent_log_handler import ConcurrentRotatingFileHandler
from sqlalchemy.ext.asyncio import AsyncEngine

from serve_app.artifact_backend import ArtifactBackend
from serve_app.auth.crypto import load_master_key
from serve_app.auth.secret import Secret
from serve_app.config import AppConfig
from serve_app.dev_setup import prepare_dev_mode
from serve_app.jobs import JobStore
from serve_app.retention import RetentionSettings
from serve_app.storage import Storage

logger = logging.getLogger("orfeas.service")


def _decisions_only(record: logging.LogRecord) -> bool:
    return record.name == "orfeas.auth"


def attach_audit_file(path: Path, retention: RetentionSettings | None = None) -> None:
    """Append the ``orfeas.auth`` decision lines (already JSON) to ``path``, once per process and file,
    rotated at ``audit_max_bytes`` with ``audit_backups`` old files kept.

    Every ingress replica process on the host appends to the same file. A plain ``RotatingFileHandler`` is
    not safe then: each process decides alone when to rotate and keeps writing into the file another one
    renamed away. ``ConcurrentRotatingFileHandler`` takes an exclusive lock (a ``.lock`` file beside the log)
    around each write and rotation, and reopens the file when another process rotated it, so lines are
    neither lost nor interleaved and exactly one process rotates.
    """
    settings = retention or RetentionSettings()
    audit = logging.getLogger("orfeas.auth")
    target = str(path.resolve())
    if any(getattr(h, "baseFilename", None) == target for h in audit.handlers):
        return
    handler = ConcurrentRotatingFileHandler(
        target, maxBytes=settings.audit_max_bytes, backupCount=settings.audit_backups, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    # the decision lines only: ``orfeas.auth.internal`` (store failures, plain text) propagates here too and
    # would break the one-JSON-object-per-line file
    handler.addFilter(_decisions_only)
    audit.addHandler(handler)
    audit.setLevel(logging.INFO)


def _no_workers() -> None:
    """The default wake-up: nobody to wake (the workers' poll finds the job)."""


@dataclass
class AgentService:
    config: AppConfig
    storage: Storage
    master_key: Secret
    wake_workers: Callable[[], None] = field(default=_no_workers)

    @classmethod
    async def start(cls, config: AppConfig, wake_workers: Callable[[], None] = _no_workers) -> AgentService:
        """1. storage (data directory and schema included), 2. the audit file, 3. dev-mode keys, 4. the
        master key."""
        storage = await Storage.open(config)
        if config.auth_audit_path is not None:
            attach_audit_file(config.auth_audit_path, config.retention)
        if config.mode == "dev":
            config = await prepare_dev_mode(config, storage.engine)
        service = cls(config, storage, load_master_key(config.auth), wake_workers)
        logger.info("agent service up: database %s, data %s", storage.engine.url.render_as_string(), config.data_dir)
        return service

    @property
    def engine(self) -> AsyncEngine:
        return self.storage.engine

    @property
    def store(self) -> JobStore:
        return self.storage.store

    @property
    def artifacts(self) -> ArtifactBackend:
        return self.storage.artifacts

    async def ready(self) -> bool:
        return await self.storage.ready()

    async def check_health(self) -> None:
        """The replica health check: never raises for the database (see ``AgentIngress.check_health``)."""
        if not await self.ready():
            logger.warning("health check: the job database is unreachable; serving 503 until it is back")

    async def stop(self) -> None:
        await self.storage.close()
