"""The SSRF guard: URL form, address classes, allowed hosts, and the guarded connection."""

from __future__ import annotations

import ipaddress

import pytest

from serve_app.webhooks.ssrf import HostPolicy, IPAddress, UrlGuard, UrlRefused, guarded_client
from tests.webhooks.receiver import receiver


def guard(*allowed: str, dev: bool = False, dns: dict[str, list[str]] | None = None) -> UrlGuard:
    table = dns or {}

    async def resolve(host: str, port: int) -> list[IPAddress]:
        if host not in table:
            raise OSError("Name or service not known")
        return [ipaddress.ip_address(a) for a in table[host]]

    return UrlGuard(HostPolicy.from_settings(allowed, dev=dev), resolve)


async def refused(g: UrlGuard, url: str) -> str:
    with pytest.raises(UrlRefused) as info:
        await g.check(url)
    return str(info.value)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://10.0.0.1/x", "scheme must be http or https"),
        ("file:///etc/passwd", "scheme must be http or https"),
        ("http:///path", "no host"),
        ("http://user:pw@10.0.0.1/", "userinfo"),
        ("http://10.0.0.1@evil.test/", "userinfo"),
        ("http://10.0.0.1\\@evil.test/", "userinfo"),
        ("http://[fe80::1%25eth0]/", "zone ids"),
        ("not a url", "scheme"),
    ],
)
async def test_guard_url_form_refused(url: str, reason: str) -> None:
    assert reason in await refused(guard("10.0.0.0/8", "evil.test", dev=True), url)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://169.254.1.1/",
        "http://100.100.100.200/",
        "http://0.0.0.0/",
        "http://0.1.2.3/",
        "http://224.0.0.1/",
        "http://255.255.255.255/",
        "http://[::]/",
        "http://[fe80::1]/",
        "http://[fd00:ec2::254]/",
        "http://[ff02::1]/",
        "http://[::ffff:169.254.169.254]/",  # IPv4-mapped IPv6
        "http://[::ffff:a9fe:a9fe]/",  # the same, in hex
        "http://2852039166/",  # 169.254.169.254 as one decimal number
        "http://0xa9fea9fe/",  # ... in hex
        "http://169.254.43518/",  # ... with a 16-bit last part
    ],
)
async def test_guard_never_reaches_link_local_metadata_or_multicast(url: str) -> None:
    # whatever allowed_hosts says, dev mode included
    everything = guard("0.0.0.0/0", "::/0", dev=True)
    assert "never reach" in await refused(everything, url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/",
        "http://[::1]:9/",
        "http://[::ffff:127.0.0.1]:9/",
        "http://2130706433:9/",  # 127.0.0.1 in decimal
        "http://0x7f.1:9/",
        "http://127.1:9/",
        "http://127.0.0.1.:9/",
    ],
)
async def test_guard_loopback_only_in_dev_mode(url: str) -> None:
    await guard(dev=True).check(url)
    assert "not in webhooks.allowed_hosts" in await refused(guard(dev=False), url)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://1.2.3.4.5/", "not a valid IPv4"),
        # four dotted parts that are not canonical: httpx's parser refuses them itself
        ("http://0251.0376.0251.0376/", "Invalid IPv4 address"),
        ("http://0177.0.0.1/", "Invalid IPv4 address"),
    ],
)
async def test_guard_malformed_numeric_host_refused(url: str, reason: str) -> None:
    assert reason in await refused(guard("0.0.0.0/0", dev=True), url)


async def test_guard_allows_only_listed_hosts_suffixes_and_cidrs() -> None:
    dns = {
        "hooks.example.com": ["203.0.113.5"],
        "a.b.example.org": ["198.51.100.7"],
        "example.org": ["198.51.100.8"],
        "other.test": ["203.0.113.9"],
    }
    g = guard("hooks.example.com", "*.example.org", "10.0.0.0/8", "2001:db8::/32", dns=dns)
    await g.check("https://hooks.example.com/x")
    await g.check("https://HOOKS.Example.COM./x")  # case and the trailing dot do not matter
    await g.check("https://a.b.example.org/x")
    await g.check("http://10.20.30.40:8080/x")
    await g.check("http://[2001:db8::1]/x")
    assert "not in webhooks.allowed_hosts" in await refused(g, "https://example.org/")  # *.x is not x
    assert "not in webhooks.allowed_hosts" in await refused(g, "https://other.test/")
    assert "not in webhooks.allowed_hosts" in await refused(g, "http://11.0.0.1/")
    assert "not in webhooks.allowed_hosts" in await refused(g, "http://127.0.0.1/")  # production: no loopback


async def test_guard_checks_every_resolved_address() -> None:
    dns = {"mixed.test": ["10.0.0.5", "169.254.169.254"], "rebound.test": ["127.0.0.1"], "mixed6.test": []}
    g = guard("*.test", "10.0.0.0/8", dns=dns)
    assert "never reach" in await refused(g, "http://mixed.test/")
    # an allowed name that points at loopback is allowed (the operator listed it); one at metadata never is
    await g.check("http://rebound.test/")
    assert "does not resolve" in await refused(g, "http://mixed6.test/")
    assert "does not resolve" in await refused(g, "http://unknown.test/")


async def test_guarded_client_connects_only_to_checked_addresses() -> None:
    dns = {"good.test": ["127.0.0.1"], "bad.test": ["169.254.169.254"]}
    with receiver() as target:
        client = guarded_client(guard("good.test", dns=dns), timeout_s=10)
        try:
            # the name resolves only through the guard's resolver: the connection went to its checked address
            response = await client.post(f"http://good.test:{target.port}/hook", content=b"{}")
            assert response.status_code == 204
            assert target.requests[0].headers["host"] == f"good.test:{target.port}"
            with pytest.raises(UrlRefused, match="never reach"):
                await client.post(f"http://bad.test:{target.port}/hook", content=b"{}")
            with pytest.raises(UrlRefused, match=r"not in webhooks\.allowed_hosts"):
                await client.post(f"http://127.0.0.1:{target.port}/hook", content=b"{}")
        finally:
            await client.aclose()
    assert len(target.requests) == 1
