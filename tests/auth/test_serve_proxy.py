"""The ingress refuses to start behind a Serve proxy that would take client addresses from X-Forwarded-For."""

from __future__ import annotations

import pytest

from serve_app.auth.serve_proxy import ProxyRewritesClient, proxy_trust_problem, require_peer_addresses


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        (
            {},
            "FORWARDED_ALLOW_IPS is not set, so Serve's proxy takes X-Forwarded-For from any loopback peer "
            "as the client address",
        ),
        (
            {"FORWARDED_ALLOW_IPS": "*"},
            "FORWARDED_ALLOW_IPS='*' makes Serve's proxy take X-Forwarded-For from every peer",
        ),
        (
            {"FORWARDED_ALLOW_IPS": "10.0.0.5, *"},
            "FORWARDED_ALLOW_IPS='10.0.0.5, *' makes Serve's proxy take X-Forwarded-For from every peer",
        ),
        ({"FORWARDED_ALLOW_IPS": ""}, None),
        ({"FORWARDED_ALLOW_IPS": "10.0.0.5"}, None),  # the operator's own load balancer, resolved by uvicorn
    ],
)
def test_proxy_trust_problem(environ: dict[str, str], problem: str | None) -> None:
    assert proxy_trust_problem(environ) == problem


def test_require_peer_addresses_names_the_fix() -> None:
    with pytest.raises(ProxyRewritesClient, match=r"refusing to start: .*controller_options: \{runtime_env"):
        require_peer_addresses({})
    require_peer_addresses({"FORWARDED_ALLOW_IPS": ""})


def test_build_http_app_refuses_to_start_behind_a_rewriting_serve_proxy() -> None:
    from serve_app.http_app import build_http_app

    with pytest.raises(ProxyRewritesClient):
        build_http_app(None, behind_serve_proxy=True, environ={})  # type: ignore[arg-type]  # fails before using it
