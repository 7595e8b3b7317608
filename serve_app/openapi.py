"""The OpenAPI 3.1 document of the agent API, generated from the app's routes and the models of
serve_app.api_models, and served (public) at ``GET /openapi.json``.

:data:`OPERATIONS` holds the metadata of each ``(method, path)`` of the route table: summary, parameters and
request bodies (pydantic models), and every response the handler or the signature middleware can send. The
generator walks the app's routes and refuses a route without metadata, so a new route cannot silently be
missing from the document; a new module registers its routes' metadata with :func:`register_operation`.
Request models carry the configured bounds (:func:`~serve_app.api_models.request_models`): the document is
built per app configuration, once per app.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from deployments.contract import CONTENT_TYPES
from serve_app.api_models import (
    BatchAccepted,
    BatchView,
    Capabilities,
    ErrorBody,
    Health,
    JobEvent,
    JobList,
    JobView,
    Ready,
    RequestModels,
    request_models,
)
from serve_app.auth.profile import BASE_COMPONENTS, CONDITIONAL_FIELDS, MAX_LIFETIME_S, REQUIRED_PARAMS, TAG
from serve_app.config import AppConfig
from serve_app.webhooks.routes import WebhookCreate, WebhookCreated, WebhookList

API_PREFIX = "/api/agent"
SECURITY_SCHEME = "agentSignature"
_REF = "#/components/schemas/{model}"
_GUIDE = "docs/agent-guide.md"

# A model, or the name of a per-config request model (an attribute of RequestModels, e.g. "job").
ModelRef = type[BaseModel] | str


@dataclass(frozen=True)
class Header:
    name: str
    description: str
    required: bool = False
    type: str = "string"  # the JSON type of the value


@dataclass(frozen=True)
class Reply:
    """One response status: its body (a model for JSON; None with ``media`` for other bodies) and headers."""

    description: str = ""
    model: ModelRef | None = ErrorBody
    media: Sequence[str] = ("application/json",)
    headers: Sequence[Header] = ()
    codes: str = ""  # an error reply's codes, listed in its description
    # how the model is rendered; a server-sent event is shown as the text its fields carry ("validation")
    mode: JsonSchemaMode = "serialization"

    def merged(self, other: Reply) -> Reply:
        """This error reply and ``other``'s (same status, another source) as one."""
        headers = {h.name: h for h in (*self.headers, *other.headers)}
        return Reply(codes=f"{self.codes}, {other.codes}", headers=tuple(headers.values()))

    @property
    def text(self) -> str:
        return self.description or f"Error codes: {self.codes}."


@dataclass(frozen=True)
class Operation:
    summary: str
    operation_id: str
    tag: str
    replies: Mapping[int, Reply]
    description: str = ""
    # content type -> model of the request body
    body: Mapping[str, ModelRef] = field(default_factory=dict)
    query: ModelRef | None = None  # a model whose fields are the query parameters
    headers: Sequence[tuple[Header, ModelRef]] = ()  # request headers, each with the model of its value
    public: bool = False  # no signature (security: [])


# on every response (behind Ray Serve set by its proxy: the client's own X-Request-ID if it sent one)
_REQUEST_ID = Header("X-Request-ID", "The request's id; quote it when reporting a problem.", required=True)
_RETRY_AFTER = Header("Retry-After", "Seconds to wait before retrying.", type="integer")
_RATELIMIT = (
    Header("RateLimit-Policy", 'The quota (draft-ietf-httpapi-ratelimit-headers), e.g. `"queued-jobs";q=100`.'),
    Header("RateLimit", 'What is left of it, e.g. `"queued-jobs";r=99`.'),
)


def _error(codes: str, *headers: Header) -> Reply:
    return Reply(codes=codes, headers=headers)


# What the signature middleware (and storage failures anywhere) can answer on every /api/agent request.
AUTH_REPLIES: dict[int, Reply] = {
    400: _error("`bad_format` (malformed signature headers)"),
    401: _error(
        "`signature_required`, `bad_signature` (also unknown, revoked and expired keys), `clock_skew`, `expired`, "
        "`digest_mismatch`, `replay`"
    ),
    403: _error("`ip_denied`, `scope_denied` (the key lacks the endpoint's scope)"),
    408: _error("`body_timeout`"),
    413: _error("`body_too_large` (over `auth.max_body_bytes`)"),
    429: _error("`rate_limited` (too many failed authentications), `too_many_pending`", _RETRY_AFTER),
    503: _error("`storage_unavailable`, `auth_busy`", _RETRY_AFTER),
    507: _error("`insufficient_storage`", _RETRY_AFTER),
}

_ACCEPTED_HEADERS = (
    Header("Idempotent-Replayed", "`true` when an earlier response to the same Idempotency-Key is replayed."),
    *_RATELIMIT,
)
_SUBMISSION_ERRORS: dict[int, Reply] = {
    400: _error("`invalid_json`, `json_too_deep`, `json_too_complex`, `invalid_idempotency_key`"),
    409: _error("`idempotency_key_in_use` (the first request with this key is still running; retryable)"),
    413: _error("`image_too_large`, `decode_budget_exceeded`, `too_many_items`"),
    415: _error("`unsupported_content_type`"),
    422: _error(
        "`missing_image`, `invalid_image`, `invalid_image_field`, `image_and_views`, `missing_front_view`, "
        "`unknown_view`, `invalid_views`, `views_not_supported`, `invalid_params`, `invalid_seed`, "
        "`invalid_priority`, `invalid_items`, `invalid_field`, `unknown_field`, `unknown_model` (the body's "
        "`models` lists the served ones), "
        "`idempotency_key_reused` (and the image codes of the agent guide)"
    ),
    429: _error("`agent_queue_full` (this agent's queued-jobs quota)", _RETRY_AFTER, *_RATELIMIT),
    503: _error("`queue_full` (the service's queue)", _RETRY_AFTER),
}
_NOT_FOUND = {404: _error("`job_not_found`")}
_IDEMPOTENCY = (
    Header("Idempotency-Key", "Makes a retry safe: the same key and body return the first response."),
    "idempotency",
)

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/healthz"): Operation(
        "Liveness", "healthz", "health", {200: Reply("The process serves requests.", Health)}, public=True
    ),
    ("GET", "/readyz"): Operation(
        "Readiness",
        "readyz",
        "health",
        {
            200: Reply("The job database is reachable.", Ready),
            503: _error("`not_ready`", _RETRY_AFTER),
        },
        public=True,
    ),
    ("GET", "/openapi.json"): Operation(
        "This document",
        "openapi",
        "health",
        {200: Reply("The OpenAPI 3.1 document of this deployment (its configured limits included).", None)},
        public=True,
    ),
    ("GET", f"{API_PREFIX}/capabilities"): Operation(
        "What this deployment accepts",
        "getCapabilities",
        "agent",
        {200: Reply("Models, parameter bounds, formats, limits and this agent's quotas.", Capabilities)},
    ),
    ("POST", f"{API_PREFIX}/jobs"): Operation(
        "Submit a job",
        "createJob",
        "jobs",
        {
            202: Reply(
                "Accepted: the job is queued.",
                JobView,
                headers=(Header("Location", "The job's status URL.", required=True), *_ACCEPTED_HEADERS),
            ),
            **_SUBMISSION_ERRORS,
        },
        description="JSON with a base64 image, or multipart/form-data with an `image` file. A multiview job sends "
        "`views` (JSON) or `view_front`, `view_left`, `view_back`, `view_right` files (multipart) instead, `front` "
        "required.",
        body={"application/json": "job", "multipart/form-data": "job_upload"},
        headers=(_IDEMPOTENCY,),
    ),
    ("GET", f"{API_PREFIX}/jobs"): Operation(
        "List this agent's jobs, newest first",
        "listJobs",
        "jobs",
        {200: Reply("One page.", JobList), 422: _error("`invalid_status`, `invalid_limit`, `invalid_cursor`")},
        query="list_query",
    ),
    ("GET", f"{API_PREFIX}/jobs/{{job_id}}"): Operation(
        "A job's status",
        "getJob",
        "jobs",
        {
            200: Reply("The job.", JobView),
            **_NOT_FOUND,
            422: _error("`invalid_wait`"),
            429: _error("`too_many_long_polls`", _RETRY_AFTER, *_RATELIMIT),
        },
        description="`?wait=N` long-polls up to N seconds for the job to finish.",
        query="wait_query",
    ),
    ("DELETE", f"{API_PREFIX}/jobs/{{job_id}}"): Operation(
        "Cancel a job",
        "cancelJob",
        "jobs",
        {200: Reply("The cancelled job.", JobView), **_NOT_FOUND, 409: _error("`job_finished`")},
    ),
    ("GET", f"{API_PREFIX}/jobs/{{job_id}}/result"): Operation(
        "Download the mesh",
        "getJobResult",
        "jobs",
        {
            200: Reply(
                "The mesh file in the asked format.",
                None,
                media=tuple(CONTENT_TYPES.values()),
                headers=(Header("Content-Disposition", '`attachment; filename="<job_id>.<format>"`'),),
            ),
            **_NOT_FOUND,
            409: _error("`result_not_ready` (retryable while queued or running)"),
            410: _error("`result_expired` (submit the job again)"),
            422: _error("`invalid_format`"),
        },
        query="result_query",
    ),
    ("GET", f"{API_PREFIX}/jobs/{{job_id}}/events"): Operation(
        "Server-sent events of a job",
        "getJobEvents",
        "jobs",
        {
            200: Reply(
                "`event: job` with the job view as `data` per change of status, stage or progress, until the job "
                "finishes; `: keep-alive` comments while nothing changes. The schema is that of one event.",
                JobEvent,
                media=("text/event-stream",),
                mode="validation",
            ),
            **_NOT_FOUND,
            429: _error("`too_many_streams`", _RETRY_AFTER, *_RATELIMIT),
        },
    ),
    ("POST", f"{API_PREFIX}/batches"): Operation(
        "Submit a batch",
        "createBatch",
        "batches",
        {202: Reply("Accepted: every job is queued.", BatchAccepted, headers=_ACCEPTED_HEADERS), **_SUBMISSION_ERRORS},
        body={"application/json": "batch"},
        headers=(_IDEMPOTENCY,),
    ),
    ("GET", f"{API_PREFIX}/batches/{{batch_id}}"): Operation(
        "A batch's status",
        "getBatch",
        "batches",
        {200: Reply("The batch and its jobs.", BatchView), 404: _error("`batch_not_found`")},
    ),
    ("POST", f"{API_PREFIX}/webhooks"): Operation(
        "Register a webhook endpoint",
        "createWebhook",
        "webhooks",
        {
            201: Reply("Registered; `secret` (the `whsec_` signing key) is shown this once.", WebhookCreated),
            400: _error("`invalid_json`, `json_too_deep`, `json_too_complex`"),
            409: _error("`webhook_limit_reached`"),
            415: _error("`unsupported_content_type`"),
            422: _error("`invalid_events`, `webhook_url_not_allowed`, `invalid_webhook`"),
        },
        description="Deliveries are signed by the Standard Webhooks profile (`webhook-id`, `webhook-timestamp`, "
        "`webhook-signature`); see docs/agent-guide.md.",
        body={"application/json": WebhookCreate},
    ),
    ("GET", f"{API_PREFIX}/webhooks"): Operation(
        "List this agent's webhook endpoints",
        "listWebhooks",
        "webhooks",
        {200: Reply("Every endpoint with its state (active or disabled, with the reason) and counters.", WebhookList)},
    ),
    ("DELETE", f"{API_PREFIX}/webhooks/{{webhook_id}}"): Operation(
        "Remove a webhook endpoint",
        "deleteWebhook",
        "webhooks",
        {
            204: Reply("Removed; its pending deliveries are dropped.", None, media=()),
            404: _error("`webhook_not_found`"),
        },
    ),
}


def register_operation(method: str, path: str, operation: Operation) -> None:
    """Add the metadata of a route another module serves (its path as in its Starlette ``Route``)."""
    OPERATIONS[(method.upper(), path)] = operation


def _operations(routes: Iterable[BaseRoute]) -> list[tuple[str, str, Operation]]:
    found = []
    for route in routes:
        if not isinstance(route, Route):
            continue
        for method in sorted(route.methods or ()):
            if method == "HEAD":  # Starlette adds it to every GET
                continue
            operation = OPERATIONS.get((method, route.path))
            if operation is None:
                raise LookupError(f"route {method} {route.path} has no OpenAPI metadata; add it to OPERATIONS")
            found.append((method, route.path, operation))
    return found


def _model(ref: ModelRef, models: RequestModels) -> type[BaseModel]:
    return getattr(models, ref) if isinstance(ref, str) else ref


def _parameters(location: str, model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=_REF)
    required = set(schema.get("required", ()))
    params = []
    for name, prop in schema["properties"].items():
        description = prop.pop("description", None)
        param: dict[str, Any] = {"name": name, "in": location, "required": name in required, "schema": prop}
        if description:
            param["description"] = description
        params.append(param)
    return params


def _header_schema(header: Header) -> dict[str, Any]:
    return {"description": header.description, "required": header.required, "schema": {"type": header.type}}


def _path_parameters(path: str) -> list[dict[str, Any]]:
    names = [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in names]


def _with_auth_replies(replies: Mapping[int, Reply]) -> dict[int, Reply]:
    """The handler's replies plus the middleware's; a status both send lists both's codes."""
    merged = dict(AUTH_REPLIES)
    for status, reply in replies.items():
        merged[status] = reply.merged(merged[status]) if status in merged and reply.codes else reply
    return merged


def build_document(routes: Iterable[BaseRoute], config: AppConfig) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` under ``config``'s limits."""
    models = request_models(config.limits, config.served_models.names)
    paths: dict[str, dict[str, Any]] = {}
    # schema objects to fill with a model's $ref once every model is known: pydantic renders them together,
    # so that shared models (JobParams, JobView) become one component each
    pending: list[tuple[dict[str, Any], tuple[type[BaseModel], JsonSchemaMode]]] = []

    def use(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        target: dict[str, Any] = {}
        pending.append((target, (model, mode)))
        return target

    for method, path, op in _operations(routes):
        entry: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
        if op.description:
            entry["description"] = op.description
        parameters = _path_parameters(path)
        if op.query is not None:
            parameters += _parameters("query", _model(op.query, models))
        for header, ref in op.headers:
            (param,) = _parameters("header", _model(ref, models))
            parameters.append({**param, "name": header.name, "description": header.description})
        if parameters:
            entry["parameters"] = parameters
        if op.body:
            content = {media: {"schema": use(_model(ref, models), "validation")} for media, ref in op.body.items()}
            entry["requestBody"] = {"required": True, "content": content}
        replies = dict(op.replies) if op.public else _with_auth_replies(op.replies)
        responses: dict[str, Any] = {}
        for status, reply in sorted(replies.items()):
            rendered: dict[str, Any] = {"description": reply.text}
            if reply.model is not None:
                schema = use(_model(reply.model, models), reply.mode)
                rendered["content"] = {media: {"schema": schema} for media in reply.media}
            elif reply.media != ("application/json",):
                rendered["content"] = {media: {"schema": {"type": "string"}} for media in reply.media}
            else:
                rendered["content"] = {"application/json": {"schema": {"type": "object"}}}
            headers: dict[str, Any] = {_REQUEST_ID.name: {"$ref": f"#/components/headers/{_REQUEST_ID.name}"}}
            headers.update((h.name, _header_schema(h)) for h in reply.headers)
            rendered["headers"] = headers
            responses[str(status)] = rendered
        entry["responses"] = responses
        if op.public:
            entry["security"] = []
        paths.setdefault(path, {})[method.lower()] = entry

    refs, top = models_json_schema(list(dict.fromkeys(key for _, key in pending)), ref_template=_REF)
    for target, key in pending:
        target.update(refs[key])
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ORFEAS agent API",
            "version": _version(),
            "description": (
                f"Image to 3D mesh jobs for agents. Every `{API_PREFIX}` request is signed (see the "
                f"`{SECURITY_SCHEME}` security scheme and {_GUIDE}). Limits are this deployment's."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": top.get("$defs", {}),
            "headers": {_REQUEST_ID.name: _header_schema(_REQUEST_ID)},
            "securitySchemes": {SECURITY_SCHEME: _security_scheme()},
        },
        "security": [{SECURITY_SCHEME: []}],
    }


def _security_scheme() -> dict[str, Any]:
    return {
        "type": "apiKey",
        "in": "header",
        "name": "Signature",
        "description": (
            "agent-api-v1: an HTTP Message Signature (RFC 9421) with HMAC-SHA256 over the key's 32-byte secret. "
            "Each request carries `Content-Digest` (RFC 9530, sha-256 of the body, empty included), "
            f"`Signature-Input` (covered components {_listed(BASE_COMPONENTS)} and `content-digest`, plus "
            f"{_listed(CONDITIONAL_FIELDS)} whenever the request carries them, in any order; parameters "
            f"{_listed(REQUIRED_PARAMS)} (`expires` at most {MAX_LIFETIME_S} s after `created`, `keyid` the key id, "
            f'`nonce` fresh per request), optionally `tag="{TAG}"`; any label) and `Signature`. '
            "OpenAPI has no type for this scheme; it is listed as an API key in the `Signature` header. "
            f"Details and examples: {_GUIDE}."
        ),
    }


def _listed(names: Iterable[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


def _version() -> str:
    try:
        return importlib.metadata.version("orfeas-serve")
    except importlib.metadata.PackageNotFoundError:
        return "0"


async def openapi_json(request: Request) -> Response:
    """``GET /openapi.json``: built on first use from this app's routes and configuration, then kept."""
    document = getattr(request.app.state, "openapi", None)
    if document is None:
        document = build_document(request.app.routes, request.app.state.service.config)
        request.app.state.openapi = document
    return JSONResponse(document)


OPENAPI_ROUTE = Route("/openapi.json", openapi_json, methods=["GET"])
