"""One structured JSON log line per auth decision, on the ``orfeas.auth`` logger.

Carries what an operator needs to tell attacks from misconfigured agents (reason, key id, trusted IP,
method, path, request id) and never the secret, the signature or the body.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass

logger = logging.getLogger("orfeas.auth")

_MAX_FIELD = 256  # attacker-chosen strings (key ids, paths) are truncated before logging


@dataclass(frozen=True)
class AuthDecision:
    reason: str  # "ok" or a refusal reason code
    status: int
    request_id: str
    client_ip: str | None
    method: str
    path: str
    key_id: str | None = None
    agent: str | None = None
    detail: str | None = None


def _clip(value: str | None) -> str | None:
    return None if value is None else value[:_MAX_FIELD]


def log_decision(decision: AuthDecision, now: float) -> None:
    fields = {
        "time": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(timespec="milliseconds"),
        "event": "auth",
        "decision": "allow" if decision.reason == "ok" else "deny",
        "reason": decision.reason,
        "status": decision.status,
        "key_id": _clip(decision.key_id),
        "agent": decision.agent,
        "client_ip": decision.client_ip,
        "method": _clip(decision.method),
        "path": _clip(decision.path),
        "request_id": decision.request_id,
        "detail": _clip(decision.detail),
    }
    level = logging.INFO if decision.reason == "ok" else logging.WARNING
    logger.log(level, json.dumps(fields, separators=(",", ":")), extra={"auth": fields})
