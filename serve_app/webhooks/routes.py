"""HTTP handlers of ``/api/agent/webhooks``: register (the secret shown once), list with state, delete.

Request and response bodies are pydantic models, so the OpenAPI document can be built from them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serve_app.auth.principal import require_scope
from serve_app.errors import ApiError, not_found
from serve_app.jobs.store import utcnow
from serve_app.json_body import JsonRejected, loads_bounded
from serve_app.service import AgentService
from serve_app.views import iso
from serve_app.webhooks.endpoints import Endpoint, EndpointLimitReached, EndpointStore
from serve_app.webhooks.outbox import EVENT_TYPES
from serve_app.webhooks.signing import secret_text
from serve_app.webhooks.ssrf import HostPolicy, UrlGuard, UrlRefused

EventType = Literal["job.succeeded", "job.failed", "job.cancelled", "job.expired"]
MAX_URL_CHARS = 2048


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=MAX_URL_CHARS, description="Where events are POSTed (http or https).")
    events: list[EventType] = Field(min_length=1, description="The event types to receive (at least one).")


class WebhookCreated(BaseModel):
    id: str
    url: str
    events: list[EventType]
    created_at: str
    secret: str = Field(description="`whsec_<base64>`: the Standard Webhooks signing secret, shown only here.")


class WebhookView(BaseModel):
    id: str
    url: str
    events: list[EventType]
    created_at: str
    state: Literal["active", "disabled"]
    disabled_reason: str | None
    disabled_at: str | None
    delivered_count: int = Field(description="Deliveries the endpoint answered with 2xx.")
    failed_count: int = Field(description="Deliveries that failed after every attempt.")
    consecutive_failures: int = Field(description="Failed deliveries since the last successful one.")
    last_attempt_at: str | None
    last_success_at: str | None
    last_status_code: int | None
    last_error: str | None


class WebhookList(BaseModel):
    webhooks: list[WebhookView]


def _service(request: Request) -> AgentService:
    return request.app.state.service


def _store(service: AgentService) -> EndpointStore:
    return EndpointStore(service.engine, service.master_key, clock=utcnow)


def view(endpoint: Endpoint) -> WebhookView:
    return WebhookView(
        id=endpoint.id,
        url=endpoint.url,
        events=list(endpoint.events),  # stored from a validated WebhookCreate
        created_at=iso(endpoint.created_at) or "",
        state="disabled" if endpoint.status == "disabled" else "active",
        disabled_reason=endpoint.disabled_reason,
        disabled_at=iso(endpoint.disabled_at),
        delivered_count=endpoint.delivered_count,
        failed_count=endpoint.failed_count,
        consecutive_failures=endpoint.consecutive_failures,
        last_attempt_at=iso(endpoint.last_attempt_at),
        last_success_at=iso(endpoint.last_success_at),
        last_status_code=endpoint.last_status_code,
        last_error=endpoint.last_error,
    )


def _parse(raw: bytes, service: AgentService) -> WebhookCreate:
    limits = service.config.limits
    try:
        data = loads_bounded(raw, limits.max_json_depth, limits.max_json_values)
    except JsonRejected as exc:
        raise ApiError(400, exc.code, exc.message) from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    try:
        return WebhookCreate.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = str(first["loc"][0]) if first["loc"] else ""
        if where == "events":
            raise ApiError(
                422, "invalid_events", f"events must be a non-empty list of {', '.join(EVENT_TYPES)}"
            ) from None
        if where == "url" and first["type"] != "missing":
            raise ApiError(
                422, "webhook_url_not_allowed", f"url must be a string of at most {MAX_URL_CHARS} characters"
            ) from None
        raise ApiError(
            422, "invalid_webhook", f'{where or "body"}: {first["msg"]}; the body is {{"url", "events"}}'
        ) from None


async def create_webhook(request: Request) -> Response:
    principal = require_scope(request, "jobs:write")
    service = _service(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, "unsupported_content_type", "send the webhook as application/json")
    body = _parse(await request.body(), service)
    settings = service.config.webhooks
    guard = UrlGuard(HostPolicy.from_settings(settings.allowed_hosts, dev=service.config.mode == "dev"))
    try:
        await guard.check(body.url)
    except UrlRefused as exc:
        raise ApiError(422, "webhook_url_not_allowed", f"url {body.url[:200]!r} is not allowed: {exc}") from None
    events = list(dict.fromkeys(body.events))  # each once, in the order given
    try:
        endpoint, secret = await _store(service).create(
            principal.agent, body.url, events, limit=settings.max_endpoints_per_agent
        )
    except EndpointLimitReached as exc:
        raise ApiError(409, "webhook_limit_reached", str(exc)) from None
    created = WebhookCreated(
        id=endpoint.id,
        url=endpoint.url,
        events=events,
        created_at=iso(endpoint.created_at) or "",
        secret=secret_text(secret),
    )
    return JSONResponse(created.model_dump(), status_code=201)


async def list_webhooks(request: Request) -> Response:
    principal = require_scope(request, "jobs:read")
    endpoints = await _store(_service(request)).list(principal.agent)
    return JSONResponse(WebhookList(webhooks=[view(e) for e in endpoints]).model_dump())


async def delete_webhook(request: Request) -> Response:
    principal = require_scope(request, "jobs:write")
    webhook_id = request.path_params["webhook_id"]
    if not await _store(_service(request)).delete(principal.agent, webhook_id):
        raise not_found("webhook", webhook_id)
    return Response(status_code=204)


WEBHOOK_ROUTES = [
    Route("/api/agent/webhooks", create_webhook, methods=["POST"]),
    Route("/api/agent/webhooks", list_webhooks, methods=["GET"]),
    Route("/api/agent/webhooks/{webhook_id}", delete_webhook, methods=["DELETE"]),
]
