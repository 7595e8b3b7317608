"""Typed settings of the auth layer; built once by the application builder and passed down explicitly."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.auth.network import ALL_ADDRESSES, IPNetwork, parse_cidr
from serve_app.auth.profile import MAX_LIFETIME_S


class RateLimitSettings(BaseModel):
    """Failure backoff: ``max_failures_per_ip`` refusals within ``window_s`` block the client for a while.

    The subject is the client IP (an IPv6 client's /64). Key ids are not secret, so refusals never count
    against a key: a stranger could otherwise lock a real agent out. The block lasts
    ``backoff_base_s * 2**k`` (capped at ``backoff_max_s``) for the k-th block in a row; a subject that
    stays clean for ``forgive_after_s`` after its last block starts again at k = 0.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    window_s: float = Field(60.0, gt=0, description="Refusals within this many seconds count toward a block.")
    max_failures_per_ip: int = Field(
        20,
        ge=1,
        description="Refusals from one client IP (IPv6: its /64) within `window_s` that block it (429 + "
        "`Retry-After`). Refusals never count against a key id: key ids are not secret.",
    )
    backoff_base_s: float = Field(
        30.0, gt=0, description="Length of the first block; each further block in a row doubles it."
    )
    backoff_max_s: float = Field(900.0, gt=0, description="Longest block; at least `backoff_base_s`.")
    forgive_after_s: float = Field(
        3600.0,
        ge=0,
        description="A subject that stays clean this long after its last block starts again at `backoff_base_s`.",
    )

    @model_validator(mode="after")
    def _backoff(self) -> RateLimitSettings:
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError("backoff_max_s must be >= backoff_base_s")
        return self


def normalize_authority(value: str) -> str:
    """Lowercase host[:port] without a default port, the way signers serialize ``@authority``.

    Clients drop :80 for http and :443 for https before signing; the server may see another scheme
    behind a TLS-terminating proxy, so both default ports are dropped regardless of scheme.
    """
    authority = value.strip().lower()
    if not authority or "/" in authority or "@" in authority or " " in authority:
        raise ValueError(f"authority must be host[:port] as clients address the API, got {value!r}")
    host, sep, port = authority.rpartition(":")
    if sep and not host.endswith("]") and ":" in host:
        return authority  # a bare IPv6 address without brackets has no port to strip
    if sep and port in ("80", "443"):
        return host
    return authority


class AuthSettings(BaseModel):
    """Everything the auth middleware and key tooling need, with the profile's defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    protected_prefix: str = Field(
        "/api/agent/",
        description="Paths under this prefix need a valid agent signature; others (e.g. `/healthz`) do not.",
    )
    max_age_s: int = Field(
        MAX_LIFETIME_S,
        ge=1,
        le=MAX_LIFETIME_S,
        description="Signature window: `created` may be at most this many seconds old "
        "(`now - max_age_s <= created`, and `expires` not passed); the profile caps it at 300.",
    )
    future_skew_s: int = Field(
        60,
        ge=0,
        le=MAX_LIFETIME_S,
        description="Signature window: `created` may be this many seconds ahead of the server's clock "
        "(`created <= now + future_skew_s`).",
    )
    authority: str | None = Field(
        None,
        description="`host[:port]` agents sign as `@authority`; null trusts the Host header (fine for one known "
        "hostname). Set it behind proxies that rewrite Host.",
    )
    global_allowlist: tuple[IPNetwork, ...] = Field(
        ALL_ADDRESSES, description="CIDRs allowed at all (403 `ip_denied` otherwise)."
    )
    trusted_proxies: tuple[IPNetwork, ...] = Field(
        (),
        description="TCP peers whose `X-Forwarded-For` is believed (load balancers in front of the Serve proxy); "
        "the client is the right-most untrusted hop.",
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024,
        ge=0,
        description="Larger bodies get 413: at once when `Content-Length` says so, else as soon as the stream "
        "passes it.",
    )
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Deadline for receiving the whole body of a protected request, after its headers passed the "
        "signature checks (408 `body_timeout`). Serve's proxy lets clients disable its own timeout with "
        "`X-Request-Timeout-Seconds: 0`; this one they cannot.",
    )
    max_pending_per_ip: int = Field(
        16,
        ge=1,
        description="Requests from one client IP (IPv6: its /64) whose body is arriving at once in one ingress "
        "replica (the phase a slow client controls); more get 429 `too_many_pending` + `Retry-After`.",
    )
    max_pending_total: int = Field(
        128,
        ge=1,
        description="Requests whose body is arriving at once in one ingress replica, all clients together; more get "
        "503 `auth_busy` + `Retry-After`. Keep it below the ingress's `max_ongoing_requests` so that "
        "authenticated calls always find a slot.",
    )
    key_cache_ttl_s: float = Field(
        5.0,
        ge=0,
        description="How long a replica reuses an active key it looked up; a revocation or rotation made by another "
        "process (`orfeas keys`) takes effect within this bound (at once in the process that made it). 0 looks "
        "the key up on every request.",
    )
    rate_limit: RateLimitSettings = Field(RateLimitSettings(), description="Failure backoff per IP and per key.")
    purge_interval_s: float = Field(
        60.0, gt=0, description="How often (per process) expired nonces and stale failure counters are deleted."
    )
    master_key_env: str = Field(
        "ORFEAS_MASTER_KEY",
        description="Environment variable with the master key that encrypts agent secrets at rest "
        "(base64 of 32 bytes).",
    )
    master_key_file: Path | None = Field(
        None,
        description="File with the master key, read instead of `master_key_env`; dev mode falls back to "
        "`data_dir/master.key`.",
    )

    @field_validator("authority")
    @classmethod
    def _authority(cls, value: str | None) -> str | None:
        return None if value is None else normalize_authority(value)

    @field_validator("protected_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"protected_prefix must start with '/', got {value!r}")
        return value

    @field_validator("global_allowlist", "trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if isinstance(value, str):
            raise ValueError("give a list of CIDRs, not one string")
        if isinstance(value, (list, tuple)):
            return tuple(parse_cidr(item) if isinstance(item, str) else item for item in value)
        return value
