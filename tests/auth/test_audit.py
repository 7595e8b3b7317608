"""The decision log line: one JSON object with the agreed fields."""

from __future__ import annotations

import json
import logging

import pytest

from serve_app.auth.audit import AuthDecision, log_decision


def test_log_decision_writes_one_json_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="orfeas.auth")
    decision = AuthDecision(
        reason="replay",
        status=401,
        request_id="req-1",
        client_ip="192.0.2.1",
        method="POST",
        path="/api/agent/jobs",
        key_id="k" * 300,
        detail=None,
    )
    log_decision(decision, 1700000000.25)
    [record] = caplog.records
    assert (record.name, record.levelno) == ("orfeas.auth", logging.WARNING)
    assert json.loads(record.getMessage()) == {
        "time": "2023-11-14T22:13:20.250+00:00",
        "event": "auth",
        "decision": "deny",
        "reason": "replay",
        "status": 401,
        "key_id": "k" * 256,
        "agent": None,
        "client_ip": "192.0.2.1",
        "method": "POST",
        "path": "/api/agent/jobs",
        "request_id": "req-1",
        "detail": None,
    }
