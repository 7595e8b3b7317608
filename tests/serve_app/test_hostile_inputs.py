"""Hostile bodies through the in-process agent API (real auth, SQLite, artifacts): each is a 4xx with a
specific code, what is stored holds pixels only, and decoding never stalls the event loop."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import struct
import zlib

import pytest
from PIL import Image

from .conftest import b64, png_bytes, start_api


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code
    assert set(body) == {"type", "code", "message", "retryable", "request_id"}
    return body


def _raw_json(client, path: str, text: str):
    return client.post(path, content=text.encode(), headers={"Content-Type": "application/json"})


def _private_chunk_png(size: int) -> bytes:
    """A 32x32 PNG carrying ``size`` bytes in a private ancillary chunk right after IHDR."""
    body = b"\0" * size
    chunk = struct.pack(">I", size) + b"prVt" + body + struct.pack(">I", zlib.crc32(b"prVt" + body))
    png = png_bytes(size=(32, 32))
    return png[:33] + chunk + png[33:]


def _flat_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (side, side), (200, 30, 30, 255)).save(buf, format="PNG")
    return buf.getvalue()


IMAGE = b64(png_bytes())


# --- images --------------------------------------------------------------------------------------------------


async def test_api_refuses_a_32x32_png_carrying_a_9_mib_private_chunk(paused_api):
    response = await paused_api.client.post("/api/agent/jobs", json={"image": b64(_private_chunk_png(9 * 1024 * 1024))})
    body = _error(response, 422, "image_oversized_encoding")
    assert "at most 2x its raw pixel size (4096 bytes) plus 262144 bytes" in body["message"]
    assert not list(paused_api.service.artifacts.root.glob("inputs/*"))  # nothing stored


async def test_api_refuses_images_with_trailing_data(paused_api):
    response = await paused_api.client.post("/api/agent/jobs", json={"image": b64(png_bytes() + b"hidden" * 1000)})
    assert "6000 bytes after the end of its PNG data" in _error(response, 422, "image_trailing_data")["message"]


async def test_api_refuses_a_jpeg_with_a_huge_app_segment_payload(paused_api):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buf, format="JPEG", icc_profile=b"\1" * 600_000)
    _error(
        await paused_api.client.post("/api/agent/jobs", json={"image": b64(buf.getvalue())}),
        422,
        "image_oversized_encoding",
    )


async def test_api_batch_names_the_refused_item(paused_api):
    items = [{"image": IMAGE}, {"image": b64(png_bytes() + b"x")}]
    response = await paused_api.client.post("/api/agent/batches", json={"items": items})
    assert _error(response, 422, "image_trailing_data")["message"].startswith("'items[1].image' has 1 bytes")


async def test_api_stores_the_image_upright_and_without_metadata(paused_api):
    image = Image.new("RGB", (96, 64), (220, 20, 20))
    image.paste(Image.new("RGB", (48, 64), (20, 20, 220)), (48, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: the viewer rotates it 90 degrees clockwise
    exif[0x010F] = "Camera maker"
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif.tobytes(), icc_profile=b"\2" * 2000, comment=b"at home")
    response = await paused_api.client.post("/api/agent/jobs", json={"image": b64(buf.getvalue())})
    assert response.status_code == 202, response.text
    stored = paused_api.service.artifacts.path(f"inputs/{response.json()['job_id']}.jpg").read_bytes()
    with Image.open(io.BytesIO(stored)) as opened:
        assert (opened.format, opened.size) == ("JPEG", (64, 96))
        assert [marker for marker, _ in opened.applist] == ["APP0"]
        assert not {"exif", "icc_profile", "comment"} & set(opened.info)
        # upright: the left half of the original (red) is now the top half
        assert opened.getpixel((32, 10))[0] > 150 and opened.getpixel((32, 86))[2] > 150


async def test_api_png_uploads_are_stored_as_png(paused_api):
    files = {"image": ("cut-out.png", png_bytes(), "image/png")}
    response = await paused_api.client.post("/api/agent/jobs", files=files)
    assert response.status_code == 202, response.text
    assert paused_api.service.artifacts.path(f"inputs/{response.json()['job_id']}.png").exists()


async def test_api_refuses_a_request_over_its_decode_budget_before_decoding(tmp_path):
    api = await start_api(
        tmp_path, dispatcher=False, limits={"max_image_pixels": 65_536, "max_request_pixels": 100_000}
    )
    try:
        three = [{"image": b64(png_bytes(size=(200, 200)))}] * 3
        body = _error(await api.client.post("/api/agent/batches", json={"items": three}), 413, "decode_budget_exceeded")
        assert body["message"].startswith("the request's 3 image(s) hold 120000 pixels together; at most 100000")
        response = await api.client.post("/api/agent/batches", json={"items": three[:2]})
        assert response.status_code == 202, response.text
    finally:
        await api.stop()


async def test_healthz_answers_while_a_batch_of_large_flat_pngs_decodes(tmp_path):
    # eight flat 4096x4096 PNGs (~75 kB each, 128 Mpx together): seconds of decoding and re-encoding
    api = await start_api(tmp_path, dispatcher=False, limits={"max_request_pixels": 8 * 4096 * 4096})
    try:
        loop = asyncio.get_running_loop()
        items = [{"image": b64(_flat_png(4096)), "seed": seed} for seed in range(8)]
        started = loop.time()
        batch = asyncio.create_task(api.client.post("/api/agent/batches", json={"items": items}))
        answered = [started]  # when each health check came back
        while not batch.done():
            assert (await api.client.get("/healthz")).status_code == 200
            answered.append(loop.time())
            await asyncio.sleep(0.01)
        response = await batch
        elapsed = loop.time() - started
        assert response.status_code == 202, response.text
        # decoded inline, the loop stalls for the whole batch: one gap between answers as long as the batch.
        # In the pool the checks keep coming back (the gap includes the 10 ms pause between them)
        longest_gap = max(later - earlier for earlier, later in itertools.pairwise(answered))
        assert len(answered) > 4, (answered, elapsed)
        assert longest_gap < elapsed / 3, (longest_gap, elapsed)
    finally:
        await api.stop()


# --- JSON ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ('{"image": "' + IMAGE + '", "params": ' + "[" * 100_000 + "]" * 100_000 + "}", "json_too_deep"),
        ("[" * 100_000 + "]" * 100_000, "json_too_deep"),
        ("[" * 100_000, "json_too_deep"),
        ('{"image": "' + IMAGE + '", "params": ' + "[1, " * 100_000 + "1" + "]" * 100_000 + "}", "json_too_deep"),
        # 100k keys are 100k strings: refused for their number before their depth is looked at
        ('{"a": ' * 100_000 + "1" + "}" * 100_000, "json_too_complex"),
        ('{"image": "' + IMAGE + '", "params": [' + "0, " * 100_000 + "0]}", "json_too_complex"),
    ],
)
async def test_api_refuses_deep_or_huge_json_structures_with_400(paused_api, text, code):
    _error(await _raw_json(paused_api.client, "/api/agent/jobs", text), 400, code)
    _error(await _raw_json(paused_api.client, "/api/agent/batches", text), 400, code)


async def test_api_nesting_within_the_limit_reaches_the_field_checks(paused_api):
    text = '{"image": "' + IMAGE + '", "params": ' + "[" * 20 + "]" * 20 + "}"
    _error(await _raw_json(paused_api.client, "/api/agent/jobs", text), 422, "invalid_params")


@pytest.mark.parametrize(
    ("text", "code", "message_part"),
    [
        ('{"image": "IMG", "seed": ' + "9" * 5000 + "}", "invalid_seed", "the job's 'seed' must be an integer"),
        ('{"image": "IMG", "seed": -' + "9" * 5000 + "}", "invalid_seed", "the job's 'seed' must be an integer"),
        ('{"items": [{"image": "IMG", "seed": ' + "1" * 5000 + "}]}", "invalid_seed", "items[0] 'seed'"),
        ('{"image": "IMG", "params": {"max_faces": ' + "7" * 5000 + "}}", "invalid_params", "<an integer of 5000"),
        ('{"image": "IMG", "priority": ' + "5" * 5000 + "}", "invalid_priority", "<an integer of 5000"),
        ('{"image": "IMG", "params": {"guidance_scale": 1e999}}', "invalid_params", "guidance_scale"),
    ],
)
async def test_api_refuses_huge_numbers_naming_the_field(paused_api, text, code, message_part):
    path = "/api/agent/batches" if text.startswith('{"items"') else "/api/agent/jobs"
    body = _error(await _raw_json(paused_api.client, path, text.replace("IMG", IMAGE)), 422, code)
    assert message_part in body["message"]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
async def test_api_refuses_nan_and_infinity_with_400(paused_api, constant):
    text = '{"image": "' + IMAGE + '", "params": {"guidance_scale": ' + constant + "}}"
    body = _error(await _raw_json(paused_api.client, "/api/agent/jobs", text), 400, "invalid_json")
    assert body["message"] == f"{constant} is not a JSON number; send a finite number"


async def test_api_error_messages_do_not_echo_hostile_bodies(paused_api):
    flood = {"image": IMAGE, **{f"field_{index}": 1 for index in range(2_000)}}
    body = _error(await paused_api.client.post("/api/agent/jobs", json=flood), 422, "unknown_field")
    assert "(2000 in all)" in body["message"] and len(body["message"]) < 500
    body = _error(
        await paused_api.client.post("/api/agent/jobs", json={"image": IMAGE, "priority": "p" * 100_000}),
        422,
        "invalid_priority",
    )
    assert "(100000 characters)" in body["message"] and len(body["message"]) < 300


async def test_api_multipart_params_and_seed_are_bounded_too(paused_api):
    files = {"image": ("cat.png", png_bytes(), "image/png")}
    deep = {"params": "[" * 100_000 + "]" * 100_000}
    body = _error(await paused_api.client.post("/api/agent/jobs", files=files, data=deep), 422, "invalid_params")
    assert body["message"].startswith("form field 'params' nests arrays/objects deeper than 32 levels")
    nan = {"params": json.dumps({"guidance_scale": float("nan")})}
    _error(await paused_api.client.post("/api/agent/jobs", files=files, data=nan), 422, "invalid_params")
    long_seed = {"seed": "9" * 5000}
    _error(await paused_api.client.post("/api/agent/jobs", files=files, data=long_seed), 422, "invalid_seed")


async def test_api_checks_the_critical_scope_before_decoding_anything(paused_api):
    # the dev key lacks jobs:critical: refused for that, not for the image it would otherwise have decoded
    body = {"image": b64(_private_chunk_png(1024 * 1024)), "priority": "critical"}
    _error(await paused_api.client.post("/api/agent/jobs", json=body), 403, "scope_denied")
    batch = {"items": [{"image": b64(_flat_png(64))}], "priority": "critical"}
    _error(await paused_api.client.post("/api/agent/batches", json=batch), 403, "scope_denied")
