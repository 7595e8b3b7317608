"""The ingress's runtime: database, artifacts, job store, dispatcher and auth, started and stopped together.

Built from the one :class:`AppConfig`; the model call is injected (`GenerateFn`), so the same service runs
behind Ray Serve (calling the ShapeGenerator handle) and in-process tests (calling a plain function).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

import serve_app.auth.keys  # noqa: F401  (registers the auth tables on Base)
import serve_app.auth.nonces  # noqa: F401
import serve_app.auth.ratelimit  # noqa: F401
from serve_app.artifacts import ArtifactStore
from serve_app.auth.crypto import load_master_key
from serve_app.auth.secret import Secret
from serve_app.config import AppConfig
from serve_app.db import create_schema, make_engine
from serve_app.dev_setup import prepare_dev_mode
from serve_app.jobs import Dispatcher, DispatcherSettings, GenerateFn, JobStore, StoreSettings

logger = logging.getLogger("orfeas.service")


def attach_audit_file(path: Path) -> None:
    """Append the ``orfeas.auth`` decision lines (already JSON) to ``path``, once per process and file."""
    audit = logging.getLogger("orfeas.auth")
    target = str(path.resolve())
    if any(getattr(h, "baseFilename", None) == target for h in audit.handlers):
        return
    handler = logging.FileHandler(target, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    audit.addHandler(handler)
    audit.setLevel(logging.INFO)


@dataclass
class AgentService:
    config: AppConfig
    engine: AsyncEngine
    artifacts: ArtifactStore
    store: JobStore
    dispatcher: Dispatcher
    master_key: Secret
    started: bool = field(default=False)

    @classmethod
    async def start(cls, config: AppConfig, generate: GenerateFn, *, run_dispatcher: bool | None = None) -> AgentService:
        """1. dev-mode bootstrap, 2. schema, 3. stores, 4. the dispatcher (claims queued jobs at once, so
        jobs left by a previous run resume)."""
        config.data_dir.mkdir(parents=True, exist_ok=True)
        if config.auth_audit_path is not None:
            attach_audit_file(config.auth_audit_path)
        engine = make_engine(config.resolved_database_url)
        await create_schema(engine)
        if config.mode == "dev":
            config = await prepare_dev_mode(config, engine)
        master_key = load_master_key(config.auth)
        artifacts = ArtifactStore(config.artifacts_dir)
        jobs = config.jobs
        store = JobStore(
            engine, artifacts,
            StoreSettings(
                max_queued=jobs.max_queued, queue_full_retry_after_s=jobs.queue_full_retry_after_s,
                default_deadline_s=jobs.default_deadline_s, max_attempts=jobs.max_attempts,
                idempotency_ttl_s=jobs.idempotency_ttl_s,
            ),
        )  # fmt: skip
        dispatcher = Dispatcher(
            store, artifacts, generate,
            DispatcherSettings(concurrency=jobs.dispatcher_concurrency, lease_s=jobs.lease_s,
                               poll_interval_s=jobs.poll_interval_s),
        )  # fmt: skip
        service = cls(config, engine, artifacts, store, dispatcher, master_key)
        if config.jobs.dispatch if run_dispatcher is None else run_dispatcher:
            await dispatcher.start()
            service.started = True
        logger.info("agent service up: database %s, data %s", engine.url.render_as_string(), config.data_dir)
        return service

    async def ready(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - readiness reports, it does not raise
            logger.warning("database not reachable", exc_info=True)
            return False

    async def stop(self) -> None:
        if self.started:
            await self.dispatcher.stop()
            self.started = False
        await self.engine.dispose()
