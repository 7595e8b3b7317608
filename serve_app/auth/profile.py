"""Constants of the agent-api-v1 signing profile, shared by the signer and the verifier.

Kept free of third-party imports so that both the client SDK and the server read the same definitions.
"""

from __future__ import annotations

TAG = "agent-api-v1"
SIGNATURE_LABEL = "sig1"
ALGORITHM = "hmac-sha256"
MAX_LIFETIME_S = 300

# Always covered; "content-type" and "idempotency-key" are covered whenever the request carries them.
BASE_COMPONENTS: tuple[str, ...] = ("@method", "@authority", "@path", "@query")
CONDITIONAL_FIELDS: tuple[str, ...] = ("content-type", "idempotency-key")
REQUIRED_PARAMS: tuple[str, ...] = ("created", "expires", "keyid", "nonce")
ALLOWED_PARAMS: frozenset[str] = frozenset({"created", "expires", "keyid", "nonce", "tag", "alg"})
# The order the profile's examples (and the known-answer vector) use; any order verifies.
PARAM_ORDER: tuple[str, ...] = ("created", "expires", "keyid", "alg", "nonce", "tag")

NONCE_BYTES = 16


def covered_components(*, has_content_type: bool, has_idempotency_key: bool) -> tuple[str, ...]:
    """Components a request must cover, in the profile's order."""
    components = list(BASE_COMPONENTS)
    if has_content_type:
        components.append("content-type")
    components.append("content-digest")
    if has_idempotency_key:
        components.append("idempotency-key")
    return tuple(components)
