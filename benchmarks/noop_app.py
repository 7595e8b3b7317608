"""A no-op Starlette ingress: the ceiling Serve's HTTP proxy allows on this machine.

`benchmarks/endpoint_latency.py` calls it side by side with the real `AgentIngress` on the same proxy
(`configs/endpoint_benchmark.yaml` mounts it at `/noop`), so the ratio of their calls/s is the cost of
the application alone: signature verification, its database round trips and the handler. It is built
the way `AgentIngress` is (`@serve.ingress()` with `__serve_build_asgi_app__`, the same
`max_ongoing_requests`), so the two differ in what the app does, not in how Serve reaches it.
"""

from __future__ import annotations

from ray import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp


async def noop(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def build_noop_http_app() -> Starlette:
    """Answers every path and method with `200 {"ok": true}` without reading the body or the signature."""
    # any path: the benchmark mirrors the real routes under the prefix, so the request lines are alike
    return Starlette(routes=[Route("/{path:path}", noop, methods=["GET", "POST", "DELETE"])])


@serve.deployment(
    # as AgentIngress (serve_app/ingress.py), so only the application differs between the two; but a
    # quarter CPU: logical only (Ray pins nothing), and with ShapeGenerator 1 + AgentIngress 0.5 + JobWorker
    # 0.25 the benchmark config then fits the 2 CPUs `serve run` gives a 2-core box
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=256,
    health_check_period_s=10,
)
@serve.ingress()
class NoopIngress:
    def __init__(self) -> None:
        self._app = build_noop_http_app()

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return self._app


# the import path of `configs/endpoint_benchmark.yaml`: `benchmarks.noop_app:app`
app = NoopIngress.bind()  # type: ignore[attr-defined]  # a Deployment after @serve.deployment
