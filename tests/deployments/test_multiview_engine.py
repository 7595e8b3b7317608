"""Multiview jobs in the replica: the view set splits passes, single-image models refuse views alone, and an
mv job runs end to end through the engine on the tiny 2mv checkpoint."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from deployments.background import BackgroundConfig, make_remover
from deployments.batching import batch_key
from deployments.contract import GenerationRequest, GenerationResult
from deployments.engine import GenerationEngine, Queued
from deployments.hunyuan3d import ShapePipeline
from deployments.image_input import decode_image
from deployments.metrics import GeneratorMetrics

from .conftest import FAST, REPO, fixture_png, mesh_of, object_png, png_bytes, transparent_png

TINY_MV = REPO / "configs" / "models" / "tiny-Hunyuan3D-2" / "hunyuan3d-dit-v2-mv"


@pytest.fixture(scope="module")
def mv_pipeline() -> ShapePipeline:
    return ShapePipeline.from_pretrained(TINY_MV)


def queued(image: bytes, seed: int, views: dict[str, bytes] | None = None, **options: str) -> Queued:
    request = GenerationRequest(image, seed=seed, params=FAST, job_id=f"job-{seed}", views=views or {}, **options)  # type: ignore[arg-type]
    return Queued(request, time.monotonic())


def engine_for(pipeline: ShapePipeline, remover: object = None) -> GenerationEngine:
    return GenerationEngine(pipeline, GeneratorMetrics(), remover=remover)  # type: ignore[arg-type]


def codes(outcomes: list) -> list[str]:
    return ["ok" if isinstance(o, GenerationResult) else o.code.value for o in outcomes]


def test_batch_key_splits_requests_by_view_set():
    front = GenerationRequest(object_png(), params=FAST)
    back = GenerationRequest(object_png(), params=FAST, views={"back": object_png(3)})
    other_back = GenerationRequest(object_png(7), seed=9, params=FAST, views={"back": object_png()})
    left = GenerationRequest(object_png(), params=FAST, views={"left": object_png(3)})
    assert batch_key(back) == batch_key(other_back)  # images and seeds are per item
    assert len({batch_key(front), batch_key(back), batch_key(left)}) == 3


async def test_engine_views_on_a_single_image_model_fail_alone(tiny_pipeline: ShapePipeline):
    engine = engine_for(tiny_pipeline)
    outcomes = await engine.run_batch(
        [queued(object_png(), 1), queued(object_png(), 2, {"back": object_png(4)}), queued(object_png(5), 3)]
    )
    assert codes(outcomes) == ["ok", "invalid_request", "ok"]
    assert outcomes[1].job_id == "job-2"
    assert "model hunyuan3d-dit-v2-0 takes only the front view" in outcomes[1].message
    assert [(p.size, p.job_ids) for p in engine.passes] == [(2, ["job-1", "job-3"])]


async def test_engine_multiview_job_end_to_end_matches_the_pipeline(mv_pipeline: ShapePipeline):
    engine = engine_for(mv_pipeline)
    views = {"back": fixture_png("plain_rgb.png"), "left": fixture_png("soft_rgba.png")}
    front = fixture_png("object_rgba.png")
    [result] = await engine.run_batch([queued(front, 4, views)])
    assert isinstance(result, GenerationResult) and result.batch_size == 1

    # the same job straight through the pipeline: the engine adds decoding, nothing to the model's input
    decoded = {name: decode_image(data) for name, data in {"front": front, **views}.items()}
    [expected] = mv_pipeline.generate_shape_batch([decoded], [4], FAST)
    mesh = mesh_of(result)
    assert mesh.faces.shape == expected.faces.shape
    assert np.abs(np.sort(mesh.vertices, axis=0) - np.sort(expected.vertices, axis=0)).max() < 1e-4


async def test_engine_multiview_batch_splits_by_view_set_and_bad_views_fail_alone(mv_pipeline: ShapePipeline):
    engine = engine_for(mv_pipeline)
    items = [
        queued(object_png(), 1, {"back": object_png(3)}),
        queued(object_png(), 2),  # front only: its own pass
        queued(object_png(6), 3, {"back": object_png(2)}),
        queued(object_png(), 4, {"back": transparent_png()}),
        queued(object_png(), 5, {"left": b"not an image"}),
    ]
    outcomes = await engine.run_batch(items)
    assert codes(outcomes) == ["ok", "ok", "ok", "invalid_image", "invalid_image"]
    assert "view 'back'" in outcomes[3].message and "transparent" in outcomes[3].message
    assert "view 'left'" in outcomes[4].message
    assert [(p.size, p.job_ids) for p in engine.passes] == [(2, ["job-1", "job-3"]), (1, ["job-2"])]
    assert [o.batch_size for o in outcomes[:3]] == [2, 1, 2]


async def test_engine_removes_the_background_of_every_view(mv_pipeline: ShapePipeline):
    engine = engine_for(mv_pipeline, remover=make_remover(BackgroundConfig()))
    blank = png_bytes(Image.new("RGB", (96, 96), (250, 250, 250)))  # a backdrop with nothing on it
    outcomes = await engine.run_batch(
        [
            queued(object_png(), 1, {"right": fixture_png("plain_rgb.png")}),
            queued(object_png(), 2, {"right": blank}, remove_background="always"),
        ]
    )
    assert codes(outcomes) == ["ok", "no_foreground"]
    assert outcomes[1].message.startswith("view 'right': background removal")
    assert "background_removal" in outcomes[0].timings
