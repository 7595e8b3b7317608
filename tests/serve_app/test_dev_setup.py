"""Dev mode's key files: private from their first byte, created once, never half-written."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from serve_app.dev_setup import DEV_SCOPES, create_private, write_private


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_create_private_creates_once_with_mode_0600(tmp_path: Path):
    target = tmp_path / "keys" / "master.key"
    assert create_private(target, "first\n") is True
    assert create_private(target, "second\n") is False  # never replaces an existing key
    assert target.read_text() == "first\n" and _mode(target) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["master.key"]  # no temp files left behind


def test_create_private_concurrent_creators_agree_on_one_complete_file(tmp_path: Path):
    target = tmp_path / "master.key"
    texts = [f"key-{i}-" + "x" * 4096 for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        created = list(pool.map(lambda text: create_private(target, text), texts))
    assert created.count(True) == 1
    assert target.read_text() == texts[created.index(True)]


def test_create_private_does_not_follow_a_planted_link(tmp_path: Path):
    # someone who can write the data directory plants a link where the key will go: it is not written through
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "master.key"
    target.symlink_to(victim)
    assert create_private(target, "key") is False
    assert victim.read_text() == "precious"


def test_write_private_replaces_with_mode_0600(tmp_path: Path):
    target = tmp_path / "dev-agent.json"
    target.write_text("old")
    os.chmod(target, 0o644)
    write_private(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o600


def test_dev_key_scopes_are_read_and_write_only():
    assert DEV_SCOPES == ("jobs:read", "jobs:write")
