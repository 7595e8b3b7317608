from __future__ import annotations

import base64
import json
import os

import pytest

from serve_app.cli import main


@pytest.fixture
def master_key_env(monkeypatch):
    monkeypatch.setenv("ORFEAS_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())


def test_keys_create_list_revoke_rotate(tmp_path, capsys, master_key_env):
    data = ["--data-dir", str(tmp_path)]
    assert main(["keys", "create", "--agent", "bot", *data]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["scopes"] == ["jobs:read", "jobs:write"]  # the CLI's default scopes
    assert len(base64.b64decode(created["secret"])) == 32

    assert main(["keys", "rotate", "--agent", "bot", *data]) == 0
    rotated = json.loads(capsys.readouterr().out)
    assert rotated["key_id"] != created["key_id"]

    assert main(["keys", "create", "--agent", "bot", *data]) == 2  # a third active key is refused
    assert "at most 2" in capsys.readouterr().err

    assert main(["keys", "revoke", created["key_id"], *data]) == 0
    capsys.readouterr()
    assert main(["keys", "list", "--agent", "bot", *data]) == 0
    listed = {key["key_id"]: key["status"] for key in json.loads(capsys.readouterr().out)}
    assert listed[created["key_id"]] == "revoked" and listed[rotated["key_id"]] == "active"
    assert "secret" not in json.dumps(listed)


def test_keys_without_a_master_key_explain_how_to_make_one(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ORFEAS_MASTER_KEY", raising=False)
    assert main(["keys", "list", "--data-dir", str(tmp_path)]) == 2
    assert "ORFEAS_MASTER_KEY is not set" in capsys.readouterr().err
