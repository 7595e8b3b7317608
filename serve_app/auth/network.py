"""Client addresses: the trusted client IP behind proxies, normalization, and CIDR allowlists."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any, TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

ALL_ADDRESSES: tuple[IPNetwork, ...] = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


def parse_cidr(text: str) -> IPNetwork:
    """A network from CIDR text; host bits set is an error that names the intended network."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        try:
            intended = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not an IPv4 or IPv6 CIDR such as 10.0.0.0/8 or 2001:db8::/32") from exc
        raise ValueError(f"{text!r} has host bits set; did you mean {intended}?") from exc


def parse_ip(text: str) -> IPAddress | None:
    """An address from text (optionally with a port or IPv6 brackets), IPv4-mapped IPv6 as IPv4.

    ``ipaddress`` treats ::ffff:10.0.0.1 as outside 10.0.0.0/8, so dual-stack sockets would escape
    IPv4 allowlists without the mapping. Returns None for anything unparseable.
    """
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]  # IPv4 with a port
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_subject(address: IPAddress) -> str:
    """What per-client limits count: an IPv4 address, or the /64 an IPv6 address lies in.

    One IPv6 host usually holds a whole /64 (SLAAC, privacy addresses), so per-address limits would let it
    rotate through 2**64 identities.
    """
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def ip_allowed(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address in network for network in networks)


def forwarded_for(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """Hops of every X-Forwarded-For line, in order (several lines form one list)."""
    hops: list[str] = []
    for name, value in headers:
        if name.lower() == b"x-forwarded-for":
            hops.extend(hop for hop in value.decode("latin-1").split(","))
    return hops


def client_ip(scope: Mapping[str, Any], trusted_proxies: Iterable[IPNetwork]) -> IPAddress | None:
    """The address to trust for allowlists and rate limits, or None when it cannot be known.

    ``scope["client"]`` must be the TCP peer: behind Ray Serve that needs the proxy's uvicorn to trust no
    forwarding headers (``FORWARDED_ALLOW_IPS=""``, see :mod:`serve_app.auth.serve_proxy`). X-Forwarded-For
    is honoured only when that peer is a trusted proxy; then the right-most hop that is not itself a
    trusted proxy is the client (hops to its left are whatever the client claimed).
    """
    peer = scope.get("client")
    address = parse_ip(str(peer[0])) if peer else None
    proxies = tuple(trusted_proxies)
    if address is None or not ip_allowed(address, proxies):
        return address
    for hop in reversed(forwarded_for(scope.get("headers", ()))):
        hop_address = parse_ip(hop)
        if hop_address is None:
            return None  # a trusted proxy wrote garbage: refuse rather than guess
        address = hop_address
        if not ip_allowed(address, proxies):
            return address
    return address
