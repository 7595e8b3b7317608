"""Client side of agent-api-v1: an ``httpx.Auth`` that signs every request (RFC 9421, hmac-sha256).

Imports only httpx, http-message-signatures and this package's stdlib-only modules, so the client SDK
can use it without Ray, torch, SQLAlchemy or Starlette.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import secrets
import time
from collections.abc import Callable, Generator
from typing import Any, cast

import http_sf
import httpx
from http_message_signatures import HTTPMessageSigner, MappingKeyResolver, PreparedSignature, algorithms

from serve_app.auth.profile import (
    MAX_LIFETIME_S,
    NONCE_BYTES,
    PARAM_ORDER,
    SIGNATURE_LABEL,
    TAG,
    covered_components,
)
from serve_app.auth.secret import Secret

# Headers this signer owns; stale values from a retried request must not survive re-signing.
_SIGNING_HEADERS = ("content-digest", "signature", "signature-input")


def decode_secret(secret_b64: str) -> Secret:
    """The 32 raw key bytes from the standard base64 text that ``orfeas keys create`` prints."""
    try:
        raw = base64.b64decode(secret_b64.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(
            "agent secret is not standard base64; paste it exactly as `orfeas keys create` printed it"
        ) from exc
    if len(raw) != 32:
        raise ValueError(f"agent secret decodes to {len(raw)} bytes, expected 32; check that it was copied whole")
    return Secret(raw)


def new_nonce() -> str:
    """16 CSPRNG bytes, base64url without padding (22 characters)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(NONCE_BYTES)).rstrip(b"=").decode("ascii")


class _ProfileSigner(HTTPMessageSigner):
    """The library's signer with the profile's parameter order (created, expires, keyid, nonce, tag).

    Any order verifies, but the library writes created, keyid, alg, expires, ...; emitting the profile's
    order makes our output byte-for-byte equal to the profile's known-answer vector. ``apply()`` rebuilds
    the signature base from the reordered parameters and refuses to sign if it differs from ours.
    """

    def prepare(self, message: Any, **kwargs: Any) -> PreparedSignature:
        prepared = super().prepare(message, **kwargs)
        parsed = cast(dict[str, Any], http_sf.parse(b"x=" + prepared.signature_params.encode(), tltype="dictionary"))
        components, params = parsed["x"]
        ordered = {name: params[name] for name in PARAM_ORDER if name in params}
        ordered.update((name, value) for name, value in params.items() if name not in ordered)
        signature_params = http_sf.ser({"x": (components, ordered)})[len("x=") :]
        head, _, _ = prepared.signature_base.rpartition(b"\n")
        base = head + b'\n"@signature-params": ' + signature_params.encode("ascii")
        return dataclasses.replace(prepared, signature_base=base, signature_params=signature_params)


@dataclasses.dataclass
class _RequestView:
    """What the library reads from a request: method, encoded absolute URL, live headers."""

    method: str
    url: str
    headers: httpx.Headers


class AgentSigner(httpx.Auth):
    """Signs each request per agent-api-v1: Content-Digest of the raw body, then one ``sig1`` signature.

    ``lifetime_s`` sets ``expires = created + lifetime_s`` (at most 300 s). ``clock`` and ``nonce_factory``
    exist for known-answer tests; production uses the wall clock and fresh CSPRNG nonces.
    """

    requires_request_body = True

    def __init__(
        self,
        key_id: str,
        secret_b64: str | Secret,
        *,
        lifetime_s: int = MAX_LIFETIME_S,
        clock: Callable[[], float] = time.time,
        nonce_factory: Callable[[], str] = new_nonce,
        tag: str = TAG,
    ) -> None:
        if not 0 < lifetime_s <= MAX_LIFETIME_S:
            raise ValueError(f"lifetime_s must be in 1..{MAX_LIFETIME_S}, got {lifetime_s}")
        secret = secret_b64 if isinstance(secret_b64, Secret) else decode_secret(secret_b64)
        self.key_id = key_id
        self._lifetime_s = lifetime_s
        self._clock = clock
        self._nonce_factory = nonce_factory
        self._tag = tag
        resolver = MappingKeyResolver(public_keys={}, private_keys={key_id: secret.reveal()})
        self._signer = _ProfileSigner(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=resolver)

    def __repr__(self) -> str:
        return f"AgentSigner(key_id={self.key_id!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self.sign(request)
        yield request

    def sign(self, request: httpx.Request) -> None:
        """Add Content-Digest, Signature-Input and Signature to ``request`` in place (body already read)."""
        for name in _SIGNING_HEADERS:
            request.headers.pop(name, None)
        created = int(self._clock())
        components = covered_components(
            has_content_type="content-type" in request.headers,
            has_idempotency_key="idempotency-key" in request.headers,
        )
        self._signer.sign(
            _RequestView(method=request.method, url=str(request.url), headers=request.headers),
            key_id=self.key_id,
            created=dt.datetime.fromtimestamp(created, dt.timezone.utc),
            expires=dt.datetime.fromtimestamp(created + self._lifetime_s, dt.timezone.utc),
            nonce=self._nonce_factory(),
            label=SIGNATURE_LABEL,
            tag=self._tag,
            include_alg=False,
            covered_component_ids=components,
            # The library computes Content-Digest (RFC 9530 sha-256) from these bytes, empty body included.
            body=request.content,
        )
