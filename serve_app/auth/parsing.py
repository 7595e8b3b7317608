"""Strict parsing of an agent-api-v1 signature (step 2 of the profile), before any key or crypto work.

The library accepts any RFC 9421 signature its caller selects; the profile is narrower: exactly one
signature, tagged agent-api-v1, with created/expires/keyid/nonce, alg absent or hmac-sha256, covering
the required components, and a Content-Digest on every request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import http_sf

from serve_app.auth.profile import ALGORITHM, ALLOWED_PARAMS, REQUIRED_PARAMS, TAG, covered_components

# base64url of at least 16 bytes (the profile sends exactly 16: 22 characters), bounded for storage.
_NONCE = re.compile(r"[A-Za-z0-9_-]{22,128}")
_KEY_ID = re.compile(r"[\x21-\x7e]{1,128}")
_TITLES = {"signature-input": "Signature-Input", "signature": "Signature"}


class SignatureFormatError(ValueError):
    """The request's signature headers break the profile; ``missing`` when there are none at all."""

    def __init__(self, message: str, *, missing: bool = False, key_id: str | None = None) -> None:
        super().__init__(message)
        self.missing = missing
        self.key_id = key_id


@dataclass(frozen=True)
class ParsedSignature:
    created: int
    expires: int
    key_id: str
    nonce: str
    required_components: tuple[str, ...]  # what this request must cover, for the library's own check
    content_sha256: bytes  # what Content-Digest claims; compared with the body's hash as it arrives


def _parse_dictionary(value: str, **options: Any) -> dict[str, Any]:
    # http_sf's return type is a union of every structured field type; a dictionary parse gives a dict.
    return dict(cast(dict[str, Any], http_sf.parse(value.encode("latin-1"), tltype="dictionary", **options)))


def _dictionary(headers: Mapping[str, str], name: str) -> dict[str, Any]:
    def reject_duplicate(key: str, context: str) -> None:
        if context == "dictionary":
            raise ValueError(f"duplicate member {key!r}")

    try:
        return _parse_dictionary(headers[name], on_duplicate_key=reject_duplicate)
    except (ValueError, TypeError, UnicodeError) as exc:
        raise SignatureFormatError(f"{_TITLES[name]} is not a valid structured field dictionary.") from exc


def _params(params: Mapping[str, Any]) -> tuple[int, int, str, str]:
    unknown = sorted(set(params) - ALLOWED_PARAMS)
    if unknown:
        raise SignatureFormatError(f"Unexpected signature parameters {unknown}.")
    key_id = params.get("keyid")
    key_id = key_id if isinstance(key_id, str) and _KEY_ID.fullmatch(key_id) else None
    if params.get("tag") != TAG:
        raise SignatureFormatError(f'The signature must carry tag="{TAG}".', key_id=key_id)
    missing = [name for name in REQUIRED_PARAMS if name not in params]
    if missing:
        raise SignatureFormatError(f"Missing signature parameters {missing}.", key_id=key_id)
    created, expires, nonce = params["created"], params["expires"], params["nonce"]
    if type(created) is not int or type(expires) is not int:
        raise SignatureFormatError("Parameters created and expires must be integers (unix seconds).", key_id=key_id)
    if key_id is None:
        raise SignatureFormatError("Parameter keyid must be a string of 1-128 visible ASCII characters.")
    if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
        raise SignatureFormatError("Parameter nonce must be base64url of 16 random bytes.", key_id=key_id)
    if "alg" in params and params["alg"] != ALGORITHM:
        raise SignatureFormatError(f'Parameter alg must be absent or "{ALGORITHM}".', key_id=key_id)
    return created, expires, key_id, nonce


def _content_digest(headers: Mapping[str, str], key_id: str) -> bytes:
    if "content-digest" not in headers:
        raise SignatureFormatError(
            "Content-Digest (RFC 9530, sha-256) is required, also for empty bodies.", key_id=key_id
        )
    try:
        members = _parse_dictionary(headers["content-digest"])
    except (ValueError, TypeError, UnicodeError) as exc:
        raise SignatureFormatError("Content-Digest is not a valid structured field dictionary.", key_id=key_id) from exc
    sha256 = members.get("sha-256")
    if sha256 is None or not isinstance(sha256[0], bytes) or len(sha256[0]) != 32:
        raise SignatureFormatError("Content-Digest must carry a sha-256 member.", key_id=key_id)
    return sha256[0]


def parse_signature(headers: Mapping[str, str]) -> ParsedSignature:
    """Parse and check the profile's shape; ``headers`` maps lowercase names to combined values."""
    if "signature-input" not in headers and "signature" not in headers:
        raise SignatureFormatError("This endpoint requires an RFC 9421 signature (profile agent-api-v1).", missing=True)
    if "signature-input" not in headers or "signature" not in headers:
        raise SignatureFormatError("Signature-Input and Signature must both be present.")
    inputs, signatures = _dictionary(headers, "signature-input"), _dictionary(headers, "signature")
    if len(inputs) != 1 or inputs.keys() != signatures.keys():
        raise SignatureFormatError("Send exactly one signature: one Signature-Input member and its Signature.")
    [(label, (members, params))] = inputs.items()
    if not isinstance(members, list):
        raise SignatureFormatError("The Signature-Input member must be an inner list of components.")
    if not isinstance(signatures[label][0], bytes):
        raise SignatureFormatError("The Signature member must be a byte sequence.")
    created, expires, key_id, nonce = _params(params)
    components = tuple(value for value, item_params in members if isinstance(value, str) and not item_params)
    required = covered_components(
        has_content_type="content-type" in headers, has_idempotency_key="idempotency-key" in headers
    )
    uncovered = [name for name in required if name not in components]
    if uncovered:
        raise SignatureFormatError(f"The signature must also cover {uncovered}.", key_id=key_id)
    content_sha256 = _content_digest(headers, key_id)
    return ParsedSignature(created, expires, key_id, nonce, required, content_sha256)
