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


@pytest.mark.parametrize(
    ("params", "bound"),
    [
        ({"octree_resolution": 8}, "octree_resolution must be between 32 and 384 here, got 8"),
        ({"octree_resolution": 1024}, "octree_resolution must be between 32 and 384 here, got 1024"),
        ({"num_inference_steps": 500}, "num_inference_steps must be between 1 and 100 here, got 500"),
        ({"guidance_scale": 99.0}, "guidance_scale must be between 0.0 and 20.0 here, got 99.0"),
        ({"max_faces": 3_000_000}, "max_faces must be between 1000 and 500000 here (or 0), got 3000000"),
    ],
)
async def test_api_param_bounds_in_messages_are_the_configured_ones(paused_api, params, bound):
    # the model's own ranges (octree 16-512, ...) are wider; an agent only ever sees this deployment's
    response = await paused_api.client.post("/api/agent/jobs", json={"image": b64(png_bytes()), "params": params})
    _error(response, 422, "invalid_params")
    assert response.json()["message"] == bound


@pytest.mark.parametrize("seed", [2**53, 2**63 - 1])
async def test_api_seeds_past_2_53_are_refused_naming_the_bound(paused_api, seed):
    response = await paused_api.client.post("/api/agent/jobs", json={"image": b64(png_bytes()), "seed": seed})
    _error(response, 422, "invalid_seed")
    assert str(2**53 - 1) in response.json()["message"]
    items = [{"image": b64(png_bytes()), "seed": seed}]
    _error(await paused_api.client.post("/api/agent/batches", json={"items": items}), 422, "invalid_seed")


async def test_api_largest_seed_is_accepted_and_reported(paused_api):
    response = await paused_api.client.post("/api/agent/jobs", json={"image": b64(png_bytes()), "seed": 2**53 - 1})
    assert response.status_code == 202 and response.json()["seed"] == 2**53 - 1


async def test_api_missing_image_is_the_same_code_for_a_job_and_a_batch_item(paused_api):
    _error(await paused_api.client.post("/api/agent/jobs", json={"seed": 1}), 422, "missing_image")
    items = [{"image": b64(png_bytes())}, {"seed": 1}]
    response = await paused_api.client.post("/api/agent/batches", json={"items": items})
    _error(response, 422, "missing_image")
    assert "items[1].image" in response.json()["message"]
    # present but not a non-empty string: invalid_image_field, in both
    _error(await paused_api.client.post("/api/agent/jobs", json={"image": 7}), 422, "invalid_image_field")
    items = [{"image": None}]
    _error(await paused_api.client.post("/api/agent/batches", json={"items": items}), 422, "invalid_image_field")


@pytest.mark.parametrize(
    ("files", "named"),
    [
        ([("image", ("cat.png", png_bytes(), "image/png")), ("mask", ("m.png", png_bytes(), "image/png"))], "'mask'"),
        (
            [("params", ("p.json", b"{}", "application/json")), ("image", ("cat.png", png_bytes(), "image/png"))],
            "'params'",
        ),
        ([("image", ("a.png", png_bytes(), "image/png")), ("image", ("b.png", png_bytes(), "image/png"))], "second"),
    ],
)
async def test_api_multipart_extra_file_fields_are_named(paused_api, files, named):
    response = await paused_api.client.post("/api/agent/jobs", files=files)
    _error(response, 400, "unexpected_file_field")
    assert named in response.json()["message"]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"--x\r\n"),  # no boundary parameter
        ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data\r\n\r\nvalue\r\n--x--\r\n"),
        ("multipart/form-data; boundary=x", b"--x\r\ngarbage without headers\x00\r\n\r\n--y"),
    ],
)
async def test_api_malformed_multipart_is_invalid_multipart(paused_api, content_type, body):
    response = await paused_api.client.post("/api/agent/jobs", content=body, headers={"Content-Type": content_type})
    _error(response, 400, "invalid_multipart")


async def test_api_list_empty_query_values_mean_not_given(paused_api):
    job_id = (await paused_api.client.post("/api/agent/jobs", json={"image": b64(png_bytes())})).json()["job_id"]
    response = await paused_api.client.get("/api/agent/jobs?status=&limit=&cursor=")
    assert response.status_code == 200, response.text
    assert [job["job_id"] for job in response.json()["jobs"]] == [job_id]
    _error(await paused_api.client.get("/api/agent/jobs?status=done"), 422, "invalid_status")
