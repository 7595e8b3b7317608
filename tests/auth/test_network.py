"""Client IP resolution behind proxies, IPv4-mapped IPv6 normalization, CIDR parsing."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from serve_app.auth.network import client_ip, client_subject, ip_allowed, parse_cidr, parse_ip

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


def scope(peer: str | None, *forwarded: str) -> dict[str, Any]:
    return {
        "client": None if peer is None else (peer, 5000),
        "headers": [(b"x-forwarded-for", value.encode()) for value in forwarded],
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("[::ffff:192.0.2.1]:443", "192.0.2.1"),
        ("192.0.2.1:8080", "192.0.2.1"),
        ("2001:db8::1", "2001:db8::1"),
        (" 2001:db8::1 ", "2001:db8::1"),
        ("unknown", None),
        ("", None),
    ],
)
def test_parse_ip_normalizes(text: str, expected: str | None) -> None:
    parsed = parse_ip(text)
    assert (None if parsed is None else str(parsed)) == expected


def test_ip_allowed_matches_mapped_address_against_ipv4_network() -> None:
    mapped = parse_ip("::ffff:10.1.2.3")
    assert mapped is not None and ip_allowed(mapped, [ipaddress.ip_network("10.0.0.0/8")])
    # What the normalization prevents: ipaddress alone says no.
    assert ipaddress.ip_address("::ffff:10.1.2.3") not in ipaddress.ip_network("10.0.0.0/8")


def test_client_ip_ignores_forwarded_for_from_untrusted_peer() -> None:
    assert str(client_ip(scope("198.51.100.1", "203.0.113.7"), PROXIES)) == "198.51.100.1"


def test_client_ip_takes_rightmost_untrusted_hop_behind_trusted_proxies() -> None:
    found = client_ip(scope("10.0.0.1", "1.1.1.1, 203.0.113.7, 10.0.0.9", "fd00::2"), PROXIES)
    assert str(found) == "203.0.113.7"


def test_client_ip_uses_trusted_peer_without_forwarded_for() -> None:
    assert str(client_ip(scope("10.0.0.1"), PROXIES)) == "10.0.0.1"


def test_client_ip_refuses_garbage_hop_from_trusted_proxy() -> None:
    assert client_ip(scope("10.0.0.1", "203.0.113.7, garbage"), PROXIES) is None


def test_client_ip_is_none_without_peer() -> None:
    assert client_ip(scope(None), PROXIES) is None


def test_parse_cidr_names_intended_network() -> None:
    assert parse_cidr(" 10.0.0.0/8 ") == ipaddress.ip_network("10.0.0.0/8")
    with pytest.raises(ValueError, match=r"'10\.0\.0\.5/8' has host bits set; did you mean 10\.0\.0\.0/8\?"):
        parse_cidr("10.0.0.5/8")


@pytest.mark.parametrize(
    ("address", "subject"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("::1", "::/64"),
    ],
)
def test_client_subject_is_the_ipv4_address_or_the_ipv6_64(address: str, subject: str) -> None:
    parsed = parse_ip(address)
    assert parsed is not None and client_subject(parsed) == subject
