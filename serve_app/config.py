"""The application's one typed config: built from `serve_config.yaml` `args`, passed down to every replica.

Nothing below the application builder reads environment variables or files on its own; the builder
resolves paths once (relative to the working directory `serve run` was started in) and hands this
object to the ingress.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.contract import DEFAULT_MAX_FACES, MAX_FACES_LIMIT, MeshOptions, RemoveBackground
from deployments.hunyuan3d.params import recommended_params
from serve_app.artifact_settings import ArtifactSettings, LocalArtifactSettings
from serve_app.auth.settings import AuthSettings
from serve_app.model_catalog import GENERATOR_DEPLOYMENT, ModelCatalog, ServedModel, model_family, variant_views
from serve_app.quotas import QuotaSettings
from serve_app.retention import RetentionSettings
from serve_app.webhooks.settings import WebhookSettings


class ApiLimits(BaseModel):
    """What one request may ask for; reported by `GET /api/agent/capabilities`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_image_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest accepted image in bytes (decoded); larger ones get 413."
    )
    max_image_pixels: int = Field(
        4096 * 4096,
        ge=256,
        description="Most pixels (width x height) an image may have; decompression bombs are refused from the header.",
    )
    min_image_side: int = Field(16, ge=1, description="Shortest accepted image side in pixels; smaller ones get 422.")
    image_metadata_allowance_bytes: int = Field(
        256 * 1024,
        ge=0,
        description="Bytes an image may carry beyond twice its raw pixel size (ICC profile, EXIF, XMP); a larger "
        "encoding gets 422 `image_oversized_encoding`. Accepted images are stored re-encoded without metadata.",
    )
    max_request_pixels: int = Field(
        4 * 4096 * 4096,
        ge=256,
        description="Decode budget of one request: total pixels of all its images (a batch's items together), "
        "checked from their headers before any is decoded; more gets 413 `decode_budget_exceeded`.",
    )
    decode_workers: int = Field(
        2,
        ge=1,
        le=64,
        description="Threads per ingress process that decode and re-encode images off the event loop (Pillow "
        "releases the GIL meanwhile); further images wait their turn.",
    )
    max_json_depth: int = Field(
        32,
        ge=4,
        le=512,
        description="Deepest nesting of arrays/objects in a JSON body or the multipart `params` field; deeper "
        "bodies get 400 `json_too_deep` before they are parsed.",
    )
    max_json_values: int = Field(
        10_000,
        ge=100,
        description="Most values, strings and escapes a JSON body may hold (a full batch holds a few hundred); "
        "more get 400 `json_too_complex` before parsing, which holds the GIL and so the event loop.",
    )
    max_batch_items: int = Field(64, ge=1, description="Items per `POST /api/agent/batches`.")
    max_inference_steps: int = Field(100, ge=1, le=200, description="Most `num_inference_steps` an agent may ask for.")
    min_octree_resolution: int = Field(32, ge=16, description="Lowest `octree_resolution` an agent may ask for.")
    max_octree_resolution: int = Field(384, le=512, description="Highest `octree_resolution` an agent may ask for.")
    max_guidance_scale: float = Field(20.0, gt=0, description="Highest `guidance_scale` an agent may ask for.")
    max_list_page: int = Field(100, ge=1, le=200, description="Most jobs one page of a job list returns.")
    max_wait_s: float = Field(
        30.0,
        ge=0,
        description="Cap of the `?wait=` long-poll in seconds; keep it below the proxy's `request_timeout_s`.",
    )
    max_face_budget: int = Field(
        500_000,
        ge=1_000,
        le=MAX_FACES_LIMIT,
        description="Highest `max_faces` an agent may ask for (`0`, no reduction, is always allowed).",
    )

    @model_validator(mode="after")
    def _ranges(self) -> ApiLimits:
        if self.min_octree_resolution > self.max_octree_resolution:
            raise ValueError("min_octree_resolution must not exceed max_octree_resolution")
        if self.max_json_values < 16 * self.max_batch_items:
            raise ValueError("max_json_values must be at least 16 x max_batch_items, or a full batch could not pass")
        if self.max_request_pixels < self.max_image_pixels:
            raise ValueError("max_request_pixels must be at least max_image_pixels, or no largest image could pass")
        return self


class DefaultParams(BaseModel):
    """Generation parameters used when a request leaves them out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_inference_steps: int | None = Field(
        None,
        description="Denoising steps of a job that does not set them (null: the model's own, 5 for -turbo, 10 for "
        "-fast, 50 otherwise); fewer are faster and coarser.",
    )
    guidance_scale: float | None = Field(
        None, description="Guidance scale of a job that does not set it (null: the model's own, 5.0)."
    )
    octree_resolution: int | None = Field(
        None,
        description="Surface extraction grid of a job that does not set it (null: the model's own, 256); higher is "
        "finer and slower.",
    )
    max_faces: int = Field(
        DEFAULT_MAX_FACES,
        description="Face budget of a job's mesh (quadric decimation), as the official server's 40,000; 0: none.",
    )
    remove_floaters: bool = Field(True, description="Drop small pieces floating apart from the object.")
    remove_background: RemoveBackground = Field(
        "auto", description="`auto`: remove the background of images without a meaningful alpha; `always`; `never`."
    )

    @model_validator(mode="after")
    def _mesh_defaults(self) -> DefaultParams:
        MeshOptions(self.max_faces, self.remove_floaters)  # refuses a budget no job could use, naming it
        return self

    def for_model(self, variant: str) -> dict[str, Any]:
        """Every default a job gets, the model's own where this config leaves them null."""
        recommended = recommended_params(variant)
        defaults = self.model_dump()
        for name in ("num_inference_steps", "guidance_scale", "octree_resolution"):
            if defaults[name] is None:
                defaults[name] = getattr(recommended, name)
        return defaults


class JobSettings(BaseModel):
    """The queue, the job store and the job workers: handed whole to ``JobStore`` and ``Dispatcher``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_queued: int = Field(
        1000,
        ge=1,
        description="Queued jobs beyond which submissions get `503 queue_full` + `Retry-After` "
        "(a soft bound: concurrent submits may pass it).",
    )
    queue_full_retry_after_s: int = Field(
        10, ge=1, description="The `Retry-After` seconds a `503 queue_full` response carries."
    )
    default_deadline_s: float | None = Field(
        3600.0, gt=0, description="How long a job may wait to start before it expires (null: forever)."
    )
    max_attempts: int = Field(
        3,
        ge=1,
        description="Runs of one job before it fails because its worker (`worker_lost`) or model replica "
        "(`model_unavailable`) kept vanishing.",
    )
    idempotency_ttl_s: float = Field(24 * 3600.0, gt=0, description="How long `Idempotency-Key`s are remembered.")
    idempotency_pending_timeout_s: float = Field(
        120.0,
        gt=0,
        description="A request still being processed under its `Idempotency-Key` after this long is taken as "
        "abandoned, so a retry with the key may run.",
    )
    dispatch: bool = Field(
        True,
        description="false: the job workers claim nothing (draining, maintenance, API-only benchmarks); "
        "the API still accepts and stores jobs.",
    )
    dispatcher_concurrency: int = Field(
        8,
        ge=1,
        description="Jobs in flight per `JobWorker` replica; keep it >= the generator's "
        "`max_batch_size * (max_concurrent_batches + 1)` so its batches can fill.",
    )
    lease_s: float = Field(
        60.0,
        gt=0,
        description="A crashed worker's jobs are retried this long after its last heartbeat "
        "(leases are renewed every third of it); shorter recovers sooner.",
    )
    poll_interval_s: float = Field(
        0.5, gt=0, description="How often an idle worker looks for work (submissions wake one at once)."
    )
    maintenance_interval_s: float = Field(
        10.0,
        gt=0,
        description="How often a worker expires overdue jobs, requeues lost leases and purges idempotency keys.",
    )
    stop_grace_s: float = Field(
        30.0,
        ge=0,
        description="On shutdown, jobs in flight may finish this long; the rest go back to the queue. "
        "Keep it below the JobWorker's `graceful_shutdown_timeout_s` (40 s).",
    )


class StreamSettings(BaseModel):
    """Server-sent events and ``?wait=`` long-polls: both follow the job in the shared store."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    poll_interval_s: float = Field(
        0.5, gt=0, le=10, description="How often an event stream or `?wait=` long-poll re-reads its job."
    )
    keepalive_s: float = Field(
        15.0, gt=0, description="A comment line after this much silence keeps idle proxies from closing the stream."
    )


class AppConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # No default: a config that forgets its mode must not start as `dev` (which creates keys).
    mode: Literal["dev", "production"] = Field(
        description="Required. `dev` (the embedded default) creates a master key file and a development agent "
        "key on first start; `production` never creates keys and needs the master key from a file or the "
        'environment (docs/operations.md, "Master key").',
    )
    data_dir: Path = Field(
        Path(".orfeas"),
        description="SQLite file, artifacts (`artifacts/inputs`, `artifacts/results`), dev keys, the auth audit "
        "file; a relative path is resolved against the directory `serve run` starts in.",
    )
    database_url: str | None = Field(
        None, description="null: SQLite in `data_dir`; on clusters `postgresql+asyncpg://user@host:5432/db`."
    )
    public_url: str = Field(
        "http://127.0.0.1:8000",
        description="Where agents reach the API; written into the dev key file, used for nothing security-relevant.",
    )
    auth_audit_file: str | None = Field(
        "auth-audit.jsonl",
        description="Every auth decision is also appended here as one JSON line (relative to `data_dir`; "
        "null turns it off).",
    )
    model_name: str = Field(
        "hunyuan3d-dit-v2-0",
        description="The name of the one model of a single `generator:` entry without a `name` (left unset: its "
        "variant). With `generators:` each entry names its own model.",
    )
    models: ModelCatalog | None = Field(
        None,
        description="Filled in by the application builder from `generator`/`generators` (never write it in the "
        "YAML): the served models with their job defaults and views. null: the one model `model_name`.",
    )
    defaults: DefaultParams = Field(DefaultParams(), description="Parameters a job gets when it does not set them.")
    limits: ApiLimits = Field(ApiLimits(), description="What one request may ask for.")
    jobs: JobSettings = Field(JobSettings(), description="The queue, the job store and the job workers.")
    streams: StreamSettings = Field(StreamSettings(), description="Event streams and `?wait=` long-polls.")
    auth: AuthSettings = Field(AuthSettings(), description="Request signing, allowlists, rate limits, master key.")
    quotas: QuotaSettings = Field(
        QuotaSettings(), description="Per-agent limits: queued jobs, event streams, long-polls."
    )
    retention: RetentionSettings = Field(
        RetentionSettings(), description="How long inputs, results and the audit log are kept."
    )
    artifacts: ArtifactSettings = Field(
        LocalArtifactSettings(),
        description="Where inputs and meshes are stored: `{kind: local}` (files under `data_dir/artifacts`) or "
        "`{kind: s3, bucket, prefix, endpoint_url, region, download: stream|redirect, ...}` (the S3 table below; "
        "credentials from the standard AWS environment).",
    )
    webhooks: WebhookSettings = Field(
        WebhookSettings(), description="Signed webhooks: allowed hosts (SSRF guard), retries, disabling."
    )

    @property
    def served_models(self) -> ModelCatalog:
        """The models jobs may name: the builder's catalog, else (an app built by hand, as tests do) the one
        model ``model_name`` with the app's defaults."""
        if self.models is not None:
            return self.models
        single = ServedModel(
            name=self.model_name,
            default=True,
            family=model_family(self.model_name),
            variant=self.model_name,
            views=variant_views(self.model_name),
            job_defaults=self.defaults.for_model(self.model_name),
            deployment=GENERATOR_DEPLOYMENT,
        )
        return ModelCatalog(models=(single,))

    @property
    def job_defaults(self) -> dict[str, Any]:
        """The params a job of the default model gets when it leaves them out."""
        return self.served_models.default.job_defaults

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
