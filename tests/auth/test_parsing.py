"""Strict parsing of the profile's signature headers (step 2), straight on header maps."""

from __future__ import annotations

import pytest

from serve_app.auth.parsing import SignatureFormatError, parse_signature

DIGEST = "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
COMPONENTS = '("@method" "@authority" "@path" "@query" "content-digest")'
PARAMS = ';created=1700000000;expires=1700000060;keyid="ak_1";nonce="q8Zr3m0V4pXc2L9tB1yW7g";tag="agent-api-v1"'
GOOD = {"signature-input": f"sig1={COMPONENTS}{PARAMS}", "signature": "sig1=:AAAA:", "content-digest": DIGEST}


def test_parse_signature_accepts_profile_shape() -> None:
    parsed = parse_signature(GOOD)
    assert (parsed.created, parsed.expires, parsed.key_id, parsed.nonce) == (
        1700000000,
        1700000060,
        "ak_1",
        "q8Zr3m0V4pXc2L9tB1yW7g",
    )
    assert parsed.required_components == ("@method", "@authority", "@path", "@query", "content-digest")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"signature": None}, "Signature-Input and Signature must both be present."),
        (
            {
                "signature-input": "sig1=(",
            },
            "Signature-Input is not a valid structured field dictionary.",
        ),
        (
            {"signature-input": f"sig1={COMPONENTS}{PARAMS}, sig1={COMPONENTS}{PARAMS}"},
            "Signature-Input is not a valid structured field dictionary.",
        ),
        ({"signature": "sig2=:AAAA:"}, "Send exactly one signature: one Signature-Input member and its Signature."),
        ({"signature-input": "sig1=1"}, "The Signature-Input member must be an inner list of components."),
        ({"signature": "sig1=1"}, "The Signature member must be a byte sequence."),
        (
            {"signature-input": f'sig1={COMPONENTS};created=1;expires=2;keyid="k";tag="agent-api-v1"'},
            "Missing signature parameters ['nonce'].",
        ),
        (
            {"signature-input": f"sig1={COMPONENTS}" + PARAMS.replace("created=1700000000", 'created="1700000000"')},
            "Parameters created and expires must be integers (unix seconds).",
        ),
        (
            {"signature-input": f"sig1={COMPONENTS}" + PARAMS.replace('keyid="ak_1"', 'keyid=""')},
            "Parameter keyid must be a string of 1-128 visible ASCII characters.",
        ),
        (
            {"signature-input": f'sig1=("@method";req "@authority" "@path" "@query" "content-digest"){PARAMS}'},
            "The signature must also cover ['@method'].",
        ),
        ({"content-digest": "sha-256=("}, "Content-Digest is not a valid structured field dictionary."),
        ({"content-digest": "sha-512=:AAAA:"}, "Content-Digest must carry a sha-256 member."),
        ({"content-digest": "sha-256=:AAAA:"}, "Content-Digest must carry a sha-256 member."),
        ({"idempotency-key": "k1"}, "The signature must also cover ['idempotency-key']."),
    ],
)
def test_parse_signature_refuses(changes: dict[str, str | None], message: str) -> None:
    headers = {**GOOD, **changes}
    headers = {name: value for name, value in headers.items() if value is not None}
    with pytest.raises(SignatureFormatError) as caught:
        parse_signature(headers)
    assert str(caught.value) == message
    assert caught.value.missing is False


def test_parse_signature_marks_absent_signature_as_missing() -> None:
    with pytest.raises(SignatureFormatError) as caught:
        parse_signature({"content-digest": DIGEST})
    assert caught.value.missing is True
