"""docs/agent-guide.md stays true: its Python and JavaScript (Node) examples run against a live API, its worked
signing example matches the profile's known-answer vector, its query-string examples are answered as written,
and every error code it lists is one the server sends (and each one the job endpoints send is listed)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import httpx
import pytest

from serve_app.auth.signing import AgentSigner
from tests.serve_app.conftest import png_bytes

from .conftest import LiveApi

ROOT = Path(__file__).parents[2]
GUIDE = (ROOT / "docs" / "agent-guide.md").read_text()
KAT_KEY = hashlib.sha256(b"agent-api-test-key-do-not-use").digest()
KAT_SIGNATURE = "u+/sM3XYU3IRrrf6812UuQ3NP6hZIvkeLGE3Gdxjdr8="


NODE = shutil.which("node")
# Sent by modules whose codes the job-endpoint table does not list: /readyz is public, and http_error is the
# fallback for a Starlette HTTPException no route raises
UNLISTED_CODES = {"not_ready", "http_error"}


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE, flags=re.DOTALL)


def _workdir(live_api: LiveApi, tmp_path: Path) -> Path:
    """What the guide's examples expect in the working directory: the dev key file and cat.png."""
    (tmp_path / ".orfeas").mkdir()
    shutil.copy(live_api.key_file, tmp_path / ".orfeas" / "dev-agent.json")
    (tmp_path / "cat.png").write_bytes(png_bytes())
    return tmp_path


def test_agent_guide_python_examples_run_against_the_api(live_api: LiveApi, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(_workdir(live_api, tmp_path))
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


@pytest.mark.skipif(NODE is None, reason="node is not on PATH: the guide's JavaScript examples need Node.js 18+")
def test_agent_guide_javascript_examples_run_in_node_against_the_api(live_api: LiveApi, tmp_path: Path):
    workdir = _workdir(live_api, tmp_path)
    examples = blocks("js")
    assert len(examples) >= 4
    script = workdir / "guide.mjs"
    script.write_text("\n".join(examples))
    assert NODE is not None
    done = subprocess.run([NODE, str(script)], cwd=workdir, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    glb = (workdir / "cat-node.glb").read_bytes()
    assert glb[:4] == b"glTF"
    assert "invalid_seed" not in done.stderr and "succeeded" in done.stdout


def test_agent_guide_signature_label_and_component_order_are_free(live_api: LiveApi):
    """The guide says so: any label, components in any order; the server rebuilds the base as listed."""
    secret = base64.b64decode(live_api.secret)
    url = f"{live_api.url}/api/agent/jobs?limit=1"
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(b"").digest()).decode() + ":"
    authority = url.split("/")[2]
    covered = [
        ("content-digest", digest),
        ("@query", "?limit=1"),
        ("@path", "/api/agent/jobs"),
        ("@authority", authority),
        ("@method", "GET"),
    ]
    nonce = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
    created = int(time.time())
    params = (
        "("
        + " ".join(f'"{name}"' for name, _ in covered)
        + ")"
        + f';nonce="{nonce}";tag="agent-api-v1";keyid="{live_api.key_id}";created={created};expires={created + 60}'
    )
    base = "".join(f'"{name}": {value}\n' for name, value in covered) + f'"@signature-params": {params}'
    mac = base64.b64encode(hmac.new(secret, base.encode(), hashlib.sha256).digest()).decode()
    headers = {"Content-Digest": digest, "Signature-Input": f"my-agent.1={params}", "Signature": f"my-agent.1=:{mac}:"}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as response:
        assert response.status == 200 and "jobs" in json.load(response)


def test_agent_guide_list_query_examples_are_answered_as_written(live_api: LiveApi):
    section = GUIDE.split("## 8. Listing and cancelling", 1)[1].split("\n## ", 1)[0]
    examples = re.findall(r"`GET (/api/agent/jobs\?[^`]*)`", section)
    assert "/api/agent/jobs?status=&limit=&cursor=" in examples
    with live_api.client() as client:
        job = client.submit(png_bytes(), seed=3)
        client.wait(job["job_id"], timeout=60)
    with httpx.Client(base_url=live_api.url, auth=AgentSigner(live_api.key_id, live_api.secret)) as http:
        for example in examples:
            cursor = http.get("/api/agent/jobs", params={"status": "succeeded", "limit": 1}).json()["next_cursor"]
            path = example.replace("<next_cursor>", cursor or "")
            response = http.get(path)
            assert response.status_code == 200, (path, response.text)
        first = http.get("/api/agent/jobs?status=&limit=&cursor=").json()
        assert [listed["job_id"] for listed in first["jobs"]] == [job["job_id"]]


def test_agent_guide_lists_every_code_the_job_endpoints_send():
    modules = [ROOT / "serve_app" / name for name in ("requests.py", "routes.py", "images.py", "json_body.py")]
    source = "\n".join(path.read_text() for path in modules)
    sent = set(re.findall(r'(?:ApiError|ImageRejected)\(\s*\d{3},\s*"([a-z_]+)"', source))
    sent |= set(re.findall(r'JsonRejected\(\s*"([a-z_]+)"', source))
    listed = set(re.findall(r"^\| \d{3}\s+\| `([a-z_]+)`", GUIDE, flags=re.MULTILINE))
    assert {"unexpected_file_field", "invalid_multipart", "missing_image", "invalid_seed"} <= sent
    assert sorted(sent - listed - UNLISTED_CODES) == []
