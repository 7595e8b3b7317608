"""Pydantic models of the agent API's JSON bodies, for the OpenAPI document (serve_app.openapi).

They describe what the hand-written checks of serve_app.requests enforce and what serve_app.views returns;
they do not validate requests themselves. The response models are fixed; the request models carry bounds
from the app's configuration (`ApiLimits`), so :func:`request_models` builds them per config and the
document states the limits as this deployment enforces them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Json, create_model

from deployments.contract import (
    FRONT_VIEW,
    MAX_SEED,
    MIN_FACE_BUDGET,
    VIEW_NAMES,
    JobStatus,
    MeshFormat,
    Priority,
    RemoveBackground,
    ViewName,
)
from serve_app.config import ApiLimits
from serve_app.routes import MAX_IDEMPOTENCY_KEY

# --- responses ------------------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    """Every error response: the family (`type`), the cause (`code`), and the id to quote."""

    type: str = Field(description="Error family, e.g. `authentication_error`, `invalid_request_error`.")
    code: str = Field(description="The specific cause, e.g. `bad_signature`, `invalid_params`, `job_not_found`.")
    message: str = Field(description="What went wrong and how to fix it, for people.")
    retryable: bool = Field(description="Whether sending the same request again later may succeed.")
    request_id: str = Field(description="The request's id, also in the `X-Request-ID` header.")
    models: list[str] | None = Field(
        None, description="With `unknown_model` only: the models this deployment serves (pick one, or omit `model`)."
    )


class JobError(BaseModel):
    code: str = Field(description="Why the job failed, one of the job error codes of the agent guide.")
    message: str | None
    retryable: bool


class JobView(BaseModel):
    """One job as the agent sees it: its state, links, and (once succeeded) its result links."""

    job_id: str
    status: JobStatus
    stage: str
    progress: int = Field(ge=0, le=100)
    priority: Priority
    model: str
    seed: int = Field(ge=0, le=MAX_SEED, description="The seed used: the agent's, or one the service drew.")
    params: dict[str, Any]
    views: list[ViewName] = Field(
        description='The named views the job was given, `front` first; `["front"]` for a single-image job.'
    )
    batch_id: str | None
    created_at: str | None = Field(description="ISO 8601, UTC.")
    started_at: str | None
    finished_at: str | None
    deadline_at: str | None
    attempts: int = Field(ge=0)
    timings: dict[str, Any]
    mesh: dict[str, Any] | None = Field(description="Statistics of the finished mesh (faces, vertices, ...).")
    error: JobError | None
    status_url: str
    events_url: str
    result_expires_at: str | None = Field(description="When the result is deleted (then 410 `result_expired`).")
    result_urls: dict[MeshFormat, str] | None = Field(description="Download links per format, once succeeded.")


class JobEvent(BaseModel):
    """One server-sent event of `GET /api/agent/jobs/{job_id}/events` (described in validation mode: `data` is
    the JSON text of a JobView)."""

    event: Literal["job"]
    data: Json[JobView]


class JobList(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class BatchAccepted(BaseModel):
    batch_id: str
    status_url: str
    jobs: list[JobView] = Field(description="The batch's jobs, in the order of its items.")


class BatchView(BaseModel):
    batch_id: str
    created_at: str | None
    finished: bool = Field(description="Whether every job of the batch is in a terminal status.")
    counts: dict[JobStatus, int] = Field(description="Jobs per status, every status present.")
    status_url: str
    jobs: list[JobView]


class Bounds(BaseModel):
    min: float
    max: float


class FaceBounds(Bounds):
    no_reduction: Literal[0]


class ModelLimits(BaseModel):
    num_inference_steps: Bounds
    guidance_scale: Bounds
    octree_resolution: Bounds
    max_faces: FaceBounds


class ModelInfo(BaseModel):
    """One model a job may name in `model`."""

    name: str = Field(description="What a job's `model` says.")
    default: bool = Field(description="Whether jobs that name no model run on this one.")
    family: str = Field(
        description="Released family: `hunyuan3d-2`, `hunyuan3d-2mini`, `hunyuan3d-2mv`, `hunyuan3d-2.1`, or `custom`."
    )
    variant: str = Field(description="The model folder (variant), e.g. `hunyuan3d-dit-v2-0-fast`.")
    views: list[str] = Field(description="The named views a job on it may send, front first.")
    defaults: dict[str, Any] = Field(description="What a job on this model gets for each parameter it omits.")
    limits: ModelLimits = Field(description="The bounds of the parameters a job on this model may set.")


class ParamCapabilities(BaseModel):
    settable: list[str]
    defaults: dict[str, Any] = Field(description="The default model's defaults (each model's: `models`).")
    num_inference_steps: Bounds
    guidance_scale: Bounds
    octree_resolution: Bounds
    max_faces: FaceBounds
    remove_floaters: list[bool]
    remove_background: list[RemoveBackground]


class ImageCapabilities(BaseModel):
    formats: list[str]
    max_bytes: int
    max_pixels: int
    min_side: int
    max_request_pixels: int


class LimitCapabilities(BaseModel):
    max_batch_items: int
    max_list_page: int
    max_wait_s: float
    max_queued_jobs: int
    max_body_bytes: int


class QuotaCapabilities(BaseModel):
    max_queued_jobs: int
    max_event_streams: int
    max_long_polls: int


class Capabilities(BaseModel):
    """What this deployment accepts, and this agent's own quotas."""

    models: list[ModelInfo]
    params: ParamCapabilities
    priorities: list[Priority]
    formats: list[MeshFormat]
    image: ImageCapabilities
    limits: LimitCapabilities
    quotas: QuotaCapabilities


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]


# --- requests (bounds from the config) ------------------------------------------------------------------

_FORBID = ConfigDict(extra="forbid")


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _optional(**kwargs: Any) -> Any:
    """A field that may be left out but, when sent, must not be null (the schema shows no `default: null`)."""
    return Field(None, json_schema_extra=_drop_default, **kwargs)


Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
_SEED_DESCRIPTION = (
    f"0-{MAX_SEED}; omitted or null: the service draws one below 2^53. Seeds above 2^53-1 do not survive a "
    "JSON number in JavaScript: send them from a client with 64-bit integers."
)
_IMAGE_DESCRIPTION = "The image (PNG, JPEG or WebP), base64 (standard alphabet; a `data:` URL prefix is accepted)."
_VIEWS_DESCRIPTION = (
    "A multiview job's images by view name instead of `image` (`front` required: it is the job's image), each "
    "as `image` is sent. Every view passes the image checks; all count towards `max_request_pixels`. "
    "Models that take one image fail such a job with `invalid_request`."
)


def _image_or_views(image: str, views: str) -> dict[str, Any]:
    """The body needs the one or the other (sending both is refused too: `image_and_views`)."""
    return {"anyOf": [{"required": [image]}, {"required": [views]}]}


def _views_model() -> type[BaseModel]:
    fields: dict[str, Any] = {
        name: (str, Field(description=_IMAGE_DESCRIPTION) if name == FRONT_VIEW else _optional()) for name in VIEW_NAMES
    }
    return create_model(
        "JobViews", __config__=_FORBID, __doc__="Named views, `front` required (the others optional).", **fields
    )


@dataclass(frozen=True)
class RequestModels:
    """The request bodies of one configuration, each a pydantic model class."""

    params: type[BaseModel]
    job: type[BaseModel]
    job_upload: type[BaseModel]
    batch_item: type[BaseModel]
    batch: type[BaseModel]
    list_query: type[BaseModel]
    wait_query: type[BaseModel]
    result_query: type[BaseModel]
    idempotency: type[BaseModel]  # the Idempotency-Key header, as the one field `value`


def request_models(limits: ApiLimits, model_names: Sequence[str]) -> RequestModels:
    """The submission bodies with this configuration's bounds and models (every field optional in `params`:
    the operator's defaults fill in the rest)."""
    served: Any = Literal[tuple(model_names)]  # the names are this config's
    model_description = "The model to run on (capabilities list them); omitted: the default model."
    face_budget = Annotated[int, Field(ge=MIN_FACE_BUDGET, le=limits.max_face_budget)]
    params: type[BaseModel] = create_model(
        "JobParams",
        __config__=_FORBID,
        __doc__="Generation parameters an agent may set; each one omitted takes the deployment's default.",
        num_inference_steps=(int, _optional(ge=1, le=limits.max_inference_steps)),
        guidance_scale=(float, _optional(ge=0.0, le=limits.max_guidance_scale)),
        octree_resolution=(
            int,
            _optional(ge=limits.min_octree_resolution, le=limits.max_octree_resolution),
        ),
        max_faces=(
            Literal[0] | face_budget,
            _optional(description="Face budget of the mesh; 0 keeps the raw surface."),
        ),
        remove_floaters=(bool, _optional()),
        remove_background=(RemoveBackground, _optional(description="`auto`: only if the image has no alpha.")),
    )
    views = _views_model()
    job: type[BaseModel] = create_model(
        "JobSubmission",
        __config__=ConfigDict(extra="forbid", json_schema_extra=_image_or_views("image", "views")),
        __doc__="One job as JSON: `image`, or `views` for a multiview job.",
        image=(str, _optional(description=_IMAGE_DESCRIPTION)),
        views=(views, _optional(description=_VIEWS_DESCRIPTION)),
        seed=(Seed | None, Field(None, description=_SEED_DESCRIPTION)),
        params=(params | None, Field(None)),
        priority=(Priority | None, Field(None, description="`critical` needs the `jobs:critical` scope.")),
        model=(served | None, Field(None, description=model_description)),
    )
    view_files: dict[str, Any] = {
        f"view_{name}": (
            bytes,
            _optional(description=f"The {name} view's file (multiview jobs; `view_front` required then)."),
        )
        for name in VIEW_NAMES
    }
    job_upload: type[BaseModel] = create_model(
        "JobUpload",
        __config__=ConfigDict(json_schema_extra=_image_or_views("image", f"view_{FRONT_VIEW}")),
        __doc__="One job as multipart/form-data: the image file (or `view_<name>` files) plus optional form fields.",
        image=(bytes, _optional(description="The image file (PNG, JPEG or WebP).")),
        **view_files,
        seed=(Seed, _optional(description=_SEED_DESCRIPTION)),
        params=(str, _optional(description="A JSON object of generation parameters (see JobParams), as text.")),
        priority=(Priority, _optional(description="`critical` needs the `jobs:critical` scope.")),
        model=(served, _optional(description=model_description)),
    )
    item: type[BaseModel] = create_model(
        "BatchItem",
        __config__=ConfigDict(extra="forbid", json_schema_extra=_image_or_views("image", "views")),
        image=(str, _optional(description=_IMAGE_DESCRIPTION)),
        views=(views, _optional(description=_VIEWS_DESCRIPTION)),
        seed=(Seed | None, Field(None, description=_SEED_DESCRIPTION)),
        model=(served | None, Field(None, description="This item's model; omitted: the batch's.")),
    )
    batch: type[BaseModel] = create_model(
        "BatchSubmission",
        __config__=_FORBID,
        __doc__="Jobs sharing params and priority, as JSON (batches take no multipart).",
        items=(list[item], Field(min_length=1, max_length=limits.max_batch_items)),
        params=(params | None, Field(None)),
        priority=(Priority | None, Field(None, description="`critical` needs the `jobs:critical` scope.")),
        model=(served | None, Field(None, description="The model of items that name none; omitted: the default.")),
    )
    # an empty status is taken as none given (serve_app.routes.list_jobs): the document says so
    status_or_empty: Any = JobStatus | Literal[""]
    list_query = create_model(
        "JobListQuery",
        status=(status_or_empty, _optional(description="Only jobs in this status (empty: any).")),
        limit=(int, Field(50, ge=1, le=limits.max_list_page, description="Jobs per page.")),
        cursor=(str, _optional(description="The `next_cursor` of the previous page.")),
    )
    wait_query = create_model(
        "JobWaitQuery",
        wait=(float, Field(0.0, ge=0, le=limits.max_wait_s, description="Seconds to long-poll for the job to end.")),
    )
    result_query = create_model("ResultQuery", format=(MeshFormat, Field("glb", description="The mesh format.")))
    idempotency = create_model("IdempotencyKey", value=(str, _optional(min_length=1, max_length=MAX_IDEMPOTENCY_KEY)))
    return RequestModels(
        params=params,
        job=job,
        job_upload=job_upload,
        batch_item=item,
        batch=batch,
        list_query=list_query,
        wait_query=wait_query,
        result_query=result_query,
        idempotency=idempotency,
    )
