"""The SSRF guard: which webhook URLs may be registered, and which addresses a delivery may connect to.

Rules, in order:
  1. scheme http or https, a host, no userinfo (``http://allowed@evil/`` is refused, not parsed around);
  2. the host is resolved (IP literals, including the legacy numeric forms ``2130706433`` / ``0x7f.1`` that
     resolvers accept, are parsed here, not by DNS) and EVERY address must pass: never link-local,
     cloud metadata, unspecified, multicast, broadcast or "this network", whatever ``allowed_hosts`` says
     (IPv4-mapped IPv6 is judged as the IPv4 address it carries);
  3. and the host must be allowed: its name matches ``allowed_hosts`` (``name`` or ``*.suffix``), or the
     address lies in one of its CIDRs, or (dev mode only) the address is loopback.

The check runs at registration and again at connect time (:class:`GuardedBackend`): the connection goes to
an address that was just checked, so a DNS answer that changes after registration (rebinding) cannot
redirect a delivery.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

# Refused whatever allowed_hosts says.
_NEVER: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network", unspecified
        "169.254.0.0/16",  # link-local, AWS/GCP/Azure metadata 169.254.169.254
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "224.0.0.0/4",  # multicast
        "255.255.255.255/32",  # broadcast
        "::/128",  # unspecified
        "fe80::/10",  # link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "ff00::/8",  # multicast
    )
)
# Dotted parts, each decimal, octal (leading 0) or hex (0x): inet_aton (and so most resolvers) takes one to four.
_LEGACY_IPV4 = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*", re.IGNORECASE)


class UrlRefused(ValueError):
    """The URL or one of its addresses is not allowed; the message says why."""


@dataclass(frozen=True)
class HostPolicy:
    names: frozenset[str]  # exact hostnames
    suffixes: tuple[str, ...]  # ".example.com" for "*.example.com"
    networks: tuple[IPNetwork, ...]
    allow_loopback: bool

    @classmethod
    def from_settings(cls, allowed_hosts: Iterable[str], *, dev: bool) -> HostPolicy:
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for entry in allowed_hosts:
            value = entry.strip().lower().rstrip(".")
            if value.startswith("*."):
                suffixes.append(value[1:])
                continue
            try:
                networks.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                names.add(value)
        return cls(frozenset(names), tuple(suffixes), tuple(networks), dev)

    def name_allowed(self, host: str) -> bool:
        return host in self.names or any(host.endswith(suffix) for suffix in self.suffixes)


async def system_resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (A and AAAA), through the system resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def parse_ip(host: str) -> IPAddress | None:
    """``host`` as an address if it is an IP literal in any form a resolver would take, else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError as exc:
            raise UrlRefused(f"host {host!r} looks numeric but is not a valid IPv4 address") from exc
    return None


def _plain(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def check_address(policy: HostPolicy, host: str, address: IPAddress) -> None:
    """Raise :class:`UrlRefused` unless a connection for ``host`` may go to ``address``."""
    plain = _plain(address)
    if any(plain in network for network in _NEVER if network.version == plain.version):
        raise UrlRefused(
            f"host {host!r} resolves to {plain}, a link-local, metadata, unspecified or multicast address, "
            "which webhooks never reach"
        )
    if policy.name_allowed(host):
        return
    if any(plain in network for network in policy.networks if network.version == plain.version):
        return
    if policy.allow_loopback and plain.is_loopback:
        return
    raise UrlRefused(
        f"host {host!r} ({plain}) is not in webhooks.allowed_hosts"
        + ("" if policy.allow_loopback else " (loopback is allowed in dev mode only)")
    )


@dataclass(frozen=True)
class UrlGuard:
    policy: HostPolicy
    resolve: Resolver = system_resolve

    @staticmethod
    def parse(url: str) -> httpx.URL:
        """Rule 1: the URL's form (no resolution)."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise UrlRefused(f"not a valid URL: {exc}") from None
        if parsed.scheme not in ("http", "https"):
            raise UrlRefused(f"scheme must be http or https, got {parsed.scheme or 'none'!r}")
        if not parsed.host:
            raise UrlRefused("the URL has no host")
        if parsed.userinfo:
            raise UrlRefused("the URL must not carry userinfo (user:password@); authenticate with the signature")
        if "%" in parsed.host:
            raise UrlRefused("zone ids (fe80::1%eth0) are not allowed")
        return parsed

    async def addresses(self, host: str, port: int) -> list[IPAddress]:
        """Rules 2 and 3 for ``host``: its addresses, every one checked; raises :class:`UrlRefused`."""
        host = host.lower().rstrip(".")
        literal = parse_ip(host)
        if literal is not None:
            found: Sequence[IPAddress] = [literal]
        else:
            try:
                found = await self.resolve(host, port)
            except OSError as exc:
                raise UrlRefused(f"host {host!r} does not resolve ({exc})") from None
            if not found:
                raise UrlRefused(f"host {host!r} does not resolve")
        for address in found:
            check_address(self.policy, host, address)
        return [_plain(address) for address in found]

    async def check(self, url: str) -> httpx.URL:
        """All three rules; the parsed URL when it is allowed."""
        parsed = self.parse(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        await self.addresses(parsed.host, port)
        return parsed


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses the guard has just checked.

    TLS still verifies, and sends SNI for, the URL's hostname: httpcore takes those from the request's origin,
    not from the address connected to.
    """

    def __init__(self, guard: UrlGuard, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._guard = guard
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        last: Exception | None = None
        for address in await self._guard.addresses(host, port):
            try:
                return await self._inner.connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None  # addresses() never returns an empty list
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise UrlRefused("webhooks never connect to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_client(guard: UrlGuard, *, timeout_s: float) -> httpx.AsyncClient:
    """An httpx client whose every connection passes the guard; no redirects, no proxies from the environment.

    httpx has no public hook for the network backend, so the transport's connection pool is rebuilt with
    one (``AsyncHTTPTransport._pool``, the attribute httpx sends through).
    """
    transport = httpx.AsyncHTTPTransport(retries=0)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        retries=0,
        network_backend=GuardedBackend(guard),
    )
    return httpx.AsyncClient(transport=transport, timeout=timeout_s, follow_redirects=False, trust_env=False)
