"""``AgentAuthMiddleware``: the pure ASGI middleware that guards ``/api/agent/*``.

Per protected request, in this order (``RequestVerifier`` decides each step):

1. resolve the trusted client IP; global allowlist and a known failure block, without the store; take a
   pending slot (per client and in total, held until the request is verified or refused);
2. Content-Length against the body limit (413 without reading), then steps 2-5 from the headers alone:
   signature format, window, key (cached), key CIDRs; nothing else is read for a request failing them;
3. receive the body under ONE deadline and the size limit, hashing it as it arrives (408 / 413);
4. steps 6-8: HMAC, then the digest (from the hash taken on arrival), then nonce and the client's block
   in one store transaction;

then call the app with the principal in ``scope["state"]`` and the body replayed unchanged. Every
decision is logged exactly once; refusals count toward the client's failure rate limit (never a key's).

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
from serve_app.auth.body import (
    EMPTY,
    Body,
    BodyTimeout,
    BodyTooLarge,
    ClientGone,
    declared_length,
    declares_no_body,
    read_body,
)
from serve_app.auth.errors import error_response
from serve_app.auth.keys import KeyStore
from serve_app.auth.network import IPAddress, client_ip, client_subject
from serve_app.auth.nonces import NonceStore
from serve_app.auth.pending import PendingSlots
from serve_app.auth.principal import PRINCIPAL_STATE_KEY, Principal, ScopeDenied
from serve_app.auth.ratelimit import FailureLimiter
from serve_app.auth.request_id import request_id_of
from serve_app.auth.secret import Secret
from serve_app.auth.settings import AuthSettings, normalize_authority
from serve_app.auth.verifier import STORE_ERRORS, Denial, RequestVerifier, SignedRequest, deny

_internal = logging.getLogger("orfeas.auth.internal")

# Seconds a client is told to wait when the pending caps are full: slots free within a body deadline.
_PENDING_RETRY_AFTER_S = 1


@dataclass(frozen=True)
class _Context:
    request_id: str
    client_ip: IPAddress | None
    client: str | None  # the rate-limit subject of client_ip: the address, or an IPv6 client's /64
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


def _signed_request(scope: Scope, settings: AuthSettings, address: IPAddress) -> SignedRequest:
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
        self.pending = PendingSlots(per_client=settings.max_pending_per_ip, total=settings.max_pending_total)
        self.clock = clock

    def _protects(self, path: str) -> bool:
        prefix = self.settings.protected_prefix
        return path.startswith(prefix) or path == prefix.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._protects(scope["path"]):
            await self.app(scope, receive, send)
            return
        now = self.clock()
        address = client_ip(scope, self.settings.trusted_proxies)
        ctx = _Context(
            request_id=request_id_of(scope),
            client_ip=address,
            client=None if address is None else client_subject(address),
            method=scope["method"],
            path=scope["path"],
        )
        try:
            outcome = await self._authenticate(scope, receive, ctx, now)
        except ClientGone:
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
        # 1. trusted client IP -> global allowlist, known failure block
        if ctx.client_ip is None or ctx.client is None:
            return deny("ip_denied", detail="client address unknown or unparseable")
        denial = self.verifier.check_client(ctx.client_ip, ctx.client, now)
        if denial is not None:
            return denial
        return await self._verify(scope, receive, ctx.client_ip, ctx.client, now)

    async def _receive_body(self, scope: Scope, receive: Receive, client: str) -> Body | Denial:
        """The body under one deadline, holding a pending slot while it arrives.

        The slot covers only the phase the client controls (a slow upload pins a connection and memory);
        the checks after it are the server's own work, so a busy database cannot make an honest agent with
        many requests in flight hit its per-client cap."""
        if declares_no_body(scope):
            return EMPTY
        full = self.pending.acquire(client)
        if full == "per_client":
            return deny("too_many_pending", retry_after=_PENDING_RETRY_AFTER_S, detail="per-client pending cap")
        if full == "total":
            return deny("auth_busy", retry_after=_PENDING_RETRY_AFTER_S, detail="total pending cap")
        limit, timeout_s = self.settings.max_body_bytes, self.settings.body_timeout_s
        try:
            return await read_body(receive, limit=limit, timeout_s=timeout_s)
        except BodyTooLarge:
            return self._too_large()
        except BodyTimeout:
            return deny("body_timeout", message=f"The request body did not arrive within {timeout_s:g} s.")
        finally:
            self.pending.release(client)

    def _too_large(self) -> Denial:
        """The one refusal of a body over the limit, whether announced (Content-Length) or received."""
        return deny("body_too_large", message=f"Request body exceeds {self.settings.max_body_bytes} bytes.")

    async def _verify(
        self, scope: Scope, receive: Receive, address: IPAddress, client: str, now: float
    ) -> Denial | tuple[Principal, bytes]:
        declared = declared_length(scope)
        if declared is not None and declared > self.settings.max_body_bytes:
            return self._too_large()
        # 2-5. signature format, window, key, key CIDRs: from the headers, before any body byte
        checked = await self.verifier.check_headers(_signed_request(scope, self.settings, address), now)
        if isinstance(checked, Denial) and not checked.answers_like_bad_signature:
            return checked
        # Unknown, revoked and expired keys wait for the body like a real key would: refusing them at
        # once would tell a prober which key ids exist by whether the server wants the body.
        body = await self._receive_body(scope, receive, client)
        if isinstance(body, Denial):
            return body
        if isinstance(checked, Denial):
            return checked
        # 6-8. HMAC, digest, nonce and the client's block
        outcome = await self.verifier.verify(checked, body, client, now)
        return outcome if isinstance(outcome, Denial) else (outcome, body.data)

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
        # Against the client only, never the key id (see ratelimit): strangers must not lock an agent out.
        if ctx.client is None:
            return
        try:
            await self.verifier.limiter.record_failure(ctx.client, now)
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
        keys=KeyStore(engine, master_key, cache_ttl_s=settings.key_cache_ttl_s),
        nonces=NonceStore(engine),
        limiter=FailureLimiter(engine, settings.rate_limit),
        clock=clock,
    )
