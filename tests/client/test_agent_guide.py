"""docs/agent-guide.md stays true: its Python examples run against a live API, its worked signing example
matches the profile's known-answer vector, and every error code it lists is one the server sends."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import shutil
from pathlib import Path

import pytest

from tests.serve_app.conftest import png_bytes

from .conftest import LiveApi

ROOT = Path(__file__).parents[2]
GUIDE = (ROOT / "docs" / "agent-guide.md").read_text()
KAT_KEY = hashlib.sha256(b"agent-api-test-key-do-not-use").digest()
KAT_SIGNATURE = "u+/sM3XYU3IRrrf6812UuQ3NP6hZIvkeLGE3Gdxjdr8="


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE, flags=re.DOTALL)


def test_agent_guide_python_examples_run_against_the_api(live_api: LiveApi, tmp_path: Path, monkeypatch):
    (tmp_path / ".orfeas").mkdir()
    shutil.copy(live_api.key_file, tmp_path / ".orfeas" / "dev-agent.json")
    (tmp_path / "cat.png").write_bytes(png_bytes())
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "agent_guide"}
    examples = blocks("python")
    assert len(examples) >= 10
    try:
        for index, code in enumerate(examples):
            exec(compile(code, f"agent-guide.md python block {index}", "exec"), namespace)
    finally:
        for name in ("http", "client"):
            if name in namespace:
                namespace[name].close()  # type: ignore[attr-defined]
    assert (tmp_path / "cat.glb").stat().st_size > 0 and (tmp_path / "cat.obj").stat().st_size > 0


def test_agent_guide_signature_base_matches_the_known_answer():
    [base] = [block for block in blocks("text") if block.startswith('"@method": POST')]
    mac = hmac.new(KAT_KEY, base.rstrip("\n").encode(), hashlib.sha256).digest()
    assert base64.b64encode(mac).decode() == KAT_SIGNATURE
    assert KAT_KEY.hex() in GUIDE and KAT_SIGNATURE in GUIDE


def test_agent_guide_lists_only_codes_the_server_sends():
    source = "\n".join(path.read_text() for path in (ROOT / "serve_app").rglob("*.py"))
    rows = re.findall(r"^\| (\d{3})\s+\| `([a-z_]+)`", GUIDE, flags=re.MULTILINE)
    assert len(rows) >= 40
    derived = {"job_not_found", "batch_not_found"}  # serve_app.errors.not_found(what, ...)
    missing = [code for _, code in rows if code not in derived and f'"{code}"' not in source]
    assert missing == []


@pytest.mark.parametrize("code", ["job_not_found", "batch_not_found"])
def test_agent_guide_not_found_codes_come_from_not_found(code: str):
    from serve_app.errors import not_found

    assert not_found(code.removesuffix("_not_found"), "x").code == code


def test_agent_guide_capabilities_example_is_the_default_answer(live_api: LiveApi):
    [example] = [block for block in blocks("json") if block.lstrip().startswith('{\n  "models"')]
    with live_api.client() as client:
        assert client.capabilities() == json.loads(example)


def test_agent_guide_job_error_table_is_the_error_code_enum():
    from deployments.contract import ErrorCode

    table = GUIDE.split("<!-- job-error-codes:", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| (yes|no) \| (.+?) \|$", table, flags=re.MULTILINE)
    assert rows == [(code.value, "yes" if code.retryable else "no", code.meaning) for code in ErrorCode]
