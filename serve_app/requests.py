"""Parsing and validating agent request bodies into store inputs (no I/O besides reading the body).

JSON bodies carry images as base64; multipart bodies carry an ``image`` file plus form fields. A multiview job
sends named ``views`` instead of ``image`` (JSON: an object of base64 strings; multipart: ``view_<name>``
files), ``front`` required: it becomes the job's image, the others its extra views. Every
problem is an :class:`~serve_app.errors.ApiError` with a specific code: 415 for a content type we do not
take, 400 for malformed or too deeply nested JSON, 413 for oversized images or requests, 422 for values out
of range. The cheap fields are checked first; the images are decoded last, in the decode pool.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from starlette.exceptions import HTTPException
from starlette.requests import Request

from deployments.contract import FRONT_VIEW, MAX_SEED, MIN_FACE_BUDGET, PRIORITIES, VIEW_NAMES, split_job_params
from serve_app.config import ApiLimits, AppConfig
from serve_app.errors import ApiError
from serve_app.image_pool import decode_images
from serve_app.images import DecodedImage, ImageLimits, ImageRejected, base64_payload
from serve_app.jobs import NewJob, ViewImage
from serve_app.json_body import MAX_INTEGER_CHARS, JsonRejected, loads_bounded
from serve_app.model_catalog import ServedModel

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
_JOB_FIELDS = {"image", "views", "seed", "params", "priority", "model"}
_BATCH_FIELDS = {"items", "params", "priority", "model"}
_ITEM_FIELDS = {"image", "views", "seed", "model"}
# multipart file field of each view: view_front, view_left, ...
_VIEW_FILE_PREFIX = "view_"
_STORED_EXTENSIONS = {"PNG": "png", "JPEG": "jpg"}
# names and values echoed in error messages are cut: a hostile body must not come back inflated
_SHOWN_NAMES = 10
_SHOWN_CHARS = 64
# Parts a multipart job may hold (up to four view files). Files past the one 'image' are parsed (the body is
# bounded and already read) so that the refusal can name the field; more parts than these are a malformed body.
_MAX_FORM_FILES = 8
_MAX_FORM_FIELDS = 8


@dataclass(frozen=True)
class ParsedBody:
    fields: dict[str, Any]
    # multipart uploads: the image file's bytes (JSON bodies carry base64 in fields["image"])
    upload: bytes | None = None
    # multipart uploads of a multiview job: view name -> file bytes, front among them (JSON: fields["views"])
    view_uploads: Mapping[str, bytes] = field(default_factory=dict)


async def read_body(request: Request, limits: ApiLimits) -> ParsedBody:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            data = loads_bounded(await request.body(), limits.max_json_depth, limits.max_json_values)
        except JsonRejected as exc:
            raise ApiError(400, exc.code, exc.message) from None
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_json", "request body must be a JSON object")
        return ParsedBody(data)
    if content_type == "multipart/form-data":
        return await _read_multipart(request, limits)
    raise ApiError(
        415,
        "unsupported_content_type",
        f"Content-Type {_shown(content_type) or '(none)'} is not accepted; send application/json or "
        "multipart/form-data",
    )


async def _read_multipart(request: Request, limits: ApiLimits) -> ParsedBody:
    # read (and cache) the raw bytes first: the idempotency fingerprint hashes them after parsing
    await request.body()
    try:
        form = await request.form(max_files=_MAX_FORM_FILES, max_fields=_MAX_FORM_FIELDS)
    except HTTPException as exc:  # Starlette's answer to python-multipart failing on the body
        raise ApiError(
            400,
            "invalid_multipart",
            f"the multipart/form-data body cannot be parsed ({_shown(exc.detail)}); send one file field 'image' "
            "(or view_front, view_left, ... files) and the form fields seed, params, priority, model, with the "
            "boundary of the Content-Type header",
        ) from None
    try:
        return await _parse_form(form, limits)
    finally:
        await form.close()


async def _parse_form(form: Any, limits: ApiLimits) -> ParsedBody:
    fields: dict[str, Any] = {}
    upload: bytes | None = None
    views: dict[str, bytes] = {}
    for name, value in form.multi_items():
        if hasattr(value, "read") and name.startswith(_VIEW_FILE_PREFIX):
            view = name.removeprefix(_VIEW_FILE_PREFIX)
            _check_view_names([view], "the multipart view files", _VIEW_FILE_PREFIX, complete=False)
            if view in views:
                raise ApiError(
                    400, "unexpected_file_field", f"a second {name!r} file; send each view file at most once"
                )
            views[view] = await value.read()
        elif hasattr(value, "read"):
            if name != "image" or upload is not None:
                what = "a second 'image' file" if name == "image" else f"file field {_shown(name)!r}"
                raise ApiError(
                    400,
                    "unexpected_file_field",
                    f"unexpected {what}; send exactly one file, the field 'image' (or one file per view: "
                    f"{', '.join(_VIEW_FILE_PREFIX + view for view in VIEW_NAMES)})",
                )
            upload = await value.read()
        elif name == "views":
            raise ApiError(
                422,
                "invalid_views",
                "multipart bodies send views as files (view_front, view_left, view_back, view_right), "
                "not a 'views' field",
            )
        elif name == "params":
            try:
                fields["params"] = loads_bounded(
                    value, limits.max_json_depth, limits.max_json_values, "form field 'params'"
                )
            except JsonRejected as exc:
                raise ApiError(422, "invalid_params", f"{exc.message}; it must be a JSON object") from None
        elif name == "seed":
            try:
                # the length first: int() of thousands of digits is slow, and refused past 4300
                if len(value) > MAX_INTEGER_CHARS:
                    raise ValueError(value)
                fields["seed"] = int(value)
            except ValueError:
                raise ApiError(422, "invalid_seed", "form field 'seed' must be an integer") from None
        else:
            fields[name] = value
    if views:
        if upload is not None:
            raise _image_and_views("the file 'image' and view files", f"{_VIEW_FILE_PREFIX}{FRONT_VIEW}")
        _check_view_names(views, "the multipart view files", _VIEW_FILE_PREFIX)
        return ParsedBody(fields, None, views)
    if upload is None:
        raise ApiError(
            422,
            "missing_image",
            f"multipart body needs a file field named 'image' (or, for a multiview job, '{_VIEW_FILE_PREFIX}front' "
            "and optional view_left, view_back, view_right files)",
        )
    return ParsedBody(fields, upload)


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}... ({len(text)} characters)"


def _names(names: Iterable[str]) -> str:
    listed = sorted(names)
    shown = ", ".join(repr(_shown(name)) for name in listed[:_SHOWN_NAMES])
    return f"[{shown}{f', ... ({len(listed)} in all)' if len(listed) > _SHOWN_NAMES else ''}]"


def _unknown(fields: dict[str, Any], known: set[str], where: str) -> None:
    unknown = set(fields) - known
    if unknown:
        raise ApiError(422, "unknown_field", f"unknown field(s) {_names(unknown)} in {where}; known: {sorted(known)}")


def served_model(value: object, config: AppConfig, where: str = "the job's") -> ServedModel:
    """The model a job names (``None``: the default one), or 422 ``unknown_model`` listing the served ones."""
    catalog = config.served_models
    if value is None:
        return catalog.default
    model = catalog.get(value) if isinstance(value, str) else None
    if model is None:
        raise ApiError(
            422,
            "unknown_model",
            f"{where} 'model' {_shown(value)!r} is not served here; use one of {catalog.names} (or leave it out: "
            f"{catalog.default.name!r})",
            extra={"models": catalog.names},
        )
    return model


def generation_params(raw: object, config: AppConfig, model: ServedModel | None = None) -> dict[str, Any]:
    """The request's params merged over the defaults of its model (``None``: the default model) and checked
    against the API limits."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ApiError(422, "invalid_params", "'params' must be an object")
    unknown = set(raw) - set(API_PARAMS)
    if unknown:
        raise ApiError(
            422, "invalid_params", f"unknown parameter(s) {_names(unknown)}; agents may set {list(API_PARAMS)}"
        )
    defaults = (model or config.served_models.default).job_defaults
    merged = {**defaults, **raw}
    # the bounds of this deployment first: the model's own (wider) ranges stay an internal check
    _check_bounds(merged, config.limits)
    try:
        split_job_params(merged)
    except (TypeError, ValueError) as exc:
        raise ApiError(422, "invalid_params", _shown(str(exc))) from None
    return {name: merged[name] for name in API_PARAMS}


def _check_bounds(merged: dict[str, Any], limits: ApiLimits) -> None:
    """Numbers outside what the operator allows, refused with those bounds (types are checked after)."""
    max_faces = merged.get("max_faces")
    if _is_number(max_faces) and max_faces != 0 and not MIN_FACE_BUDGET <= max_faces <= limits.max_face_budget:
        raise ApiError(
            422,
            "invalid_params",
            f"max_faces must be between {MIN_FACE_BUDGET} and {limits.max_face_budget} here (or 0), got {max_faces}",
        )
    checks = (
        ("num_inference_steps", 1, limits.max_inference_steps),
        ("octree_resolution", limits.min_octree_resolution, limits.max_octree_resolution),
        ("guidance_scale", 0.0, limits.max_guidance_scale),
    )
    for name, low, high in checks:
        value = merged.get(name)
        if _is_number(value) and not low <= value <= high:
            raise ApiError(422, "invalid_params", f"{name} must be between {low} and {high} here, got {value}")


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _seed(value: object, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ApiError(
            422,
            "invalid_seed",
            f"{where} 'seed' must be an integer between 0 and {MAX_SEED} (2**53 - 1, the largest integer a "
            "JSON number keeps exactly in JavaScript)",
        )
    return value


def _priority(value: object) -> str:
    value = "normal" if value is None else value
    if value not in PRIORITIES:
        raise ApiError(422, "invalid_priority", f"'priority' must be one of {list(PRIORITIES)}, got {_shown(value)}")
    return str(value)


def _check_view_names(names: Iterable[str], where: str, prefix: str = "", *, complete: bool = True) -> None:
    """Known view names only (``unknown_view``) and, when ``complete`` (all names known), ``front`` among them
    (``missing_front_view``)."""
    given = list(names)
    unknown = [name for name in given if name not in VIEW_NAMES]
    if unknown:
        raise ApiError(
            422,
            "unknown_view",
            f"unknown view(s) {_names(prefix + name for name in unknown)} in {where}; views are "
            f"{[prefix + name for name in VIEW_NAMES]}",
        )
    if complete and FRONT_VIEW not in given:
        raise ApiError(
            422,
            "missing_front_view",
            f"no '{prefix}{FRONT_VIEW}' in {where}: the front view is required (it is the job's image); "
            f"{', '.join(prefix + name for name in VIEW_NAMES if name != FRONT_VIEW)} are optional",
        )


def _image_and_views(what: str, front: str) -> ApiError:
    return ApiError(
        422,
        "image_and_views",
        f"{what} were both sent; send either one image or the views, with the image as {front!r}",
    )


def _view_payloads(
    fields: dict[str, Any], body: ParsedBody | None, limits: ImageLimits, where: str
) -> dict[str, tuple[bytes, str]]:
    """The images of a job or batch item (``where``: '' or 'items[3].'), by view name in ``VIEW_NAMES`` order,
    each as (bytes, field name for errors): the front view alone for a plain ``image``."""
    if body is not None and body.view_uploads:  # multipart: _parse_form checked the names
        uploads = body.view_uploads
        return {name: (uploads[name], _VIEW_FILE_PREFIX + name) for name in VIEW_NAMES if name in uploads}
    if "views" not in fields:
        upload = None if body is None else body.upload
        return {FRONT_VIEW: _image_bytes(fields, upload, limits, f"{where}image")}
    views = fields["views"]
    if "image" in fields:
        raise _image_and_views(f"'{where}image' and '{where}views'", f"{where}views.{FRONT_VIEW}")
    if not isinstance(views, dict):
        raise ApiError(
            422,
            "invalid_views",
            f"'{where}views' must be an object of view name -> base64 image, e.g. "
            '{"front": "<base64>", "left": "<base64>"}',
        )
    _check_view_names(views, f"'{where}views'")
    payloads: dict[str, tuple[bytes, str]] = {}
    for name in VIEW_NAMES:
        if name in views:
            field_name = f"{where}views.{name}"
            try:
                payloads[name] = (base64_payload(views[name], limits, field_name), field_name)
            except ImageRejected as exc:
                raise ApiError(exc.status, exc.code, exc.message) from None
    return payloads


def _check_model_views(payloads: dict[str, tuple[bytes, str]], model: ServedModel, where: str) -> None:
    """Refuse views the job's model cannot take before anything is decoded (the replica would fail the job)."""
    extra = [name for name in payloads if name not in model.views]
    if extra:
        raise ApiError(
            422,
            "views_not_supported",
            f"{where} sends the view(s) {_names(extra)}, but model {model.name!r} takes only {list(model.views)}; "
            "send the front view as 'image', or choose a multiview model (capabilities: models[].views)",
        )


def _image_bytes(fields: dict[str, Any], upload: bytes | None, limits: ImageLimits, field: str) -> tuple[bytes, str]:
    """The image of a job or a batch item: the multipart file, else the base64 field, which must be present
    (``missing_image``) and a non-empty string (``invalid_image_field``)."""
    if upload is not None:
        return upload, field
    if "image" not in fields:
        raise _missing_image(field)
    try:
        return base64_payload(fields["image"], limits, field), field
    except ImageRejected as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None


def _missing_image(field: str) -> ApiError:
    views = field.removesuffix("image") + "views"
    return ApiError(
        422,
        "missing_image",
        f"'{field}' (a base64 PNG, JPEG or WebP file) is required, or '{views}' with at least '{FRONT_VIEW}'",
    )


async def _decoded_views(
    payloads: list[dict[str, tuple[bytes, str]]], config: AppConfig
) -> list[dict[str, DecodedImage]]:
    """Every image of one request decoded together, so that the request's pixel budget counts every view of
    every job; returned per job, by view name."""
    flat = [payload for job in payloads for payload in job.values()]
    decoded = iter(await _decoded(flat, config))
    return [{name: next(decoded) for name in job} for job in payloads]


async def _decoded(payloads: list[tuple[bytes, str]], config: AppConfig) -> list[DecodedImage]:
    try:
        return await decode_images(payloads, image_limits(config), config.limits.decode_workers)
    except ImageRejected as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None


def image_limits(config: AppConfig) -> ImageLimits:
    limits = config.limits
    return ImageLimits(
        max_bytes=limits.max_image_bytes,
        max_pixels=limits.max_image_pixels,
        min_side=limits.min_image_side,
        metadata_allowance=limits.image_metadata_allowance_bytes,
        max_request_pixels=limits.max_request_pixels,
    )


def _new_job(
    views: dict[str, DecodedImage], seed: int | None, params: dict[str, Any], priority: str, model: ServedModel
) -> NewJob:
    image = views[FRONT_VIEW]
    return NewJob(
        image=image.data,
        model=model.name,
        seed=seed,
        params=params,
        priority=priority,  # type: ignore[arg-type]
        image_format=_STORED_EXTENSIONS[image.format],  # the re-encoded bytes' format, not the upload's
        views={
            name: ViewImage(view.data, _STORED_EXTENSIONS[view.format])
            for name, view in views.items()
            if name != FRONT_VIEW
        },
    )


async def parse_job(body: ParsedBody, config: AppConfig) -> NewJob:
    fields = body.fields
    _unknown(fields, _JOB_FIELDS, "the job")
    if body.upload is None and not body.view_uploads and "image" not in fields and "views" not in fields:
        raise _missing_image("image")
    model = served_model(fields.get("model"), config)
    params = generation_params(fields.get("params"), config, model)
    seed = _seed(fields.get("seed"), "the job's")
    priority = _priority(fields.get("priority"))
    payloads = _view_payloads(fields, body, image_limits(config), "")
    _check_model_views(payloads, model, "the job")
    (views,) = await _decoded_views([payloads], config)
    return _new_job(views, seed, params, priority, model)


async def parse_batch(body: ParsedBody, config: AppConfig) -> list[NewJob]:
    if body.upload is not None:
        raise ApiError(415, "unsupported_content_type", "batches are JSON only: send application/json")
    fields = body.fields
    _unknown(fields, _BATCH_FIELDS, "the batch")
    items = fields.get("items")
    if not isinstance(items, list) or not items:
        raise ApiError(
            422, "invalid_items", "'items' must be a non-empty list of {image, seed?} (or {views, seed?}) objects"
        )
    if len(items) > config.limits.max_batch_items:
        raise ApiError(
            413, "too_many_items", f"a batch holds at most {config.limits.max_batch_items} items, got {len(items)}"
        )
    batch_model = served_model(fields.get("model"), config, "the batch's")
    # the batch's params over each item's model's defaults (an item's `model` overrides the batch's)
    params_of = {batch_model.name: generation_params(fields.get("params"), config, batch_model)}
    priority = _priority(fields.get("priority"))
    limits = image_limits(config)
    seeds, models, payloads = [], [], []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ApiError(422, "invalid_items", f"items[{index}] must be an object")
        _unknown(item, _ITEM_FIELDS, f"items[{index}]")
        model = batch_model if item.get("model") is None else served_model(item["model"], config, f"items[{index}]")
        if model.name not in params_of:
            params_of[model.name] = generation_params(fields.get("params"), config, model)
        models.append(model)
        seeds.append(_seed(item.get("seed"), f"items[{index}]"))
        payloads.append(_view_payloads(item, None, limits, f"items[{index}]."))
        _check_model_views(payloads[-1], model, f"items[{index}]")
    decoded = await _decoded_views(payloads, config)
    return [
        _new_job(views, seed, params_of[model.name], priority, model)
        for views, seed, model in zip(decoded, seeds, models, strict=True)
    ]
