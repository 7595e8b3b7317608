"""An agent-api-v1 signer written directly on http-message-signatures, independent of AgentSigner.

It keeps the library's defaults where the profile leaves a choice (label "pyhms", the library's
parameter order, an explicit alg), so the server is shown to rebuild @signature-params from what it
received rather than from a fixed template.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from dataclasses import dataclass

import httpx
from http_message_signatures import HTTPMessageSigner, MappingKeyResolver, algorithms


@dataclass
class _View:
    method: str
    url: str
    headers: httpx.Headers


def independent_sign(
    request: httpx.Request,
    key_id: str,
    secret: bytes,
    *,
    created: int,
    lifetime_s: int = 120,
    tag: str = "agent-api-v1",
) -> None:
    components = ["@method", "@authority", "@path", "@query"]
    if "content-type" in request.headers:
        components.append("content-type")
    components.append("content-digest")
    signer = HTTPMessageSigner(
        signature_algorithm=algorithms.HMAC_SHA256,
        key_resolver=MappingKeyResolver(public_keys={}, private_keys={key_id: secret}),
    )
    signer.sign(
        _View(request.method, str(request.url), request.headers),
        key_id=key_id,
        created=dt.datetime.fromtimestamp(created, dt.timezone.utc),
        expires=dt.datetime.fromtimestamp(created + lifetime_s, dt.timezone.utc),
        nonce=base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode(),
        tag=tag,
        covered_component_ids=components,
        body=request.content,
    )
