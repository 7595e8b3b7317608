"""AuthSettings validation, the master key sources, AES-GCM sealing, and the Secret wrapper."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from serve_app.auth.crypto import MasterKeyError, generate_master_key, load_master_key, seal, unseal
from serve_app.auth.secret import Secret
from serve_app.auth.settings import AuthSettings, normalize_authority


def test_auth_settings_defaults_follow_profile() -> None:
    settings = AuthSettings()
    assert (settings.max_age_s, settings.future_skew_s, settings.protected_prefix) == (300, 60, "/api/agent/")
    assert [str(network) for network in settings.global_allowlist] == ["0.0.0.0/0", "::/0"]
    assert settings.trusted_proxies == ()
    assert (settings.body_timeout_s, settings.max_pending_per_ip, settings.max_pending_total) == (10.0, 16, 128)
    assert settings.key_cache_ttl_s == 5.0


def test_auth_settings_round_trip_through_json() -> None:
    settings = AuthSettings(
        global_allowlist=["10.0.0.0/8"], trusted_proxies=["172.16.0.0/12"], authority="API.Example.com"
    )
    assert AuthSettings.model_validate_json(settings.model_dump_json()) == settings


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_age_s": 301}, "less than or equal to 300"),
        ({"global_allowlist": ["10.0.0.5/8"]}, "did you mean 10.0.0.0/8"),
        ({"trusted_proxies": "10.0.0.0/8"}, "give a list of CIDRs"),
        ({"protected_prefix": "api/agent/"}, "must start with '/'"),
        ({"authority": "https://api.example.com"}, "authority must be host"),
        ({"rate_limit": {"backoff_base_s": 60, "backoff_max_s": 30}}, "backoff_max_s must be >= backoff_base_s"),
        ({"unknown_field": 1}, "Extra inputs are not permitted"),
        ({"rate_limit": {"max_failures_per_key": 10}}, "Extra inputs are not permitted"),  # removed: see ratelimit
        ({"body_timeout_s": 0}, "greater than 0"),
    ],
)
def test_auth_settings_rejects_invalid(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AuthSettings.model_validate(overrides)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("API.example.com", "api.example.com"),
        ("api.example.com:443", "api.example.com"),
        ("localhost:80", "localhost"),
        ("localhost:8000", "localhost:8000"),
        ("[::1]:443", "[::1]"),
        ("[::1]:8443", "[::1]:8443"),
    ],
)
def test_normalize_authority_drops_default_ports(value: str, expected: str) -> None:
    assert normalize_authority(value) == expected


def test_load_master_key_from_environment() -> None:
    key = generate_master_key()
    loaded = load_master_key(AuthSettings(), environ={"ORFEAS_MASTER_KEY": key})
    assert loaded.reveal() == base64.b64decode(key)


def test_load_master_key_from_file_wins_over_environment(tmp_path: Path) -> None:
    key = generate_master_key()
    path = tmp_path / "master.key"
    path.write_text(key + "\n")
    loaded = load_master_key(AuthSettings(master_key_file=path), environ={"ORFEAS_MASTER_KEY": generate_master_key()})
    assert loaded.reveal() == base64.b64decode(key)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "environment variable ORFEAS_MASTER_KEY is not set; generate one with"),
        ({"ORFEAS_MASTER_KEY": "!!!"}, "is not standard base64"),
        ({"ORFEAS_MASTER_KEY": base64.b64encode(b"short").decode()}, "is 5 bytes, expected 32"),
    ],
)
def test_load_master_key_errors_name_fix(environ: dict[str, str], message: str) -> None:
    with pytest.raises(MasterKeyError, match=message):
        load_master_key(AuthSettings(), environ=environ)


def test_load_master_key_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match="cannot read master key file"):
        load_master_key(AuthSettings(master_key_file=tmp_path / "absent"), environ={})


def test_seal_round_trips_and_binds_context() -> None:
    master, secret = Secret(os.urandom(32)), Secret(os.urandom(32))
    sealed = seal(master, secret, context=b"ak_live_1")
    assert secret.reveal() not in sealed
    assert unseal(master, sealed, context=b"ak_live_1") == secret
    with pytest.raises(MasterKeyError, match="does not open"):
        unseal(master, sealed, context=b"ak_live_2")  # moved to another row
    with pytest.raises(MasterKeyError, match="unknown format version"):
        unseal(master, b"\x02" + sealed[1:], context=b"ak_live_1")


def test_secret_never_shows_value() -> None:
    secret = Secret(b"super-secret-bytes")
    for shown in (repr(secret), str(secret), f"{secret}", repr([secret]), repr({"k": secret})):
        assert "super" not in shown
    assert repr(secret) == "Secret('**********')"
    assert secret == Secret(b"super-secret-bytes") and secret != Secret(b"other")
    with pytest.raises(TypeError):
        hash(secret)
