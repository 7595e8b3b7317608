"""Bad input never yields a 500 or a hang: each gets a 4xx with a specific code and a request id."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from .conftest import b64, png_bytes


def _error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code
    assert set(body) == {"type", "code", "message", "retryable", "request_id"}
    assert response.headers["x-request-id"] == body["request_id"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"seed": 1}, 422, "missing_image"),
        ({"image": "%%%"}, 400, "invalid_base64"),
        ({"image": base64.b64encode(b"not an image at all").decode()}, 400, "invalid_image"),
        ({"image": b64(png_bytes()), "params": {"num_inference_steps": 0}}, 422, "invalid_params"),
        ({"image": b64(png_bytes()), "params": {"octree_resolution": 1024}}, 422, "invalid_params"),
        ({"image": b64(png_bytes()), "params": {"volume_decoder": "dense"}}, 422, "invalid_params"),
        ({"image": b64(png_bytes()), "params": "fast"}, 422, "invalid_params"),
        ({"image": b64(png_bytes()), "params": {"max_faces": 500}}, 422, "invalid_params"),
        ({"image": b64(png_bytes()), "params": {"max_faces": 600_000}}, 422, "invalid_params"),
        ({"image": b64(png_bytes()), "params": {"max_faces": "many"}}, 422, "invalid_params"),
        ({"image": b64(png_bytes()), "params": {"remove_floaters": "yes"}}, 422, "invalid_params"),
        ({"image": b64(png_bytes()), "params": {"remove_background": "sometimes"}}, 422, "invalid_params"),
        ({"image": b64(png_bytes()), "seed": -1}, 422, "invalid_seed"),
        ({"image": b64(png_bytes()), "seed": "7"}, 422, "invalid_seed"),
        ({"image": b64(png_bytes()), "priority": "urgent"}, 422, "invalid_priority"),
        ({"image": b64(png_bytes()), "colour": "red"}, 422, "unknown_field"),
        ({"image": b64(png_bytes(color=(0, 0, 0, 0)))}, 422, "empty_image"),
        ({"image": b64(png_bytes(size=(8, 8)))}, 422, "image_too_small"),
    ],
)
async def test_api_rejects_bad_job_bodies(paused_api, body, status, code):
    _error(await paused_api.client.post("/api/agent/jobs", json=body), status, code)


async def test_api_rejects_malformed_json(paused_api):
    response = await paused_api.client.post(
        "/api/agent/jobs", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    _error(response, 400, "invalid_json")


async def test_api_rejects_other_content_types(paused_api):
    response = await paused_api.client.post("/api/agent/jobs", content=b"hello", headers={"Content-Type": "text/plain"})
    _error(response, 415, "unsupported_content_type")


async def test_api_rejects_unaccepted_image_formats(paused_api):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="GIF")
    _error(
        await paused_api.client.post("/api/agent/jobs", json={"image": b64(buf.getvalue())}),
        415,
        "unsupported_image_format",
    )


async def test_api_rejects_oversized_bodies_with_413(paused_api):
    limit = paused_api.service.config.auth.max_body_bytes
    response = await paused_api.client.post("/api/agent/jobs", json={"image": "A" * (limit + 10)})
    assert response.status_code == 413 and response.json()["type"]


async def test_api_rejects_bad_batches(paused_api):
    _error(await paused_api.client.post("/api/agent/batches", json={"items": []}), 422, "invalid_items")
    items = [{"image": b64(png_bytes())}] * 65
    _error(await paused_api.client.post("/api/agent/batches", json={"items": items}), 413, "too_many_items")
    bad_item = [{"image": b64(png_bytes())}, {"image": "%%%"}]
    response = await paused_api.client.post("/api/agent/batches", json={"items": bad_item})
    _error(response, 400, "invalid_base64")
    assert "items[1].image" in response.json()["message"]


async def test_api_unknown_routes_and_methods_use_the_error_shape(paused_api):
    _error(await paused_api.client.get("/api/agent/nothing-here"), 404, "route_not_found")
    _error(await paused_api.client.put("/api/agent/jobs"), 405, "method_not_allowed")


async def test_api_bad_query_values(paused_api):
    _error(await paused_api.client.get("/api/agent/jobs", params={"limit": "many"}), 422, "invalid_limit")
    _error(await paused_api.client.get("/api/agent/jobs", params={"cursor": "garbage"}), 422, "invalid_cursor")
    job_id = (await paused_api.client.post("/api/agent/jobs", json={"image": b64(png_bytes())})).json()["job_id"]
    _error(await paused_api.client.get(f"/api/agent/jobs/{job_id}", params={"wait": "999"}), 422, "invalid_wait")
    _error(
        await paused_api.client.get(f"/api/agent/jobs/{job_id}/result", params={"format": "fbx"}), 422, "invalid_format"
    )
