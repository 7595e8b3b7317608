"""Ray Serve's HTTP proxy must hand the app the TCP peer, not a client-chosen address.

The proxy runs uvicorn with ``proxy_headers`` on, and uvicorn trusts ``X-Forwarded-For`` from the peers
in ``FORWARDED_ALLOW_IPS`` (default ``127.0.0.1,::1``). With the default, anyone who reaches the proxy
from loopback (a same-host TLS terminator, a port-forward, the embedded default itself) picks its own
client address, and allowlists and per-IP limits follow the header. Serve 2.60 has no HTTP option for
this; the supported way is the controller's environment, which the proxy and the replicas inherit:

    controller_options:
      runtime_env:
        env_vars: {FORWARDED_ALLOW_IPS: ""}

(or ``FORWARDED_ALLOW_IPS=`` in the environment Ray is started with). The app then resolves forwarded
addresses itself, from ``auth.trusted_proxies``. A replica sees the same variable as the proxy, so it can
refuse to start when the proxy would rewrite.
"""

from __future__ import annotations

from collections.abc import Mapping

FORWARDED_ALLOW_IPS = "FORWARDED_ALLOW_IPS"

FIX = (
    'start Serve with `controller_options: {runtime_env: {env_vars: {FORWARDED_ALLOW_IPS: ""}}}` in the '
    "Serve config (or FORWARDED_ALLOW_IPS= in the environment of `ray start` / `serve run`), and list "
    "load balancers in `auth.trusted_proxies` instead"
)


class ProxyRewritesClient(RuntimeError):
    """Serve's proxy would replace the TCP peer with a client-chosen X-Forwarded-For address."""


def proxy_trust_problem(environ: Mapping[str, str]) -> str | None:
    """Why the proxy (which shares ``environ``'s variable) would let clients choose their address, or None."""
    value = environ.get(FORWARDED_ALLOW_IPS)
    if value is None:
        return (
            f"{FORWARDED_ALLOW_IPS} is not set, so Serve's proxy takes X-Forwarded-For from any loopback peer "
            "as the client address"
        )
    trusted = [item.strip() for item in value.split(",") if item.strip()]
    if "*" in trusted:
        return f"{FORWARDED_ALLOW_IPS}={value!r} makes Serve's proxy take X-Forwarded-For from every peer"
    return None


def require_peer_addresses(environ: Mapping[str, str]) -> None:
    """Raise :class:`ProxyRewritesClient` (with the fix) unless the proxy passes TCP peers through.

    A non-empty list other than ``*`` is an operator's explicit choice of load balancers that uvicorn
    resolves (right-most untrusted hop, like ``auth.trusted_proxies``) and is accepted.
    """
    problem = proxy_trust_problem(environ)
    if problem is not None:
        raise ProxyRewritesClient(f"refusing to start: {problem}; {FIX}")
