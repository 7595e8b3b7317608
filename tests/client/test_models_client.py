"""A job's `model` from the SDK, the CLI and the MCP tool, against a live API serving two models."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp import Client

from serve_app.app import OrfeasArgs
from serve_app.cli import main
from serve_app.client import ApiRequestError
from serve_app.mcp_tools import build_server
from tests.serve_app.conftest import png_bytes

from .conftest import LiveApi, serve_api

BASE = "hunyuan3d-dit-v2-0"
FAST = "hunyuan3d-dit-v2-0-fast"


@pytest.fixture
def two_models(tmp_path: Path) -> Iterator[LiveApi]:
    """Jobs stay queued (no dispatcher): these tests look at what was submitted."""
    generators = [{"model": f"configs/models/tiny-Hunyuan3D-2/{name}"} for name in (BASE, FAST)]
    catalog = OrfeasArgs.model_validate({"app": {"mode": "dev"}, "generators": generators}).catalog()
    with serve_api(tmp_path, dispatcher=False, models=catalog) as api:
        yield api


def test_models_client_sdk_submit_and_batch_name_the_model(two_models: LiveApi):
    with two_models.client() as agent:
        assert [model["name"] for model in agent.capabilities()["models"]] == [BASE, FAST]
        assert agent.submit(png_bytes(), model=FAST)["model"] == FAST
        assert agent.submit(png_bytes())["model"] == BASE
        batch = agent.submit_batch([png_bytes(), png_bytes()], model=FAST)
        assert [job["model"] for job in batch["jobs"]] == [FAST, FAST]
        with pytest.raises(ApiRequestError) as refused:
            agent.submit(png_bytes(), model="hunyuan3d-dit-v2-1")
    assert (refused.value.status, refused.value.code) == (422, "unknown_model")


def test_models_client_cli_submit_model(two_models: LiveApi, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    image = tmp_path / "cat.png"
    image.write_bytes(png_bytes())
    key = ["--key-file", str(two_models.key_file)]
    assert main(["agent", "submit", str(image), "--model", FAST, *key]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["job"]["model"] == FAST
    assert main(["agent", "submit", str(image), "--model", "nope", *key]) == 1
    assert "unknown_model" in capsys.readouterr().err


async def test_models_client_mcp_generate_takes_a_model(two_models: LiveApi):
    with two_models.client() as agent:
        async with Client(build_server(agent)) as client:
            image = base64.b64encode(png_bytes()).decode()
            result = await client.call_tool("generate_3d_shape", {"image_base64": image, "model": FAST})
            assert not result.is_error and result.structured_content is not None
            assert result.structured_content["model"] == FAST
