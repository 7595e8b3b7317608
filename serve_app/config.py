"""The application's one typed config: built from `serve_config.yaml` `args`, passed down to every replica.

Nothing below the application builder reads environment variables or files on its own; the builder
resolves paths once (relative to the working directory `serve run` was started in) and hands this
object to the ingress.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve_app.auth.settings import AuthSettings


class ApiLimits(BaseModel):
    """What one request may ask for; reported by `GET /api/agent/capabilities`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(4096 * 4096, ge=256)
    min_image_side: int = Field(16, ge=1)
    max_batch_items: int = Field(64, ge=1)
    max_inference_steps: int = Field(100, ge=1, le=200)
    min_octree_resolution: int = Field(32, ge=16)
    max_octree_resolution: int = Field(384, le=512)
    max_guidance_scale: float = Field(20.0, gt=0)
    max_list_page: int = Field(100, ge=1, le=200)
    max_wait_s: float = Field(30.0, ge=0)

    @model_validator(mode="after")
    def _ranges(self) -> ApiLimits:
        if self.min_octree_resolution > self.max_octree_resolution:
            raise ValueError("min_octree_resolution must not exceed max_octree_resolution")
        return self


class DefaultParams(BaseModel):
    """Generation parameters used when a request leaves them out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    octree_resolution: int = 256


class JobSettings(BaseModel):
    """The queue, the job store and the job workers: handed whole to ``JobStore`` and ``Dispatcher``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # queued jobs beyond which submissions get 503 queue_full (a soft bound: concurrent submits may pass it)
    max_queued: int = Field(1000, ge=1)
    queue_full_retry_after_s: int = Field(10, ge=1)
    # how long a job may wait to start before it expires (null: forever)
    default_deadline_s: float | None = Field(3600.0, gt=0)
    # runs of one job before it fails because its worker or model replica kept vanishing
    max_attempts: int = Field(3, ge=1)
    idempotency_ttl_s: float = Field(24 * 3600.0, gt=0)
    # a request still being processed under its Idempotency-Key after this long is taken as abandoned
    idempotency_pending_timeout_s: float = Field(120.0, gt=0)
    # false: the job workers claim nothing (drain/maintenance, or API-only benchmarks); the API still accepts
    dispatch: bool = True
    # jobs in flight per worker replica; >= the model's max_batch_size * (max_concurrent_batches + 1)
    dispatcher_concurrency: int = Field(8, ge=1)
    # a crashed worker's jobs are retried this long after its last heartbeat
    lease_s: float = Field(60.0, gt=0)
    # how often an idle worker looks for work (submissions wake one at once)
    poll_interval_s: float = Field(0.5, gt=0)
    # how often a worker expires overdue jobs, requeues lost leases and purges idempotency keys
    maintenance_interval_s: float = Field(10.0, gt=0)
    # on shutdown, jobs in flight may finish this long; the rest go back to the queue
    stop_grace_s: float = Field(30.0, ge=0)


class StreamSettings(BaseModel):
    """Server-sent events and ``?wait=`` long-polls: both follow the job in the shared store."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # how often a stream or long-poll re-reads its job
    poll_interval_s: float = Field(0.5, gt=0, le=10)
    # a comment line after this much silence keeps idle proxies from closing the stream
    keepalive_s: float = Field(15.0, gt=0)


class AppConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # dev: the embedded default; creates a development agent key and a master key on first start.
    mode: Literal["dev", "production"] = "dev"
    data_dir: Path = Path(".orfeas")
    # default: SQLite in the data directory; clusters: postgresql+asyncpg://user@host/db
    database_url: str | None = None
    # where agents reach the API (written into the dev key file; used for nothing security-relevant)
    public_url: str = "http://127.0.0.1:8000"
    # every auth decision is also appended here, one JSON object per line (relative to data_dir; null: off)
    auth_audit_file: str | None = "auth-audit.jsonl"
    # the model name jobs are recorded with and capabilities report (the builder fills in the generator's)
    model_name: str = "hunyuan3d-dit-v2-0"
    defaults: DefaultParams = DefaultParams()
    limits: ApiLimits = ApiLimits()
    jobs: JobSettings = JobSettings()
    streams: StreamSettings = StreamSettings()
    auth: AuthSettings = AuthSettings()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'orfeas.db'}"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def auth_audit_path(self) -> Path | None:
        return None if self.auth_audit_file is None else self.data_dir / self.auth_audit_file

    @property
    def dev_key_file(self) -> Path:
        return self.data_dir / "dev-agent.json"

    @property
    def dev_master_key_file(self) -> Path:
        return self.data_dir / "master.key"

    def resolved(self, base: Path) -> AppConfig:
        """The same config with a relative data directory made absolute against ``base``.

        Replicas run in other working directories than `serve run`, so the builder resolves paths once.
        """
        if self.data_dir.is_absolute():
            return self
        return self.model_copy(update={"data_dir": (base / self.data_dir).resolve()})
