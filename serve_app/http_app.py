"""The Starlette app of the ingress: routes, signature middleware, error shape, request ids."""

from __future__ import annotations

import os
from collections.abc import Mapping

from starlette.applications import Starlette
from starlette.types import ASGIApp

from serve_app.auth.middleware import auth_middleware
from serve_app.auth.request_id import RequestIdMiddleware
from serve_app.auth.serve_proxy import require_peer_addresses
from serve_app.errors import exception_handlers
from serve_app.metrics import IngressMetrics
from serve_app.openapi import OPENAPI_ROUTE
from serve_app.routes import ROUTES
from serve_app.service import AgentService


def build_http_app(
    service: AgentService,
    *,
    behind_serve_proxy: bool = False,
    metrics: IngressMetrics | None = None,
    environ: Mapping[str, str] | None = None,
) -> ASGIApp:
    """Request ids outermost (every response carries one, 500s included); the auth middleware inside
    Starlette's stack so a handler's ScopeDenied becomes a logged 403.

    Behind Ray Serve's proxy the request already carries the proxy's X-Request-ID (the client's, if it
    sent one) and the proxy echoes it on the response, so we use that id and leave the echo to it. The
    replica also refuses to start there if the proxy would rewrite client addresses from X-Forwarded-For
    (``environ``, default ``os.environ``: a replica inherits the proxy's environment)."""
    if behind_serve_proxy:
        require_peer_addresses(os.environ if environ is None else environ)
    app = Starlette(
        routes=[*ROUTES, OPENAPI_ROUTE],  # /openapi.json: outside /api/agent, so public like /healthz
        middleware=[auth_middleware(service.engine, service.config.auth, service.master_key)],
        exception_handlers=exception_handlers(),  # type: ignore[arg-type]
    )
    app.state.service = service
    app.state.metrics = metrics  # None in-process: Ray's metrics need a Serve replica
    return RequestIdMiddleware(app, echo_header=not behind_serve_proxy)
