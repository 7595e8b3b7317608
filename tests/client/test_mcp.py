"""`orfeas mcp` with the MCP SDK's own client against the live API (real auth, database, dispatcher; stand-in
model): over stdio (the server a subprocess, as MCP clients run it), over streamable HTTP, and in-process."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trimesh
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextContent

from serve_app.cli import main
from serve_app.mcp_tools import build_server
from tests.serve_app.conftest import png_bytes

from .conftest import LiveApi

ROOT = Path(__file__).parents[2]
PARAMS = {"num_inference_steps": 5, "octree_resolution": 64}
TOOLS = {"generate_3d_shape", "get_job", "download_mesh", "list_jobs", "cancel_job"}
TIMEOUT_S = 120.0


def stdio_server(key_file: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "serve_app.cli", "mcp", "--key-file", str(key_file)], cwd=ROOT
    )


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool's structured result; fails the test on a tool error."""
    result = await client.call_tool(tool, arguments, read_timeout_seconds=TIMEOUT_S)
    assert not result.is_error, error_text(result)
    assert result.structured_content is not None
    return result.structured_content


async def call_error(client: Client, tool: str, **arguments: Any) -> str:
    result = await client.call_tool(tool, arguments, read_timeout_seconds=TIMEOUT_S)
    assert result.is_error, result.structured_content
    return error_text(result)


def error_text(result: CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, TextContent))


async def wait_done(client: Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT_S
    while (job := await call(client, "get_job", job_id=job_id, wait_s=60))["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
    return job


async def test_mcp_stdio_generate_wait_download_list_cancel(live_api: LiveApi, tmp_path: Path):
    image = tmp_path / "cat.png"
    image.write_bytes(png_bytes())
    async with Client(stdio_server(live_api.key_file), read_timeout_seconds=TIMEOUT_S) as client:
        # 1. the tools and their input schemas
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == TOOLS
        generate = tools["generate_3d_shape"].input_schema
        assert set(generate["properties"]) >= {
            "image_path",
            "image_base64",
            "seed",
            "params",
            "remove_background",
            "max_faces",
        }
        assert generate.get("required", []) == []
        assert tools["get_job"].input_schema["properties"]["wait_s"]["maximum"] == 60
        assert tools["get_job"].input_schema["required"] == ["job_id"]
        assert set(tools["download_mesh"].input_schema["required"]) == {"job_id", "path"}
        assert tools["download_mesh"].input_schema["properties"]["format"]["enum"] == ["glb", "obj", "stl", "ply"]
        assert all(tool.output_schema is not None for tool in tools.values())

        # 2. generate from a PNG on disk, wait for it, download the mesh
        job = await call(
            client,
            "generate_3d_shape",
            image_path=str(image),
            seed=3,
            params=PARAMS,
            remove_background="never",
            max_faces=5000,
        )
        assert job["status"] == "queued" and job["seed"] == 3
        assert job["status_url"] == f"/api/agent/jobs/{job['job_id']}"
        assert job["params"]["max_faces"] == 5000 and job["params"]["remove_background"] == "never"
        done = await wait_done(client, job["job_id"])
        assert done["status"] == "succeeded" and done["stage"] == "done" and done["progress"] == 100
        target = tmp_path / "meshes" / "cat.glb"
        written = await call(client, "download_mesh", job_id=job["job_id"], path=str(target))
        assert written == {"path": str(target.resolve()), "bytes": target.stat().st_size, "format": "glb"}
        assert len(trimesh.load(target, force="mesh").faces) == 320
        into_dir = await call(client, "download_mesh", job_id=job["job_id"], path=str(tmp_path), format="obj")
        assert into_dir["path"] == str(tmp_path.resolve() / f"{job['job_id']}.obj")
        assert len(trimesh.load(into_dir["path"], force="mesh").faces) == 320

        # 3. a second job from base64; both listed, newest first
        second = await call(client, "generate_3d_shape", image_base64=base64.b64encode(png_bytes()).decode())
        page = await call(client, "list_jobs", limit=10)
        assert [listed["job_id"] for listed in page["jobs"]] == [second["job_id"], job["job_id"]]
        assert page["next_cursor"] is None
        succeeded = await call(client, "list_jobs", status="succeeded")
        assert job["job_id"] in [listed["job_id"] for listed in succeeded["jobs"]]

        # 4. API errors come back as tool errors carrying the code; the server keeps serving
        assert "job_finished: " in await call_error(client, "cancel_job", job_id=job["job_id"])
        assert "job_not_found: " in await call_error(client, "get_job", job_id="job_does_not_exist")
        unknown = await call_error(client, "download_mesh", job_id="job_does_not_exist", path=str(tmp_path))
        assert "job_not_found: " in unknown

        # 5. bad arguments are tool errors too
        both = await call_error(
            client, "generate_3d_shape", image_path=str(image), image_base64=base64.b64encode(b"x").decode()
        )
        assert "invalid_arguments: give exactly one of image_path or image_base64" in both
        assert "invalid_arguments: " in await call_error(client, "generate_3d_shape", seed=1)
        missing = await call_error(client, "generate_3d_shape", image_path=str(tmp_path / "nope.png"))
        assert "image_unreadable: " in missing and "nope.png" in missing
        assert "invalid_base64: " in await call_error(client, "generate_3d_shape", image_base64="not base64!")
        assert "wait_s" in await call_error(client, "get_job", job_id=job["job_id"], wait_s=61)
        # an image the API refuses: its own code (not an image at all)
        assert "invalid_image" in await call_error(
            client, "generate_3d_shape", image_base64=base64.b64encode(b"not an image").decode()
        )
        assert (await call(client, "get_job", job_id=job["job_id"]))["status"] == "succeeded"


async def test_mcp_streamable_http_serves_the_tools(live_api: LiveApi, tmp_path: Path):
    with live_api.client() as agent:
        job_id = agent.submit(png_bytes(), params=PARAMS)["job_id"]
    # a key file without url: --url names the API
    key_file = tmp_path / "agent.json"
    key_file.write_text(json.dumps({"key_id": live_api.key_id, "secret": live_api.secret}))
    log = tmp_path / "mcp.log"
    with log.open("w") as stderr:
        command = ["-m", "serve_app.cli", "mcp", "--key-file", str(key_file), "--url", live_api.url]
        server = subprocess.Popen(
            [sys.executable, *command, "--transport", "streamable-http", "--port", "0"], cwd=ROOT, stderr=stderr
        )
    try:
        url = wait_for_url(log, server)
        async with Client(url, read_timeout_seconds=TIMEOUT_S) as client:
            assert {tool.name for tool in (await client.list_tools()).tools} == TOOLS
            assert (await wait_done(client, job_id))["status"] == "succeeded"
            assert [job["job_id"] for job in (await call(client, "list_jobs"))["jobs"]] == [job_id]
            assert "job_not_found: " in await call_error(client, "cancel_job", job_id="job_does_not_exist")
    finally:
        server.terminate()
        server.wait(30)


def wait_for_url(log: Path, server: subprocess.Popen[bytes]) -> str:
    """The URL from the server's 'serving MCP ... at URL' line on stderr."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        for line in log.read_text().splitlines():
            if line.startswith("orfeas mcp: serving MCP"):
                return line.split(" at ")[1].split()[0]
        assert server.poll() is None, f"orfeas mcp exited with {server.returncode}: {log.read_text()}"
        assert time.monotonic() < deadline, f"no URL on stderr: {log.read_text()}"
        time.sleep(0.1)


async def test_mcp_get_job_waits_reports_progress_then_cancels_a_queued_job(paused_live_api: LiveApi):
    # in-process (the SDK's in-memory transport): the same tools without a subprocess
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    with paused_live_api.client() as agent:
        async with Client(build_server(agent), read_timeout_seconds=TIMEOUT_S) as client:
            job = await call(client, "generate_3d_shape", image_base64=base64.b64encode(png_bytes()).decode())
            waited = await client.call_tool(
                "get_job", {"job_id": job["job_id"], "wait_s": 0.5}, progress_callback=on_progress
            )
            assert not waited.is_error and waited.structured_content is not None
            assert (waited.structured_content["status"], waited.structured_content["stage"]) == ("queued", "queued")
            assert progress and set(progress) == {(0.0, 100.0, "queued")}
            target = str(paused_live_api.service.config.data_dir)
            not_ready = await call_error(client, "download_mesh", job_id=job["job_id"], path=target)
            assert "result_not_ready: " in not_ready and "HTTP 409" in not_ready
            cancelled = await call(client, "cancel_job", job_id=job["job_id"])
            assert cancelled["status"] == "cancelled"
            assert (await call(client, "list_jobs", status="cancelled"))["jobs"][0]["job_id"] == job["job_id"]


async def test_mcp_generate_on_a_full_queue_is_a_retryable_tool_error(paused_live_api: LiveApi):
    # room for 3 queued jobs, Retry-After 1 s: the 4th submission retries, then reports queue_full
    with paused_live_api.client(max_retries=1) as agent:
        async with Client(build_server(agent), read_timeout_seconds=TIMEOUT_S) as client:
            image = base64.b64encode(png_bytes()).decode()
            for _ in range(3):
                await call(client, "generate_3d_shape", image_base64=image)
            full = await call_error(client, "generate_3d_shape", image_base64=image)
    assert "queue_full: " in full and "HTTP 503, retryable after 1 s" in full


async def test_mcp_download_to_an_unwritable_path_is_a_tool_error(live_api: LiveApi, tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with live_api.client() as agent:
        job_id = agent.submit(png_bytes(), params=PARAMS)["job_id"]
        agent.wait(job_id, timeout=TIMEOUT_S)
        async with Client(build_server(agent), read_timeout_seconds=TIMEOUT_S) as client:
            text = await call_error(client, "download_mesh", job_id=job_id, path=str(blocker / "mesh.glb"))
    assert "write_failed: " in text


def test_mcp_cli_without_a_key_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["mcp", "--key-file", str(tmp_path / "missing.json")]) == 2
    assert capsys.readouterr().err.startswith("orfeas mcp: error: no key file at ")


def test_mcp_server_imports_without_ray_torch_or_sqlalchemy():
    # the MCP server is agent side: it must build where the server stacks are absent
    code = """
import sys
BLOCKED = ("ray", "torch", "sqlalchemy", "transformers", "diffusers")
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
from serve_app.client import AgentClient
from serve_app.mcp_server import add_mcp_parser, run_mcp
from serve_app.mcp_tools import build_server
build_server(AgentClient("http://127.0.0.1:1", "ak_test_x", "A" * 43 + "="))
print(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().replace("'", '"')) == []
