"""Hostile inputs over real HTTP through Ray Serve's proxy to the AgentIngress replica: refused with the same
codes as in-process, and health checks keep answering while a batch of large images decodes."""

from __future__ import annotations

import io
import itertools
import threading
import time
from collections.abc import Iterator

import pytest
from PIL import Image

from tests.integration.conftest import APP_NAME, LiveApp, deploy

from .conftest import b64, png_bytes
from .test_hostile_inputs import _flat_png, _private_chunk_png

pytestmark = [pytest.mark.ray, pytest.mark.slow]

IMAGE = b64(png_bytes())


@pytest.fixture(scope="module")
def hostile_app(ray_session: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    from ray import serve

    # jobs stay queued (no model work competes for the CPU); room in the decode budget for the big batch
    app = deploy(
        ray_session,
        tmp_path_factory.mktemp("orfeas-hostile"),
        jobs={"dispatch": False},
        limits={"max_request_pixels": 8 * 4096 * 4096},
    )
    try:
        yield app
    finally:
        serve.delete(APP_NAME)


def _code(response) -> tuple[int, str]:
    assert response.headers["x-request-id"] == response.json()["request_id"]
    return response.status_code, response.json()["code"]


def test_proxy_refuses_hostile_images_and_json_with_4xx(hostile_app):
    deep = '{"image": "' + IMAGE + '", "params": ' + "[" * 100_000 + "]" * 100_000 + "}"
    long_seed = '{"image": "' + IMAGE + '", "seed": ' + "9" * 5000 + "}"
    json_type = {"Content-Type": "application/json"}
    with hostile_app.client() as client:
        chunked = client.post("/api/agent/jobs", json={"image": b64(_private_chunk_png(9 * 1024 * 1024))})
        assert _code(chunked) == (422, "image_oversized_encoding")
        trailing = client.post("/api/agent/jobs", json={"image": b64(png_bytes() + b"hidden")})
        assert _code(trailing) == (422, "image_trailing_data")
        assert _code(client.post("/api/agent/jobs", content=deep.encode(), headers=json_type)) == (400, "json_too_deep")
        assert _code(client.post("/api/agent/jobs", content=long_seed.encode(), headers=json_type)) == (
            422,
            "invalid_seed",
        )


def test_proxy_stores_images_upright_without_metadata(hostile_app):
    exif = Image.Exif()
    exif[0x0112] = 8  # stored turned: the viewer rotates it 90 degrees counter-clockwise
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (30, 160, 40)).save(buf, format="JPEG", exif=exif.tobytes(), comment=b"at home")
    with hostile_app.client() as client:
        response = client.post("/api/agent/jobs", json={"image": b64(buf.getvalue())})
    assert response.status_code == 202, response.text
    stored = hostile_app.config.artifacts_dir / "inputs" / f"{response.json()['job_id']}.jpg"
    with Image.open(stored) as opened:
        assert opened.size == (64, 96)
        assert not {"exif", "comment", "icc_profile"} & set(opened.info)


def test_proxy_healthz_answers_while_a_batch_of_large_flat_pngs_decodes(hostile_app):
    items = [{"image": b64(_flat_png(4096)), "seed": seed} for seed in range(8)]
    outcome: dict = {}

    def submit() -> None:
        with hostile_app.client() as client:
            outcome["response"] = client.post("/api/agent/batches", json={"items": items})

    sender = threading.Thread(target=submit)
    started = time.monotonic()
    sender.start()
    answered = [started]
    with hostile_app.client() as client:
        while sender.is_alive():
            assert client.get("/healthz").status_code == 200
            answered.append(time.monotonic())
            time.sleep(0.02)
    sender.join()
    elapsed = time.monotonic() - started
    assert outcome["response"].status_code == 202, outcome["response"].text
    # decoded inline, the replica's loop (health checks included) stalls for the whole batch
    longest_gap = max(later - earlier for earlier, later in itertools.pairwise(answered))
    assert len(answered) > 4, (answered, elapsed)
    assert longest_gap < elapsed / 3, (longest_gap, elapsed)
