"""The durable side both replicas open: the database (schema at the newest revision), artifacts and the job store.

The ingress and the job workers each open their own from the one :class:`AppConfig`; they share nothing
in memory, only the database and the artifact directory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

import serve_app.auth.keys
import serve_app.auth.nonces
import serve_app.auth.ratelimit
import serve_app.webhooks.models  # noqa: F401
from serve_app.artifact_backend import ArtifactBackend
from serve_app.artifacts import LocalArtifactStore
from serve_app.config import AppConfig
from serve_app.db import make_engine
from serve_app.jobs import JobStore
from serve_app.schema import prepare_schema

logger = logging.getLogger("orfeas.storage")


@dataclass
class Storage:
    engine: AsyncEngine
    artifacts: ArtifactBackend
    store: JobStore

    @classmethod
    async def open(cls, config: AppConfig) -> Storage:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(config.resolved_database_url)
        try:
            # dev upgrades to the newest revision; production refuses an old schema (SchemaError names the fix)
            await prepare_schema(engine, config.mode)
        except BaseException:
            await engine.dispose()
            raise
        artifacts = open_artifacts(config)
        return cls(engine, artifacts, JobStore(engine, artifacts, config.jobs, retention=config.retention))

    async def ready(self) -> bool:
        """Whether the database answers (readiness and health checks)."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception as exc:  # readiness reports, it does not raise
            # no traceback: health checks ask every few seconds for as long as the outage lasts
            logger.warning("database not reachable: %s", type(exc).__name__)
            return False

    async def close(self) -> None:
        await self.engine.dispose()


def open_artifacts(config: AppConfig) -> ArtifactBackend:
    """The artifact store ``app.artifacts`` names: files under ``data_dir`` or objects in a bucket."""
    settings = config.artifacts
    if settings.kind == "s3":
        from serve_app.artifacts_s3 import S3ArtifactStore  # obstore: loaded only where a bucket is used

        return S3ArtifactStore(settings)
    return LocalArtifactStore(config.artifacts_dir)
