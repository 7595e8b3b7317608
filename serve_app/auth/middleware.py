"""``AgentAuthMiddleware``: the pure ASGI middleware that guards ``/api/agent/*``.

Per protected request: resolve the trusted client IP, run step 1 (allowlist, IP backoff), buffer the
body under the size limit, run steps 2-8 (``RequestVerifier``), then call the app with the principal in
``scope["state"]`` and the body replayed unchanged. Every decision is logged exactly once; refusals count
toward the failure rate limits.

Mount it inside the Starlette app (``Starlette(middleware=[...])``), so that :class:`ScopeDenied`
raised by a handler reaches it before Starlette's error middleware turns it into a 500; put
``RequestIdMiddleware`` outermost (wrapping the Starlette app) so that every response carries the id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.auth.audit import AuthDecision, log_decision
from serve_app.auth.errors import error_response
from serve_app.auth.keys import KeyStore
from serve_app.auth.network import IPAddress, client_ip
from serve_app.auth.nonces import NonceStore
from serve_app.auth.principal import PRINCIPAL_STATE_KEY, Principal, ScopeDenied
from serve_app.auth.ratelimit import FailureLimiter
from serve_app.auth.request_id import request_id_of
from serve_app.auth.secret import Secret
from serve_app.auth.settings import AuthSettings, normalize_authority
from serve_app.auth.verifier import STORE_ERRORS, Denial, RequestVerifier, SignedRequest, deny

_internal = logging.getLogger("orfeas.auth.internal")


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


@dataclass(frozen=True)
class _Context:
    request_id: str
    client_ip: IPAddress | None
    method: str
    path: str

    def decision(self, reason: str, status: int, **fields: Any) -> AuthDecision:
        return AuthDecision(
            reason=reason,
            status=status,
            request_id=self.request_id,
            client_ip=None if self.client_ip is None else str(self.client_ip),
            method=self.method,
            path=self.path,
            **fields,
        )


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length" and value.isdigit() and int(value) > limit:
            raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _signed_request(scope: Scope, settings: AuthSettings, body: bytes, address: IPAddress) -> SignedRequest:
    headers = tuple((name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in scope["headers"])
    authority = settings.authority
    if authority is None:
        host = next((value for name, value in headers if name == "host"), None)
        try:
            authority = None if host is None else normalize_authority(host)
        except ValueError:
            authority = None
    raw_path = scope.get("raw_path")
    # ASGI's raw_path excludes the query, but some servers and test transports have included it.
    path = raw_path.split(b"?", 1)[0].decode("latin-1") if raw_path else quote(scope["path"])
    return SignedRequest(
        method=scope["method"],
        scheme=scope.get("scheme", "http"),
        authority=authority,
        raw_path=path,
        raw_query=scope.get("query_string", b"").decode("latin-1"),
        headers=headers,
        body=body,
        client_ip=address,
    )


class AgentAuthMiddleware:
    """Requires a valid agent-api-v1 signature on every path under ``settings.protected_prefix``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: AuthSettings,
        keys: KeyStore,
        nonces: NonceStore,
        limiter: FailureLimiter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.settings = settings
        self.verifier = RequestVerifier(settings, keys, nonces, limiter)
        self.clock = clock

    def _protects(self, path: str) -> bool:
        prefix = self.settings.protected_prefix
        return path.startswith(prefix) or path == prefix.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._protects(scope["path"]):
            await self.app(scope, receive, send)
            return
        now = self.clock()
        ctx = _Context(
            request_id=request_id_of(scope),
            client_ip=client_ip(scope, self.settings.trusted_proxies),
            method=scope["method"],
            path=scope["path"],
        )
        try:
            outcome = await self._authenticate(scope, receive, ctx, now)
        except _ClientGone:
            return  # nobody to answer and nothing decided
        except STORE_ERRORS as exc:
            _internal.warning("auth store failed: %s", type(exc).__name__)
            outcome = deny("store_error", retry_after=1, detail=type(exc).__name__)
        except Exception:
            log_decision(ctx.decision("internal_error", 500), now)
            raise
        if isinstance(outcome, Denial):
            await self._refuse(ctx, outcome, scope, receive, send, now)
            return
        principal, body = outcome
        await self._call_app(ctx, principal, body, scope, receive, send, now)

    async def _authenticate(
        self, scope: Scope, receive: Receive, ctx: _Context, now: float
    ) -> Denial | tuple[Principal, bytes]:
        # 1. trusted client IP -> global allowlist (and its failure backoff); body size limit
        if ctx.client_ip is None:
            return deny("ip_denied", detail="client address unknown or unparseable")
        denial = await self.verifier.check_client(ctx.client_ip, now)
        if denial is not None:
            return denial
        try:
            body = await _read_body(scope, receive, self.settings.max_body_bytes)
        except _BodyTooLarge:
            return deny("body_too_large", message=f"Request body exceeds {self.settings.max_body_bytes} bytes.")
        # 2-8. signature, window, key, key CIDRs, digest, HMAC, nonce
        outcome = await self.verifier.verify(_signed_request(scope, self.settings, body, ctx.client_ip), now)
        return outcome if isinstance(outcome, Denial) else (outcome, body)

    async def _refuse(
        self, ctx: _Context, denial: Denial, scope: Scope, receive: Receive, send: Send, now: float
    ) -> None:
        if denial.counted:
            await self._count_failure(ctx, denial, now)
        decision = ctx.decision(
            denial.reason, denial.status, key_id=denial.key_id, agent=denial.agent, detail=denial.detail
        )
        log_decision(decision, now)
        headers = {} if denial.retry_after is None else {"Retry-After": str(denial.retry_after)}
        response = error_response(
            denial.status, denial.type, denial.code, denial.message, denial.retryable, ctx.request_id, headers
        )
        await response(scope, receive, send)

    async def _count_failure(self, ctx: _Context, denial: Denial, now: float) -> None:
        # Per key only once the key is known to exist (step 4 on), so made-up key ids create no counters.
        try:
            if ctx.client_ip is not None:
                await self.verifier.limiter.record_failure("ip", str(ctx.client_ip), now)
            if denial.key_known and denial.key_id is not None:
                await self.verifier.limiter.record_failure("key", denial.key_id, now)
        except STORE_ERRORS:
            # The request is refused anyway; a lost count must not turn a 401 into a 503.
            _internal.exception("recording an auth failure failed")

    async def _call_app(
        self, ctx: _Context, principal: Principal, body: bytes, scope: Scope, receive: Receive, send: Send, now: float
    ) -> None:
        scope.setdefault("state", {})[PRINCIPAL_STATE_KEY] = principal
        body_sent = False
        logged = False

        async def replay_receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        def log_allowed(status: int) -> None:
            nonlocal logged
            logged = True
            log_decision(ctx.decision("ok", status, key_id=principal.key_id, agent=principal.agent), now)

        async def logging_send(message: Message) -> None:
            # Logged when the response starts, so long streams (SSE) are not logged only at their end.
            if message["type"] == "http.response.start" and not logged:
                log_allowed(message["status"])
            await send(message)

        try:
            await self.app(scope, replay_receive, logging_send)
        except ScopeDenied as exc:
            if logged:
                raise
            message = f"This key lacks the scope {exc.scope!r} that this endpoint requires."
            denial = deny(
                "scope_denied",
                message=message,
                key_id=principal.key_id,
                agent=principal.agent,
                key_known=True,
                detail=exc.scope,
            )
            await self._refuse(ctx, denial, scope, receive, send, now)
        except Exception:
            if not logged:
                log_allowed(500)
            raise


def auth_middleware(
    engine: AsyncEngine,
    settings: AuthSettings,
    master_key: Secret,
    *,
    clock: Callable[[], float] = time.time,
) -> Middleware:
    """``Middleware(AgentAuthMiddleware, ...)`` with stores on ``engine``, for ``Starlette(middleware=[...])``."""
    return Middleware(
        AgentAuthMiddleware,
        settings=settings,
        keys=KeyStore(engine, master_key),
        nonces=NonceStore(engine),
        limiter=FailureLimiter(engine, settings.rate_limit),
        clock=clock,
    )
