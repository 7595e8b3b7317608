"""`orfeas agent ...` end to end: the real CLI entry point against a live in-process API."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import trimesh

from serve_app.cli import main
from tests.serve_app.conftest import MESH_DEFAULTS, png_bytes

from .conftest import LiveApi


def run_cli(capsys: pytest.CaptureFixture[str], api: LiveApi, *argv: str) -> tuple[int, object, str]:
    """Exit status, stdout parsed as JSON (None when empty) and stderr."""
    status = main(["agent", *argv, "--key-file", str(api.key_file)])
    out, err = capsys.readouterr()
    return status, (json.loads(out) if out.strip() else None), err


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    paths = [tmp_path / "cat.png", tmp_path / "dog.png"]
    for path in paths:
        path.write_bytes(png_bytes())
    return paths


def test_agent_cli_submit_wait_downloads_each_mesh(live_api, capsys, images, tmp_path):
    out = tmp_path / "meshes"
    status, results, err = run_cli(
        capsys,
        live_api,
        "submit",
        *map(str, images),
        "--seed",
        "4",
        "--steps",
        "5",
        "--octree-resolution",
        "64",
        "--guidance-scale",
        "4.5",
        "--wait",
        "--out",
        str(out),
        "--format",
        "stl",
    )
    assert status == 0 and err == ""
    assert [result["image"] for result in results] == [str(path) for path in images]
    for result in results:
        job = result["job"]
        assert job["status"] == "succeeded" and job["seed"] == 4
        assert job["params"] == {
            **MESH_DEFAULTS,
            "num_inference_steps": 5,
            "guidance_scale": 4.5,
            "octree_resolution": 64,
        }
        path = Path(result["file"])
        assert path.parent == out and path.name.endswith(f"-{job['job_id']}.stl")
        assert len(trimesh.load(path, force="mesh").faces) == job["mesh"]["faces"]


def test_agent_cli_submit_without_wait_prints_queued_jobs(paused_live_api, capsys, images):
    status, results, _ = run_cli(capsys, paused_live_api, "submit", str(images[0]))
    assert status == 0 and results[0]["job"]["status"] == "queued" and results[0]["job"]["priority"] == "normal"
    assert "file" not in results[0]


def test_agent_cli_status_list_cancel(paused_live_api, capsys, images):
    _, results, _ = run_cli(capsys, paused_live_api, "submit", *map(str, images))
    first, second = (result["job"]["job_id"] for result in results)
    status, job, _ = run_cli(capsys, paused_live_api, "status", first)
    assert status == 0 and job["job_id"] == first and job["status"] == "queued"
    status, cancelled, _ = run_cli(capsys, paused_live_api, "cancel", first)
    assert status == 0 and cancelled["status"] == "cancelled"
    status, page, _ = run_cli(capsys, paused_live_api, "list", "--status", "queued")
    assert status == 0 and [job["job_id"] for job in page["jobs"]] == [second] and page["next_cursor"] is None
    _, page, _ = run_cli(capsys, paused_live_api, "list", "--limit", "1")
    assert [job["job_id"] for job in page["jobs"]] == [second] and page["next_cursor"]
    _, page, _ = run_cli(capsys, paused_live_api, "list", "--limit", "1", "--cursor", page["next_cursor"])
    assert [job["job_id"] for job in page["jobs"]] == [first]


def test_agent_cli_download_writes_the_requested_format(live_api, capsys, tmp_path):
    with live_api.client() as client:
        job_id = client.submit(png_bytes(), params={"num_inference_steps": 5})["job_id"]
        client.wait(job_id, timeout=10)
    target = tmp_path / "mesh.obj"
    status, result, _ = run_cli(capsys, live_api, "download", job_id, "--format", "obj", "--out", str(target))
    assert status == 0 and result == {
        "job_id": job_id,
        "format": "obj",
        "path": str(target),
        "bytes": target.stat().st_size,
    }
    assert len(trimesh.load(io.BytesIO(target.read_bytes()), file_type="obj", force="mesh").faces) == 320


def test_agent_cli_api_errors_are_one_line_on_stderr(live_api, capsys):
    status, out, err = run_cli(capsys, live_api, "status", "job_nope")
    assert status == 1 and out is None
    assert err.startswith("orfeas agent: error: 404 job_not_found: no job 'job_nope' for this agent (request_id ")
    assert err.count("\n") == 1


def test_agent_cli_failed_job_exits_non_zero(live_api, capsys, images, tmp_path):
    status, results, err = run_cli(
        capsys, live_api, "submit", str(images[0]), "--steps", "13", "--wait", "--out", str(tmp_path / "o")
    )
    assert status == 1 and results[0]["job"]["status"] == "failed" and "file" not in results[0]
    assert err == f"orfeas agent: job {results[0]['job']['job_id']} failed: empty_surface: no surface found\n"


def test_agent_cli_url_overrides_the_key_file(live_api, capsys, tmp_path):
    key_file = tmp_path / "key.json"
    key = json.loads(live_api.key_file.read_text())
    key_file.write_text(json.dumps({**key, "url": "http://127.0.0.1:1"}))
    assert main(["agent", "list", "--key-file", str(key_file), "--url", live_api.url]) == 0
    assert json.loads(capsys.readouterr().out)["jobs"] == []
    assert main(["agent", "list", "--key-file", str(key_file)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("orfeas agent: error: ") and err.count("\n") == 1


def test_agent_cli_missing_key_file_says_how_to_get_one(capsys, tmp_path):
    assert main(["agent", "list", "--key-file", str(tmp_path / "none.json")]) == 1
    err = capsys.readouterr().err
    assert "no key file at" in err and "dev mode" in err and err.count("\n") == 1
