"""The client signer: the profile's known-answer vector byte for byte, and the profile's rules."""

from __future__ import annotations

import base64
import hashlib
import hmac
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from serve_app.auth.secret import Secret
from serve_app.auth.signing import AgentSigner, decode_secret, new_nonce

# notes/auth_profile.md, "Known-answer vector"
VECTOR_KEY = hashlib.sha256(b"agent-api-test-key-do-not-use").digest()
VECTOR_BODY = b'{"tool":"search","args":{"q":"hmac"}}'
VECTOR_DIGEST = "sha-256=:HpoPDBuyNP9jfMrU4aBUXA1dHnkuc3fjotHSx02wuJk=:"
VECTOR_INPUT = (
    'sig1=("@method" "@authority" "@path" "@query" "content-type" "content-digest");created=1700000000;'
    'expires=1700000060;keyid="ak_test_1";nonce="q8Zr3m0V4pXc2L9tB1yW7g";tag="agent-api-v1"'
)
VECTOR_SIGNATURE = "sig1=:u+/sM3XYU3IRrrf6812UuQ3NP6hZIvkeLGE3Gdxjdr8=:"


def vector_signer() -> AgentSigner:
    return AgentSigner(
        "ak_test_1",
        base64.b64encode(VECTOR_KEY).decode(),
        lifetime_s=60,
        clock=lambda: 1700000000,
        nonce_factory=lambda: "q8Zr3m0V4pXc2L9tB1yW7g",
    )


def vector_request() -> httpx.Request:
    return httpx.Request(
        "POST",
        "https://api.example.com/v1/tools/run?dry_run=true",
        headers={"Content-Type": "application/json"},
        content=VECTOR_BODY,
    )


def test_vector_key_matches_profile() -> None:
    assert VECTOR_KEY.hex() == "e6d63e34903103fd2ec2b75280e37d52f6ffe5ddab39a4355fc20611b3240245"


def test_agent_signer_reproduces_known_answer_vector() -> None:
    request = vector_request()
    vector_signer().sign(request)
    assert request.headers["content-digest"] == VECTOR_DIGEST
    assert request.headers["signature-input"] == VECTOR_INPUT
    assert request.headers["signature"] == VECTOR_SIGNATURE


def test_known_answer_vector_matches_stdlib_hmac() -> None:
    # The signature base written out by hand from the profile, MACed with the standard library.
    base = "\n".join(
        [
            '"@method": POST',
            '"@authority": api.example.com',
            '"@path": /v1/tools/run',
            '"@query": ?dry_run=true',
            '"content-type": application/json',
            f'"content-digest": {VECTOR_DIGEST}',
            '"@signature-params": ' + VECTOR_INPUT.removeprefix("sig1="),
        ]
    )
    mac = base64.b64encode(hmac.new(VECTOR_KEY, base.encode(), hashlib.sha256).digest()).decode()
    assert f"sig1=:{mac}:" == VECTOR_SIGNATURE


async def test_agent_signer_signs_through_httpx_auth_flow() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), auth=vector_signer()) as client:
        await client.post(
            "https://api.example.com/v1/tools/run?dry_run=true",
            content=VECTOR_BODY,
            headers={"Content-Type": "application/json"},
        )
    assert seen[0].headers["signature"] == VECTOR_SIGNATURE


def test_agent_signer_get_covers_empty_body_digest_without_content_type() -> None:
    request = httpx.Request("GET", "http://testserver/api/agent/jobs/j1")
    vector_signer().sign(request)
    assert request.headers["content-digest"] == "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
    assert request.headers["signature-input"].startswith(
        'sig1=("@method" "@authority" "@path" "@query" "content-digest");created=1700000000;expires=1700000060;'
    )


def test_agent_signer_covers_idempotency_key_when_present() -> None:
    request = vector_request()
    request.headers["Idempotency-Key"] = "job-42"
    vector_signer().sign(request)
    assert request.headers["signature-input"].startswith(
        'sig1=("@method" "@authority" "@path" "@query" "content-type" "content-digest" "idempotency-key");'
    )


def test_agent_signer_replaces_stale_signature_headers_when_resigning() -> None:
    request = vector_request()
    request.headers["Content-Digest"] = "sha-256=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:"
    request.headers["Signature"] = "old=:AAAA:"
    vector_signer().sign(request)
    vector_signer().sign(request)
    assert request.headers.get_list("content-digest") == [VECTOR_DIGEST]
    assert request.headers.get_list("signature") == [VECTOR_SIGNATURE]


def test_agent_signer_rejects_lifetime_over_profile_maximum() -> None:
    with pytest.raises(ValueError, match=r"lifetime_s must be in 1\.\.300, got 301"):
        AgentSigner("ak_test_1", Secret(VECTOR_KEY), lifetime_s=301)


def test_decode_secret_rejects_wrong_length_and_bad_base64() -> None:
    with pytest.raises(ValueError, match="decodes to 16 bytes, expected 32"):
        decode_secret(base64.b64encode(b"x" * 16).decode())
    with pytest.raises(ValueError, match="not standard base64"):
        decode_secret("not base64!")


def test_new_nonce_is_16_random_bytes_base64url() -> None:
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    for nonce in nonces:
        assert len(nonce) == 22
        assert len(base64.urlsafe_b64decode(nonce + "==")) == 16


def test_agent_signer_repr_hides_secret() -> None:
    signer = vector_signer()
    assert repr(signer) == "AgentSigner(key_id='ak_test_1')"
    assert base64.b64encode(VECTOR_KEY).decode() not in repr(vars(signer))


def test_signing_module_imports_without_server_or_model_stacks() -> None:
    code = (
        "import sys; import serve_app.auth.signing; "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'torch', 'sqlalchemy', 'starlette'}); "
        "print(heavy)"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
