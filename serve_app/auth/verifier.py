"""The profile's server checks, in the profile's order, returning a principal or a reasoned refusal.

ASGI concerns (paths, body reading, responses, logging) live in ``middleware``; this module decides, in
three stages: the client (no store access), the headers (steps 2-5, before any body byte is read), then
digest, HMAC and nonce over the received body (steps 6-8). The HMAC itself is checked by
``http_message_signatures.HTTPMessageVerifier`` over a small adapter that exposes the request as the
server saw it: method, the CONFIGURED authority with the raw path and raw query, and the header lines.

Store round trips of a signed request: the key lookup (none while the key is cached) and one
statement that records the nonce and reads the client's failure block.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
from dataclasses import dataclass
from typing import Any, Literal

from http_message_signatures import (
    HTTPMessageSignaturesException,
    HTTPMessageVerifier,
    InvalidSignature,
    MappingKeyResolver,
    algorithms,
)
from http_message_signatures.structures import get_header_fields
from sqlalchemy.exc import SQLAlchemyError

from serve_app.auth.body import Body
from serve_app.auth.crypto import MasterKeyError
from serve_app.auth.keys import KeyMaterial, KeyStore
from serve_app.auth.network import IPAddress, ip_allowed
from serve_app.auth.nonces import NonceStore
from serve_app.auth.parsing import ParsedSignature, SignatureFormatError, parse_signature
from serve_app.auth.principal import Principal
from serve_app.auth.profile import TAG
from serve_app.auth.ratelimit import FailureLimiter, seconds_left
from serve_app.auth.settings import AuthSettings

Reason = Literal[
    "ip_denied",
    "too_many_pending",
    "auth_busy",
    "body_too_large",
    "body_timeout",
    "bad_format",
    "clock_skew",
    "expired",
    "unknown_key",
    "revoked_key",
    "expired_key",
    "digest_mismatch",
    "bad_signature",
    "replay",
    "scope_denied",
    "rate_limited",
    "store_error",
]

# Failures of the shared store (or of opening a sealed secret): the request is refused, never let through.
STORE_ERRORS: tuple[type[BaseException], ...] = (SQLAlchemyError, OSError, MasterKeyError)

_internal = logging.getLogger("orfeas.auth.internal")

_BAD_SIGNATURE = (401, "authentication_error", "bad_signature", "Signature verification failed.")
# reason -> (status, type, code, message). Unknown, revoked and expired keys answer exactly like a bad
# signature, so that probing cannot tell which key ids exist; only the log tells them apart.
_RESPONSES: dict[Reason, tuple[int, str, str, str]] = {
    "ip_denied": (403, "permission_error", "ip_denied", "Requests from this address are not allowed."),
    "too_many_pending": (
        429,
        "rate_limit_error",
        "too_many_pending",
        "Too many requests from this address are being authenticated at once; retry shortly.",
    ),
    "auth_busy": (
        503,
        "unavailable_error",
        "auth_busy",
        "Too many requests are being authenticated at once; retry shortly.",
    ),
    "body_too_large": (413, "invalid_request_error", "body_too_large", "Request body is too large."),
    "body_timeout": (408, "invalid_request_error", "body_timeout", "The request body did not arrive in time."),
    "bad_format": (400, "invalid_request_error", "bad_format", "Malformed request signature."),
    "clock_skew": (
        401,
        "authentication_error",
        "clock_skew",
        "Signature is dated in the future; check the agent's clock.",
    ),
    "expired": (
        401,
        "authentication_error",
        "expired",
        "Signature has expired; sign each request just before sending it.",
    ),
    "unknown_key": _BAD_SIGNATURE,
    "revoked_key": _BAD_SIGNATURE,
    "expired_key": _BAD_SIGNATURE,
    "bad_signature": _BAD_SIGNATURE,
    "digest_mismatch": (
        401,
        "authentication_error",
        "digest_mismatch",
        "Content-Digest does not match the request body.",
    ),
    "replay": (
        401,
        "authentication_error",
        "replay",
        "This nonce was already used; sign every request with a fresh nonce.",
    ),
    "scope_denied": (403, "permission_error", "scope_denied", "This key lacks the scope this endpoint requires."),
    "rate_limited": (429, "rate_limit_error", "rate_limited", "Too many failed authentication attempts; retry later."),
    "store_error": (
        503,
        "unavailable_error",
        # the same code as every other store failure (serve_app.errors): agents branch on one
        "storage_unavailable",
        "Authentication is temporarily unavailable; retry shortly.",
    ),
}
_LOOKUP_REASONS: dict[str, Reason] = {"unknown": "unknown_key", "revoked": "revoked_key", "expired": "expired_key"}
_RETRYABLE: frozenset[Reason] = frozenset({"rate_limited", "store_error", "too_many_pending", "auth_busy"})
# Refusals that say nothing about the caller's credentials do not feed the failure counters (and a
# write per refused request would let a flood load the store).
_NOT_COUNTED: frozenset[Reason] = frozenset({"rate_limited", "store_error", "too_many_pending", "auth_busy"})


@dataclass(frozen=True)
class Denial:
    """A refusal: what the client is told (status, type, code, message) and what only the log says."""

    reason: Reason
    status: int
    type: str
    code: str
    message: str
    retryable: bool
    retry_after: int | None = None
    key_id: str | None = None
    agent: str | None = None
    counted: bool = True  # feeds the client's failure rate limit
    detail: str | None = None

    @property
    def answers_like_bad_signature(self) -> bool:
        """Refusals that must be indistinguishable from a bad HMAC (unknown, revoked, expired keys)."""
        return self.reason in _LOOKUP_REASONS.values()


def deny(
    reason: Reason,
    *,
    message: str | None = None,
    status: int | None = None,
    error_type: str | None = None,
    code: str | None = None,
    **fields: Any,
) -> Denial:
    """A refusal with the reason's response, parts of which a caller may make more precise."""
    default_status, default_type, default_code, default_message = _RESPONSES[reason]
    return Denial(
        reason=reason,
        status=status or default_status,
        type=error_type or default_type,
        code=code or default_code,
        message=message or default_message,
        retryable=reason in _RETRYABLE,
        **{"counted": reason not in _NOT_COUNTED, **fields},
    )


@dataclass(frozen=True)
class SignedRequest:
    """The request head as the server saw it; ``authority`` is the configured one (else the Host header)."""

    method: str
    scheme: str
    authority: str | None
    raw_path: str
    raw_query: str
    headers: tuple[tuple[str, str], ...]  # lowercase names, latin-1 values, wire order
    client_ip: IPAddress


@dataclass(frozen=True)
class Candidate:
    """A request whose headers passed steps 2-5: well-formed, in its window, for an active key that
    allows the client. Only candidates have their body read for the HMAC."""

    request: SignedRequest
    signature: ParsedSignature
    key: KeyMaterial

    def refuse(self, reason: Reason, detail: str | None = None) -> Denial:
        return deny(reason, key_id=self.signature.key_id, agent=self.key.info.agent, detail=detail)


class _HeaderLines:
    def __init__(self, lines: tuple[tuple[str, str], ...]) -> None:
        self._lines = lines

    def items(self) -> tuple[tuple[str, str], ...]:
        return self._lines


@dataclass(frozen=True)
class _Message:
    """The library's request interface: method, encoded absolute URL, headers."""

    method: str
    url: str
    headers: _HeaderLines


def window_problem(created: int, expires: int, now: float, settings: AuthSettings) -> tuple[Reason, str] | None:
    """The profile's window: now-max_age <= created <= now+skew, created < expires <= created+max_age,
    expires >= now."""
    if not created < expires <= created + settings.max_age_s:
        return "bad_format", f"Parameter expires must be after created and at most {settings.max_age_s} s later."
    if created > now + settings.future_skew_s:
        return "clock_skew", f"created is {created - now:.0f} s in the future"
    if created < now - settings.max_age_s:
        return "expired", f"created {now - created:.0f} s ago"
    if expires < now:
        return "expired", f"expired {now - expires:.0f} s ago"
    return None


class _ProfileVerifier(HTTPMessageVerifier):
    """The library's verifier with the profile's window on our clock.

    The library checks created/expires against the wall clock with a fixed 5 s skew, which would reject
    the profile's allowed 60 s of future skew and ignore an injected clock; the window has already been
    checked in step 3, this repeats it inside the library's own flow.
    """

    def __init__(self, *, secret: bytes, key_id: str, settings: AuthSettings, now: float) -> None:
        resolver = MappingKeyResolver(public_keys={key_id: secret}, private_keys={})
        super().__init__(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=resolver)
        self._settings = settings
        self._now = now

    def validate_created_and_expires(self, sig_input: Any, max_age: dt.timedelta | None = None) -> None:
        params = sig_input.params
        problem = window_problem(params.get("created", 0), params.get("expires", 0), self._now, self._settings)
        if problem is not None:
            raise InvalidSignature(problem[1])


class RequestVerifier:
    """Runs steps 1-8 of the profile against the shared stores; step 9 (scopes) is per route."""

    def __init__(
        self,
        settings: AuthSettings,
        keys: KeyStore,
        nonces: NonceStore,
        limiter: FailureLimiter,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.nonces = nonces
        self.limiter = limiter
        self._last_purge = float("-inf")

    def check_client(self, client_ip: IPAddress, client: str, now: float) -> Denial | None:
        """Step 1, without the store: the global allowlist, then a failure block this process knows of.

        ``client`` is the rate-limit subject of ``client_ip`` (``network.client_subject``). A block only
        another replica has seen is caught in step 8, which reads the database."""
        if not ip_allowed(client_ip, self.settings.global_allowlist):
            # Not counted: these addresses are refused anyway, and counting would cost a write per request.
            return deny("ip_denied", counted=False, detail="not in the global allowlist")
        retry_after = self.limiter.known_block(client, now)
        if retry_after is not None:
            return deny("rate_limited", retry_after=retry_after, detail="ip backoff")
        return None

    async def check_headers(self, request: SignedRequest, now: float) -> Candidate | Denial:
        """Steps 2-5 from the headers alone."""
        headers = get_header_fields(_HeaderLines(request.headers))
        # 2. strict parse
        try:
            sig = parse_signature(headers)
        except SignatureFormatError as exc:
            if exc.missing:
                return deny(
                    "bad_format",
                    message=str(exc),
                    status=401,
                    error_type="authentication_error",
                    code="signature_required",
                    detail="no signature",
                )
            return deny("bad_format", message=str(exc), key_id=exc.key_id, detail=str(exc))
        if request.authority is None:
            return deny("bad_format", message="A Host header is required.", key_id=sig.key_id, detail="no host")
        # 3. window
        problem = window_problem(sig.created, sig.expires, now, self.settings)
        if problem is not None:
            reason, detail = problem
            message = detail if reason == "bad_format" else None
            return deny(reason, message=message, key_id=sig.key_id, detail=detail)
        # 4. key lookup (same answer for unknown, revoked and expired keys)
        lookup = await self.keys.lookup(sig.key_id)
        if lookup.material is None:
            agent = None if lookup.info is None else lookup.info.agent
            return deny(_LOOKUP_REASONS[lookup.status], key_id=sig.key_id, agent=agent)
        candidate = Candidate(request, sig, lookup.material)
        # 5. per-key IP allowlist
        cidrs = candidate.key.info.cidrs
        if cidrs and not ip_allowed(request.client_ip, cidrs):
            return candidate.refuse("ip_denied", "not in the key's CIDR allowlist")
        return candidate

    async def verify(self, candidate: Candidate, body: Body, client: str, now: float) -> Principal | Denial:
        """Steps 7, 6 and 8 (in that order) for a candidate whose body arrived within the limits."""
        request, sig, key = candidate.request, candidate.signature, candidate.key
        # 7. signature over the base rebuilt from server values, BEFORE the digest (profile step 6): the
        # HMAC covers the Content-Digest header, not the body, and checking it first keeps a caller
        # without the secret from telling a real key (digest_mismatch) from a made-up one (bad_signature)
        query = f"?{request.raw_query}" if request.raw_query else ""
        url = f"{request.scheme}://{request.authority}{request.raw_path}{query}"
        signed = _Message(request.method, url, _HeaderLines(request.headers))
        verifier = _ProfileVerifier(secret=key.secret.reveal(), key_id=sig.key_id, settings=self.settings, now=now)
        try:
            verifier.verify(
                signed,
                max_age=dt.timedelta(seconds=self.settings.max_age_s),
                expect_tag=TAG,
                require_components=sig.required_components,
            )
        except HTTPMessageSignaturesException as exc:
            return candidate.refuse("bad_signature", str(exc) or type(exc).__name__)
        # 6. body digest, from the hash taken while the body arrived (no second pass over the body)
        if not hmac.compare_digest(sig.content_sha256, body.sha256):
            return candidate.refuse("digest_mismatch", "sha-256 of the body differs from Content-Digest")
        # 8. nonce, only now that the HMAC is proven (unsigned junk must not fill the store), and the
        # client's block as the database has it, in the same statement
        admission = await self.nonces.admit(
            sig.key_id, sig.nonce, expires_at=sig.expires + self.settings.future_skew_s, client=client
        )
        self.limiter.learn(client, admission.blocked_until, now)
        retry_after = seconds_left(admission.blocked_until, now)
        if retry_after is not None:
            return deny("rate_limited", retry_after=retry_after, key_id=sig.key_id, detail="ip backoff")
        if not admission.fresh:
            return candidate.refuse("replay")
        await self._maybe_purge(now)
        return Principal(key_id=key.info.key_id, agent=key.info.agent, scopes=frozenset(key.info.scopes))

    async def _maybe_purge(self, now: float) -> None:
        """Housekeeping at most once per ``purge_interval_s`` per process; its failure refuses nothing."""
        if now - self._last_purge < self.settings.purge_interval_s:
            return
        self._last_purge = now
        try:
            await self.nonces.purge_expired(now)
            await self.limiter.purge_stale(now)
        except STORE_ERRORS:
            _internal.exception("auth store purge failed")
