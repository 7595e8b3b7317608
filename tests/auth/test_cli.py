"""``orfeas keys ...`` handlers on a real database, driven through the real argparse parser."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
from typing import Any

from serve_app.auth.cli import add_keys_parser, run_keys_command
from serve_app.auth.keys import KeyStore
from serve_app.auth.secret import Secret
from serve_app.db import make_engine


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="orfeas")
    add_keys_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


async def run(url: str, master_key: Secret, *argv: str) -> tuple[int, Any, str]:
    out, err = io.StringIO(), io.StringIO()
    status = await run_keys_command(parse(*argv), database_url=url, master_key=master_key, out=out, err=err)
    return status, json.loads(out.getvalue()) if out.getvalue() else None, err.getvalue()


async def test_keys_create_prints_secret_once_and_list_never(sqlite_url: str) -> None:
    master_key = Secret(os.urandom(32))
    status, created, _ = await run(
        sqlite_url,
        master_key,
        "keys",
        "create",
        "--agent",
        "render-bot",
        "--scopes",
        "jobs:read",
        "jobs:write",
        "--cidr",
        "10.0.0.0/8",
        "--cidr",
        "192.0.2.0/24",
        "--expires-days",
        "30",
        "--env",
        "test",
    )
    assert status == 0
    assert created["key_id"].startswith("ak_test_")
    assert (created["agent"], created["scopes"], created["cidrs"], created["status"]) == (
        "render-bot",
        ["jobs:read", "jobs:write"],
        ["10.0.0.0/8", "192.0.2.0/24"],
        "active",
    )
    assert len(base64.b64decode(created["secret"], validate=True)) == 32
    _, listed, _ = await run(sqlite_url, master_key, "keys", "list")
    assert [key["key_id"] for key in listed] == [created["key_id"]]
    assert "secret" not in listed[0] and created["secret"] not in json.dumps(listed)
    # The printed secret is the one the server will verify with.
    engine = make_engine(sqlite_url)
    material = await KeyStore(engine, master_key).get_active(created["key_id"])
    await engine.dispose()
    assert material is not None and material.secret_b64() == created["secret"]


async def test_keys_revoke_and_rotate(sqlite_url: str) -> None:
    master_key = Secret(os.urandom(32))
    _, first, _ = await run(sqlite_url, master_key, "keys", "create", "--agent", "render-bot", "--scopes", "jobs:read")
    status, rotated, _ = await run(
        sqlite_url, master_key, "keys", "rotate", "--agent", "render-bot", "--grace-days", "1"
    )
    assert status == 0 and rotated["scopes"] == ["jobs:read"] and rotated["secret"] != first["secret"]
    status, revoked, _ = await run(sqlite_url, master_key, "keys", "revoke", first["key_id"])
    assert status == 0 and revoked["status"] == "revoked" and revoked["key_id"] == first["key_id"]
    _, listed, _ = await run(sqlite_url, master_key, "keys", "list", "--agent", "render-bot")
    assert [(key["key_id"], key["status"]) for key in listed] == [
        (first["key_id"], "revoked"),
        (rotated["key_id"], "active"),
    ]


async def test_keys_third_active_key_fails_with_fix(sqlite_url: str) -> None:
    master_key = Secret(os.urandom(32))
    for _ in range(2):
        await run(sqlite_url, master_key, "keys", "create", "--agent", "render-bot")
    status, out, err = await run(sqlite_url, master_key, "keys", "create", "--agent", "render-bot")
    assert (status, out) == (2, None)
    assert "Revoke the old one first: `orfeas keys revoke <key id>`" in json.loads(err)["error"]
