"""The authenticated caller, as handlers see it, and the route-level scope check."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

PRINCIPAL_STATE_KEY = "principal"


@dataclass(frozen=True)
class Principal:
    key_id: str
    agent: str
    scopes: frozenset[str]


class ScopeDenied(Exception):
    """Raised by :func:`require_scope`; ``AgentAuthMiddleware`` turns it into a logged 403."""

    def __init__(self, principal: Principal, scope: str) -> None:
        super().__init__(f"key {principal.key_id} lacks scope {scope!r}")
        self.principal = principal
        self.scope = scope


class _HasScope(Protocol):
    @property
    def scope(self) -> Mapping[str, Any]: ...


def get_principal(request: _HasScope) -> Principal:
    """The principal the auth middleware stored for this request (``request.state.principal``)."""
    principal = request.scope.get("state", {}).get(PRINCIPAL_STATE_KEY)
    if not isinstance(principal, Principal):
        # Fail closed: a route reached without the middleware must not run as anyone.
        raise RuntimeError("no authenticated principal: is AgentAuthMiddleware installed on this path?")
    return principal


def require_scope(request: _HasScope, scope: str) -> Principal:
    """The principal if its key grants ``scope``; else raise :class:`ScopeDenied` (answered with 403)."""
    principal = get_principal(request)
    if scope not in principal.scopes:
        raise ScopeDenied(principal, scope)
    return principal
