"""Parsing and validating agent request bodies into store inputs (no I/O besides reading the body).

JSON bodies carry images as base64; multipart bodies carry an ``image`` file plus form fields. Every
problem is an :class:`~serve_app.errors.ApiError` with a specific code: 415 for a content type we do not
take, 400 for malformed JSON, 413 for oversized images, 422 for values out of range.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from deployments.contract import MAX_SEED, PRIORITIES, split_job_params
from serve_app.config import AppConfig
from serve_app.errors import ApiError
from serve_app.images import DecodedImage, ImageLimits, ImageRejected, decode_base64_image, validate_image_bytes
from serve_app.jobs import NewJob

# What agents may set per request; everything else in GenerationParams is the operator's choice. The first
# three shape the batched pass; the others act on the job alone (background removal, mesh clean-up).
API_PARAMS = (
    "num_inference_steps",
    "guidance_scale",
    "octree_resolution",
    "max_faces",
    "remove_floaters",
    "remove_background",
)
_JOB_FIELDS = {"image", "seed", "params", "priority"}
_BATCH_FIELDS = {"items", "params", "priority"}
_ITEM_FIELDS = {"image", "seed"}


@dataclass(frozen=True)
class ParsedBody:
    fields: dict[str, Any]
    # multipart uploads: the image file's bytes (JSON bodies carry base64 in fields["image"])
    upload: bytes | None = None


async def read_body(request: Request) -> ParsedBody:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        raw = await request.body()
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_json", "request body must be a JSON object")
        return ParsedBody(data)
    if content_type == "multipart/form-data":
        return await _read_multipart(request)
    raise ApiError(
        415,
        "unsupported_content_type",
        f"Content-Type {content_type or '(none)'} is not accepted; send application/json or multipart/form-data",
    )


async def _read_multipart(request: Request) -> ParsedBody:
    # read (and cache) the raw bytes first: the idempotency fingerprint hashes them after parsing
    await request.body()
    async with request.form(max_files=1, max_fields=8) as form:
        return await _parse_form(form)


async def _parse_form(form: Any) -> ParsedBody:
    fields: dict[str, Any] = {}
    upload: bytes | None = None
    for name, value in form.multi_items():
        if hasattr(value, "read"):
            if name != "image":
                raise ApiError(422, "invalid_field", f"unexpected file field {name!r}; upload the image as 'image'")
            upload = await value.read()
        elif name == "params":
            try:
                fields["params"] = json.loads(value)
            except json.JSONDecodeError:
                raise ApiError(422, "invalid_params", "form field 'params' must be a JSON object") from None
        elif name == "seed":
            try:
                fields["seed"] = int(value)
            except ValueError:
                raise ApiError(422, "invalid_seed", "form field 'seed' must be an integer") from None
        else:
            fields[name] = value
    if upload is None:
        raise ApiError(422, "missing_image", "multipart body needs a file field named 'image'")
    return ParsedBody(fields, upload)


def _unknown(fields: dict[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ApiError(422, "unknown_field", f"unknown field(s) {unknown} in {where}; known: {sorted(known)}")


def generation_params(raw: object, config: AppConfig) -> dict[str, Any]:
    """The request's params merged over the configured defaults and checked against the API limits."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ApiError(422, "invalid_params", "'params' must be an object")
    unknown = sorted(set(raw) - set(API_PARAMS))
    if unknown:
        raise ApiError(422, "invalid_params", f"unknown parameter(s) {unknown}; agents may set {list(API_PARAMS)}")
    merged = {**config.job_defaults, **raw}
    limits = config.limits
    try:
        params, mesh, _ = split_job_params(merged)
    except (TypeError, ValueError) as exc:
        raise ApiError(422, "invalid_params", str(exc)) from None
    if mesh.max_faces > limits.max_face_budget:
        raise ApiError(
            422,
            "invalid_params",
            f"max_faces must be at most {limits.max_face_budget} here (or 0), got {mesh.max_faces}",
        )
    checks = (
        ("num_inference_steps", params.num_inference_steps, 1, limits.max_inference_steps),
        ("octree_resolution", params.octree_resolution, limits.min_octree_resolution, limits.max_octree_resolution),
        ("guidance_scale", params.guidance_scale, 0.0, limits.max_guidance_scale),
    )
    for name, value, low, high in checks:
        if not low <= value <= high:
            raise ApiError(422, "invalid_params", f"{name} must be between {low} and {high} here, got {value}")
    return {name: merged[name] for name in API_PARAMS}


def _seed(value: object, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ApiError(422, "invalid_seed", f"{where} 'seed' must be an integer between 0 and {MAX_SEED}")
    return value


def _priority(value: object) -> str:
    value = "normal" if value is None else value
    if value not in PRIORITIES:
        raise ApiError(422, "invalid_priority", f"'priority' must be one of {list(PRIORITIES)}, got {value!r}")
    return str(value)


def _image(value: object, upload: bytes | None, limits: ImageLimits, field: str) -> DecodedImage:
    try:
        if upload is not None:
            return validate_image_bytes(upload, limits, field)
        return decode_base64_image(value, limits, field)
    except ImageRejected as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None


def image_limits(config: AppConfig) -> ImageLimits:
    return ImageLimits(config.limits.max_image_bytes, config.limits.max_image_pixels, config.limits.min_image_side)


def _new_job(image: DecodedImage, seed: int | None, params: dict[str, Any], priority: str, config: AppConfig) -> NewJob:
    return NewJob(
        image=image.data,
        model=config.model_name,
        seed=seed,
        params=params,
        priority=priority,  # type: ignore[arg-type]
        image_format={"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}[image.format],
    )


def parse_job(body: ParsedBody, config: AppConfig) -> NewJob:
    fields = body.fields
    _unknown(fields, _JOB_FIELDS, "the job")
    if body.upload is None and "image" not in fields:
        raise ApiError(422, "missing_image", "'image' (base64) is required")
    image = _image(fields.get("image"), body.upload, image_limits(config), "image")
    params = generation_params(fields.get("params"), config)
    return _new_job(image, _seed(fields.get("seed"), "the job's"), params, _priority(fields.get("priority")), config)


def parse_batch(body: ParsedBody, config: AppConfig) -> list[NewJob]:
    if body.upload is not None:
        raise ApiError(415, "unsupported_content_type", "batches are JSON only: send application/json")
    fields = body.fields
    _unknown(fields, _BATCH_FIELDS, "the batch")
    items = fields.get("items")
    if not isinstance(items, list) or not items:
        raise ApiError(422, "invalid_items", "'items' must be a non-empty list of {image, seed?} objects")
    if len(items) > config.limits.max_batch_items:
        raise ApiError(
            413, "too_many_items", f"a batch holds at most {config.limits.max_batch_items} items, got {len(items)}"
        )
    params = generation_params(fields.get("params"), config)
    priority = _priority(fields.get("priority"))
    limits = image_limits(config)
    jobs = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ApiError(422, "invalid_items", f"items[{index}] must be an object")
        _unknown(item, _ITEM_FIELDS, f"items[{index}]")
        image = _image(item.get("image"), None, limits, f"items[{index}].image")
        jobs.append(_new_job(image, _seed(item.get("seed"), f"items[{index}]"), params, priority, config))
    return jobs
