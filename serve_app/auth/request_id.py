"""Request ids: honour a sane incoming ``X-Request-ID``, else make one; echo it on every response."""

from __future__ import annotations

import re
import uuid
from collections.abc import MutableMapping
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-ID"
# Echoed into headers and logs: a conservative alphabet keeps both injection-free.
_SANE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def new_request_id() -> str:
    # the dashed form, as Ray Serve's proxy makes them: one shape of id whichever side made it
    return str(uuid.uuid4())


def request_id_of(scope: MutableMapping[str, Any]) -> str:
    """The request's id from ``scope["state"]``, creating one if no middleware set it yet."""
    state = scope.setdefault("state", {})
    if "request_id" not in state:
        state["request_id"] = _incoming(scope) or new_request_id()
    return str(state["request_id"])


def _incoming(scope: MutableMapping[str, Any]) -> str | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"x-request-id":
            text = value.decode("latin-1")
            return text if _SANE.fullmatch(text) else None
    return None


class RequestIdMiddleware:
    """Pure ASGI middleware; put it outermost so that every response, errors included, carries the id.

    Handlers read it as ``request.state.request_id``.
    """

    def __init__(self, app: ASGIApp, *, echo_header: bool = True) -> None:
        self.app = app
        # Ray Serve's proxy already echoes the id it put on the request; a second header line would repeat it
        self.echo_header = echo_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        if not self.echo_header:
            await self.app(scope, receive, send)
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)
