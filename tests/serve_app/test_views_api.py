"""Multiview jobs through the agent API: named views as JSON or multipart, stored as input artifacts, handed to
the model by view, deleted with the job's image, and every refusal with its status and code."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from serve_app.config import ApiLimits
from serve_app.images import ImageLimits, validate_image_bytes
from tests.jobs.helpers import FakeModel

from .conftest import b64, png_bytes
from .retention_helpers import App, start_app

DEV_AGENT = "dev-agent"
# the app's one model takes every view (a named 2mv variant); test_views_not_supported_* uses a single-view one
MULTIVIEW_MODEL = "hunyuan3d-dit-v2-mv"
FRONT = png_bytes(color=(200, 40, 40, 255))
LEFT = png_bytes(color=(40, 200, 40, 255))
BACK = png_bytes(color=(40, 40, 200, 255))
RIGHT = png_bytes(color=(200, 200, 40, 255))


def _stored(data: bytes) -> bytes:
    """What the API stores of an upload (and so what the model gets): the re-encoded pixels."""
    return validate_image_bytes(data, ImageLimits()).data


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture
async def app(tmp_path: Path, model: FakeModel) -> AsyncIterator[App]:
    app = await start_app(tmp_path, generate=model, model_name=MULTIVIEW_MODEL)
    yield app
    await app.stop()


@pytest.fixture
async def paused(tmp_path: Path) -> AsyncIterator[App]:
    """No dispatcher: jobs stay queued, their inputs stay on disk."""
    app = await start_app(tmp_path, dispatch=False, model_name=MULTIVIEW_MODEL)
    yield app
    await app.stop()


async def _post(app: App, body: dict) -> tuple[int, dict]:
    response = await app.client.post("/api/agent/jobs", json=body)
    return response.status_code, response.json()


def _error(status_body: tuple[int, dict]) -> tuple[int, str]:
    status, body = status_body
    return status, body["code"]


async def test_views_json_job_is_stored_with_one_input_artifact_per_view(paused: App) -> None:
    status, job = await _post(paused, {"views": {"back": b64(BACK), "front": b64(FRONT), "left": b64(LEFT)}, "seed": 3})

    assert status == 202
    assert job["views"] == ["front", "left", "back"]  # VIEW_NAMES order, whatever order they were sent in
    record = await paused.service.store.get(DEV_AGENT, job["job_id"])
    assert record is not None
    assert record.input_path == f"inputs/{job['job_id']}.png"
    assert record.view_paths == {
        "left": f"inputs/{job['job_id']}.left.png",
        "back": f"inputs/{job['job_id']}.back.png",
    }
    artifacts = paused.service.artifacts
    assert artifacts.read_bytes(record.input_path) == _stored(FRONT)
    assert artifacts.read_bytes(record.view_paths["left"]) == _stored(LEFT)
    assert artifacts.read_bytes(record.view_paths["back"]) == _stored(BACK)
    # the job view, listed and fetched, says the same
    fetched = (await paused.client.get(f"/api/agent/jobs/{job['job_id']}")).json()
    assert fetched["views"] == ["front", "left", "back"]


async def test_views_a_single_image_job_shows_the_front_view_only(paused: App) -> None:
    status, job = await _post(paused, {"image": b64(FRONT)})

    assert (status, job["views"]) == (202, ["front"])
    record = await paused.service.store.get(DEV_AGENT, job["job_id"])
    assert record is not None and record.view_paths is None


async def test_views_front_only_is_a_single_image_job(paused: App) -> None:
    status, job = await _post(paused, {"views": {"front": b64(FRONT)}})

    assert (status, job["views"]) == (202, ["front"])


async def test_views_multipart_view_files_are_accepted_and_stored(paused: App) -> None:
    files = [
        ("view_front", ("front.png", FRONT, "image/png")),
        ("view_right", ("right.png", RIGHT, "image/png")),
    ]
    response = await paused.client.post("/api/agent/jobs", files=files, data={"seed": "5"})

    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["views"], job["seed"]) == (["front", "right"], 5)
    record = await paused.service.store.get(DEV_AGENT, job["job_id"])
    assert record is not None and record.view_paths is not None
    assert paused.service.artifacts.read_bytes(record.input_path) == _stored(FRONT)
    assert paused.service.artifacts.read_bytes(record.view_paths["right"]) == _stored(RIGHT)


async def test_views_the_model_gets_each_views_bytes_and_the_inputs_go_with_the_job(app: App, model: FakeModel) -> None:
    status, job = await _post(app, {"views": {"front": b64(FRONT), "left": b64(LEFT), "right": b64(RIGHT)}})
    assert status == 202
    record = await app.service.store.get(DEV_AGENT, job["job_id"])
    assert record is not None and record.view_paths is not None

    done = await app.wait_finished(job["job_id"])

    assert done["status"] == "succeeded"
    (request,) = model.calls
    assert request.image == _stored(FRONT)
    assert dict(request.views) == {"left": _stored(LEFT), "right": _stored(RIGHT)}
    assert request.view_names == ("front", "left", "right")
    # every input of the ended job is deleted, the views with the image
    for relpath in record.input_paths:
        assert not app.service.artifacts.exists(relpath)


async def test_views_batch_items_carry_views(app: App, model: FakeModel) -> None:
    body = {
        "items": [
            {"views": {"front": b64(FRONT), "back": b64(BACK)}, "seed": 1},
            {"image": b64(LEFT), "seed": 2},
        ]
    }
    response = await app.client.post("/api/agent/batches", json=body)

    assert response.status_code == 202, response.text
    jobs = response.json()["jobs"]
    assert [job["views"] for job in jobs] == [["front", "back"], ["front"]]
    for job in jobs:
        assert (await app.wait_finished(job["job_id"]))["status"] == "succeeded"
    by_seed = {request.seed: request for request in model.calls}
    assert (by_seed[1].image, dict(by_seed[1].views)) == (_stored(FRONT), {"back": _stored(BACK)})
    assert (by_seed[2].image, dict(by_seed[2].views)) == (_stored(LEFT), {})


async def test_views_with_image_is_refused(paused: App) -> None:
    status, body = await _post(paused, {"image": b64(FRONT), "views": {"front": b64(FRONT)}})

    assert (status, body["code"]) == (422, "image_and_views")
    assert "'image' and 'views'" in body["message"] and "'views.front'" in body["message"]


async def test_views_without_front_is_refused_naming_it(paused: App) -> None:
    status, body = await _post(paused, {"views": {"left": b64(LEFT), "back": b64(BACK)}})

    assert (status, body["code"]) == (422, "missing_front_view")
    assert "no 'front' in 'views'" in body["message"]
    assert _error(await _post(paused, {"views": {}})) == (422, "missing_front_view")


async def test_views_unknown_name_is_refused_listing_the_names(paused: App) -> None:
    status, body = await _post(paused, {"views": {"front": b64(FRONT), "top": b64(LEFT)}})

    assert (status, body["code"]) == (422, "unknown_view")
    assert body["message"] == "unknown view(s) ['top'] in 'views'; views are ['front', 'left', 'back', 'right']"


async def test_views_that_are_not_an_object_are_refused(paused: App) -> None:
    assert _error(await _post(paused, {"views": [b64(FRONT)]})) == (422, "invalid_views")
    assert _error(await _post(paused, {"views": None})) == (422, "invalid_views")


async def test_views_each_view_is_checked_as_an_image_and_named(paused: App) -> None:
    status, body = await _post(paused, {"views": {"front": b64(FRONT), "left": 7}})
    assert (status, body["code"], body["message"]) == (
        422,
        "invalid_image_field",
        "'views.left' must be a non-empty base64 string",
    )
    status, body = await _post(paused, {"views": {"front": b64(FRONT), "back": "not base64!"}})
    assert (status, body["code"]) == (400, "invalid_base64") and "'views.back'" in body["message"]
    # bytes smuggled after the image's end are refused in a view as in the image
    status, body = await _post(paused, {"views": {"front": b64(FRONT), "right": b64(RIGHT + b"tail")}})
    assert (status, body["code"]) == (422, "image_trailing_data") and "'views.right'" in body["message"]
    status, body = await _post(paused, {"views": {"front": b64(b"not an image at all")}})
    assert (status, body["code"]) == (400, "invalid_image") and "'views.front'" in body["message"]
    # nothing was stored for any refused request
    assert paused.service.artifacts.list_files("inputs") == []


async def test_views_exif_rotation_is_applied_to_each_view(paused: App) -> None:
    photo = Image.new("RGB", (64, 32), (90, 120, 150))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", exif=exif.tobytes())

    status, job = await _post(paused, {"views": {"front": b64(FRONT), "left": b64(buffer.getvalue())}})

    assert status == 202
    record = await paused.service.store.get(DEV_AGENT, job["job_id"])
    assert record is not None and record.view_paths == {"left": f"inputs/{job['job_id']}.left.jpg"}
    with Image.open(io.BytesIO(paused.service.artifacts.read_bytes(record.view_paths["left"]))) as stored:
        assert stored.size == (32, 64)
        assert stored.getexif().get(0x0112) is None


async def test_views_count_towards_the_request_pixel_budget(tmp_path: Path) -> None:
    # one 64x48 image is 3,072 pixels: two fit the budget, three do not
    limits = ApiLimits(max_image_pixels=4096, max_request_pixels=7000)
    app = await start_app(tmp_path, dispatch=False, limits=limits, model_name=MULTIVIEW_MODEL)
    try:
        assert (await _post(app, {"views": {"front": b64(FRONT), "left": b64(LEFT)}}))[0] == 202
        status, body = await _post(app, {"views": {"front": b64(FRONT), "left": b64(LEFT), "back": b64(BACK)}})
        assert (status, body["code"]) == (413, "decode_budget_exceeded")
        assert "3 image(s) hold 9216 pixels" in body["message"]
        # a batch's views count together across its items
        items = [{"views": {"front": b64(FRONT)}}, {"views": {"front": b64(LEFT), "left": b64(BACK)}}]
        response = await app.client.post("/api/agent/batches", json={"items": items})
        assert (response.status_code, response.json()["code"]) == (413, "decode_budget_exceeded")
    finally:
        await app.stop()


async def test_views_batch_item_errors_name_the_item(paused: App) -> None:
    items = [{"image": b64(FRONT)}, {"views": {"left": b64(LEFT)}}]
    response = await paused.client.post("/api/agent/batches", json={"items": items})
    body = response.json()
    assert (response.status_code, body["code"]) == (422, "missing_front_view")
    assert "'items[1].views'" in body["message"]
    items = [{"image": b64(FRONT), "views": {"front": b64(FRONT)}}]
    response = await paused.client.post("/api/agent/batches", json={"items": items})
    assert (response.status_code, response.json()["code"]) == (422, "image_and_views")


async def test_views_multipart_refusals(paused: App) -> None:
    async def post(files: list, data: dict | None = None) -> tuple[int, dict]:
        response = await paused.client.post("/api/agent/jobs", files=files, data=data or {})
        return response.status_code, response.json()

    front = ("view_front", ("f.png", FRONT, "image/png"))
    left = ("view_left", ("l.png", LEFT, "image/png"))
    image = ("image", ("i.png", FRONT, "image/png"))

    status, body = await post([image, left])
    assert (status, body["code"]) == (422, "image_and_views")
    status, body = await post([left])
    assert (status, body["code"]) == (422, "missing_front_view") and "'view_front'" in body["message"]
    status, body = await post([front, ("view_top", ("t.png", LEFT, "image/png"))])
    assert (status, body["code"]) == (422, "unknown_view")
    assert "['view_front', 'view_left', 'view_back', 'view_right']" in body["message"]
    status, body = await post([front, left, left])
    assert (status, body["code"]) == (400, "unexpected_file_field")
    status, body = await post([front], {"views": "{}"})
    assert (status, body["code"]) == (422, "invalid_views")
    status, body = await post([front, ("view_left", ("l.png", LEFT + b"tail", "image/png"))])
    assert (status, body["code"]) == (422, "image_trailing_data") and "'view_left'" in body["message"]


async def test_views_openapi_documents_views_and_their_codes(paused: App) -> None:
    document = (await paused.client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]

    assert schemas["JobViews"]["required"] == ["front"]
    assert set(schemas["JobViews"]["properties"]) == {"front", "left", "back", "right"}
    assert schemas["JobSubmission"]["anyOf"] == [{"required": ["image"]}, {"required": ["views"]}]
    assert schemas["BatchItem"]["anyOf"] == [{"required": ["image"]}, {"required": ["views"]}]
    assert schemas["JobUpload"]["anyOf"] == [{"required": ["image"]}, {"required": ["view_front"]}]
    assert {"view_front", "view_left", "view_back", "view_right"} <= set(schemas["JobUpload"]["properties"])
    assert "views" in schemas["JobView"]["required"]
    refusals = document["paths"]["/api/agent/jobs"]["post"]["responses"]["422"]["description"]
    for code in ("image_and_views", "missing_front_view", "unknown_view", "invalid_views"):
        assert f"`{code}`" in refusals


async def test_views_not_supported_by_a_single_view_model_are_refused_before_decoding(tmp_path: Path) -> None:
    app = await start_app(tmp_path, dispatch=False)  # the default model: hunyuan3d-dit-v2-0, front only
    try:
        status, body = await _post(app, {"views": {"front": b64(FRONT), "back": b64(BACK)}})
        assert (status, body["code"]) == (422, "views_not_supported")
        assert "'back'" in body["message"] and "hunyuan3d-dit-v2-0" in body["message"]
        batch = {"items": [{"image": b64(FRONT)}, {"views": {"front": b64(FRONT), "left": b64(LEFT)}}]}
        response = await app.client.post("/api/agent/batches", json=batch)
        assert (response.status_code, response.json()["code"]) == (422, "views_not_supported")
        assert "items[1]" in response.json()["message"]
        # the front view alone is a single-image job, which every model takes
        status, _ = await _post(app, {"views": {"front": b64(FRONT)}})
        assert status == 202
    finally:
        await app.stop()
