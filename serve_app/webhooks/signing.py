"""Standard Webhooks signing (the ``standardwebhooks`` library): secrets and the headers of one attempt."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime, timezone

from standardwebhooks import Webhook

from serve_app.auth.secret import Secret

SECRET_BYTES = 32
SECRET_PREFIX = "whsec_"


def new_secret() -> Secret:
    return Secret(secrets.token_bytes(SECRET_BYTES))


def secret_text(secret: Secret) -> str:
    """The form agents configure their verifier with: ``whsec_<base64 key>``."""
    return SECRET_PREFIX + base64.b64encode(secret.reveal()).decode("ascii")


def signed_headers(secret: Secret, msg_id: str, body: str, now: datetime) -> dict[str, str]:
    """Headers of one attempt: ``webhook-id`` (the delivery's, the same on every attempt), ``webhook-timestamp``
    (this attempt's, unix seconds) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>``)."""
    moment = now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": Webhook(secret.reveal()).sign(msg_id, moment, body),
        "content-type": "application/json",
    }
