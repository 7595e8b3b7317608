"""Receiving a protected request's body: bounded in size and in time, hashed while it arrives.

Only requests whose headers already passed the signature checks get here, and each one holds a pending
slot while it reads (``pending``): one deadline for the whole body means a client trickling bytes
cannot keep the slot longer than ``body_timeout_s``, whatever it told Serve's proxy about timeouts.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

from starlette.types import Receive, Scope


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


class ClientGone(Exception):
    pass


@dataclass(frozen=True)
class Body:
    data: bytes
    sha256: bytes  # digest of ``data``, computed while it arrived: Content-Digest needs no second pass


def declared_length(scope: Scope) -> int | None:
    """The Content-Length the client announced, or None (absent, or not a plain number)."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length" and value.isdigit():
            return int(value)
    return None


EMPTY = Body(b"", hashlib.sha256(b"").digest())


def declares_no_body(scope: Scope) -> bool:
    """True when HTTP framing says the request has no body (RFC 9112 6.3: neither Transfer-Encoding nor a
    Content-Length other than 0). Such a body is known without receiving anything, which behind Serve's
    proxy saves a round trip to the proxy actor on every GET."""
    length: bytes | None = None
    for name, value in scope.get("headers", ()):
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            return False
        if lowered == b"content-length":
            length = value.strip()
    return length is None or length == b"0"


async def read_body(receive: Receive, *, limit: int, timeout_s: float) -> Body:
    """The whole body, or BodyTooLarge past ``limit`` bytes, BodyTimeout past ``timeout_s``, ClientGone."""
    chunks: list[bytes] = []
    digest = hashlib.sha256()
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge
                digest.update(chunk)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return Body(b"".join(chunks), digest.digest())
    except TimeoutError:
        raise BodyTimeout from None
