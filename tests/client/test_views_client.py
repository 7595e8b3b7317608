"""Multiview jobs from the agent side: the SDK's ``submit(views=)`` and batch items, ``orfeas agent submit
--view``, and the MCP tool's ``views``, against the live in-process API (real auth, database, artifacts)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from serve_app.cli import main
from serve_app.client import AgentClient, ApiRequestError
from serve_app.images import ImageLimits, validate_image_bytes
from serve_app.mcp_tools import build_server
from tests.serve_app.conftest import png_bytes

from .conftest import LiveApi, serve_api
from .test_mcp import TIMEOUT_S, call, call_error

FRONT = png_bytes(color=(200, 40, 40, 255))
LEFT = png_bytes(color=(40, 200, 40, 255))
BACK = png_bytes(color=(40, 40, 200, 255))


def _stored_views(api: LiveApi, job_id: str) -> dict[str, bytes]:
    """The job's stored inputs by view name, as the dispatcher would hand them to the model."""
    record = api.run(api.service.store.get("dev-agent", job_id))
    assert record is not None
    artifacts = api.service.artifacts
    paths = {"front": record.input_path, **(record.view_paths or {})}
    return {name: artifacts.read_bytes(relpath) for name, relpath in paths.items()}


def _normalised(data: bytes) -> bytes:
    return validate_image_bytes(data, ImageLimits()).data


# the service's one model takes every view (a named 2mv variant); a single-view model refuses views
MULTIVIEW_MODEL = "hunyuan3d-dit-v2-mv"


@pytest.fixture
def live_api(tmp_path: Path) -> Iterator[LiveApi]:
    with serve_api(tmp_path, model_name=MULTIVIEW_MODEL) as api:
        yield api


@pytest.fixture
def paused_live_api(tmp_path: Path) -> Iterator[LiveApi]:
    """No dispatcher: jobs stay queued, their inputs stay on disk."""
    with serve_api(tmp_path, model_name=MULTIVIEW_MODEL, dispatcher=False) as api:
        yield api


@pytest.fixture
def front_file(tmp_path: Path) -> Path:
    path = tmp_path / "cat-front.png"
    path.write_bytes(FRONT)
    return path


def test_views_sdk_submit_sends_paths_and_bytes_by_view(paused_live_api: LiveApi, front_file: Path) -> None:
    with paused_live_api.client() as client:
        job = client.submit(views={"front": front_file, "back": BACK}, seed=9)

    assert (job["status"], job["views"], job["seed"]) == ("queued", ["front", "back"], 9)
    assert _stored_views(paused_live_api, job["job_id"]) == {"front": _normalised(FRONT), "back": _normalised(BACK)}


def test_views_sdk_batch_items_may_be_views(paused_live_api: LiveApi) -> None:
    with paused_live_api.client() as client:
        batch = client.submit_batch([{"front": FRONT, "left": LEFT}, BACK], seeds=[1, 2])

    jobs = batch["jobs"]
    assert [job["views"] for job in jobs] == [["front", "left"], ["front"]]
    assert _stored_views(paused_live_api, jobs[0]["job_id"]) == {"front": _normalised(FRONT), "left": _normalised(LEFT)}
    assert _stored_views(paused_live_api, jobs[1]["job_id"]) == {"front": _normalised(BACK)}


def test_views_sdk_needs_exactly_one_of_image_or_views(client: AgentClient) -> None:
    with pytest.raises(ValueError, match="exactly one of image or views"):
        client.submit(FRONT, views={"front": FRONT})
    with pytest.raises(ValueError, match="exactly one of image or views"):
        client.submit()
    with pytest.raises(TypeError, match="views must map view names to images"):
        client.submit(views=[FRONT])  # type: ignore[arg-type]


def test_views_sdk_refusals_carry_the_api_code(client: AgentClient) -> None:
    with pytest.raises(ApiRequestError) as missing:
        client.submit(views={"left": LEFT})
    assert (missing.value.status, missing.value.code) == (422, "missing_front_view")
    with pytest.raises(ApiRequestError) as unknown:
        client.submit(views={"front": FRONT, "top": LEFT})
    assert (unknown.value.status, unknown.value.code) == (422, "unknown_view")


def _cli(capsys: pytest.CaptureFixture[str], api: LiveApi, *argv: str) -> tuple[int, Any, str]:
    status = main(["agent", *argv, "--key-file", str(api.key_file)])
    out, err = capsys.readouterr()
    return status, (json.loads(out) if out.strip() else None), err


def test_views_cli_submit_view_options_make_one_job_and_download_its_mesh(
    live_api: LiveApi, capsys: pytest.CaptureFixture[str], front_file: Path, tmp_path: Path
) -> None:
    left = tmp_path / "cat-left.png"
    left.write_bytes(LEFT)
    out = tmp_path / "meshes"

    status, results, err = _cli(
        capsys,
        live_api,
        "submit",
        "--view",
        f"front={front_file}",
        "--view",
        f"left={left}",
        "--steps",
        "5",
        "--octree-resolution",
        "64",
        "--out",
        str(out),
    )

    assert (status, err) == (0, "")
    (result,) = results
    job = result["job"]
    assert (job["status"], job["views"]) == ("succeeded", ["front", "left"])
    assert result["views"] == {"front": str(front_file), "left": str(left)}
    assert result["file"] == str(out / f"cat-front-{job['job_id']}.glb") and Path(result["file"]).stat().st_size > 0


def test_views_cli_refuses_images_with_views_and_bad_view_options(
    live_api: LiveApi, capsys: pytest.CaptureFixture[str], front_file: Path
) -> None:
    status, results, err = _cli(capsys, live_api, "submit", str(front_file), "--view", f"front={front_file}")
    assert (status, results) == (1, None) and "not both" in err
    status, results, err = _cli(capsys, live_api, "submit", "--view", f"front={front_file}", "--view", "front=b.png")
    assert (status, results) == (1, None) and "--view front given twice" in err
    status, results, err = _cli(capsys, live_api, "submit")
    assert (status, results) == (1, None) and "give one or more IMAGE files, or --view front=IMAGE" in err
    status, results, err = _cli(capsys, live_api, "submit", "--view", f"left={front_file}")
    assert (status, results) == (1, None) and "422 missing_front_view" in err
    with pytest.raises(SystemExit):
        _cli(capsys, live_api, "submit", "--view", "front")
    assert "expected NAME=IMAGE" in capsys.readouterr().err


async def test_views_mcp_generate_takes_paths_or_base64_per_view(paused_live_api: LiveApi, front_file: Path) -> None:
    with paused_live_api.client() as agent:
        async with Client(build_server(agent), read_timeout_seconds=TIMEOUT_S) as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            assert "views" in tools["generate_3d_shape"].input_schema["properties"]

            job = await call(
                client,
                "generate_3d_shape",
                views={"front": {"path": str(front_file)}, "left": {"base64": base64.b64encode(LEFT).decode()}},
                seed=4,
            )
            assert (job["status"], job["views"], job["seed"]) == ("queued", ["front", "left"], 4)

            both = await call_error(
                client, "generate_3d_shape", image_path=str(front_file), views={"front": {"path": str(front_file)}}
            )
            assert "invalid_arguments: give views or an image" in both
            neither = await call_error(client, "generate_3d_shape", views={"front": {}})
            assert "invalid_arguments: give exactly one of views.front.path or views.front.base64" in neither
            missing = await call_error(
                client, "generate_3d_shape", views={"left": {"base64": base64.b64encode(LEFT).decode()}}
            )
            assert "missing_front_view: " in missing
    stored = paused_live_api.run(paused_live_api.service.store.get("dev-agent", job["job_id"]))
    assert stored is not None and stored.view_names == ("front", "left")
