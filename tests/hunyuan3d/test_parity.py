"""Parity with the official hy3dgen 2.0.2 pipeline on the tiny checkpoints.

References were produced by tests/parity/make_references.py running the OFFICIAL code (fp32, CPU) in its own
environment; see tests/parity/README.md. Tolerances are the issue's: latents within 1e-4, same vertex and
face counts, areas within 1e-4 relative.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deployments.hunyuan3d import GenerationParams

from .conftest import REPO, load_image

FIXTURES = REPO / "tests" / "fixtures" / "parity"
REFERENCES = json.loads((FIXTURES / "references.json").read_text())
ARRAYS = np.load(FIXTURES / "references.npz")
PIPELINES = {"hunyuan3d-dit-v2-0": "tiny_cfg_pipeline", "hunyuan3d-dit-v2-0-fast": "tiny_fast_pipeline"}


def _params(case: dict) -> GenerationParams:
    return GenerationParams(
        num_inference_steps=case["num_inference_steps"],
        guidance_scale=case["guidance_scale"],
        octree_resolution=case["octree_resolution"],
        box_v=case["box_v"],
        mc_level=case["mc_level"],
        num_chunks=case["num_chunks"],
        volume_decoder="dense",  # the official default decoder
    )


@pytest.mark.parametrize("case_id", sorted(REFERENCES["cases"]))
def test_parity_latents_and_mesh_match_official(case_id, request):
    case = REFERENCES["cases"][case_id]
    pipeline = request.getfixturevalue(PIPELINES[case["model_folder"]])
    image, params = load_image(case["image"]), _params(case)

    latents = pipeline.sample_latents([image], [case["seed"]], params)
    expected = torch.from_numpy(ARRAYS[f"{case_id}__latents"])
    torch.testing.assert_close(latents, expected, atol=1e-4, rtol=0)

    mesh = pipeline.extract_surfaces(pipeline.decode_volumes(latents, params), params)[0]
    reference = case["mesh"]
    assert (len(mesh.vertices), len(mesh.faces)) == (reference["num_vertices"], reference["num_faces"])
    assert mesh.area == pytest.approx(reference["area"], rel=1e-4)


@pytest.mark.parametrize("prefix", ["v2-0", "fast"])
def test_parity_stages_match_official(prefix, request):
    """Stage by stage, so a regression names the stage that moved."""
    folder = "hunyuan3d-dit-v2-0" if prefix == "v2-0" else "hunyuan3d-dit-v2-0-fast"
    pipeline = request.getfixturevalue(PIPELINES[folder])
    case_id = f"{prefix}_object_s0_r64"
    pixels = pipeline.preprocess([load_image("object_rgba.png")])
    ours_u8 = ((pixels[0].permute(1, 2, 0) + 1) / 2 * 255).round().numpy()
    np.testing.assert_array_equal(ours_u8, ARRAYS["preprocess_object_rgba__image_u8_hwc"])
    with torch.inference_mode():
        cond = pipeline.conditioner(pixels)
    torch.testing.assert_close(cond, torch.from_numpy(ARRAYS[f"{case_id}__cond_main"]), atol=1e-5, rtol=0)
    noise = pipeline.initial_noise([0])
    torch.testing.assert_close(noise, torch.from_numpy(ARRAYS[f"{case_id}__initial_noise"]), atol=0, rtol=0)


@pytest.mark.parametrize("prefix", ["v2-0", "fast"])
def test_parity_dense_grid_logits_match_official(prefix, request):
    folder = "hunyuan3d-dit-v2-0" if prefix == "v2-0" else "hunyuan3d-dit-v2-0-fast"
    pipeline = request.getfixturevalue(PIPELINES[folder])
    case_id = f"{prefix}_object_s0_r32"
    params = _params(REFERENCES["cases"][case_id])
    latents = torch.from_numpy(ARRAYS[f"{case_id}__latents"])
    grid = pipeline.decode_volumes(latents, params)[0].dense()
    expected = torch.from_numpy(ARRAYS[f"{case_id}__grid_logits"])
    torch.testing.assert_close(grid, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("model_key", ["v2-0", "fast"])
def test_parity_batched_latents_match_official_batched_call(model_key, request):
    reference = REFERENCES["batched"][model_key]
    pipeline = request.getfixturevalue(PIPELINES[reference["model_folder"]])
    params = _params(reference)
    images = [load_image(name) for name in reference["images"]]
    latents = pipeline.sample_latents(images, reference["seeds"], params)
    expected = torch.from_numpy(ARRAYS[f"{reference['id']}__latents"])
    torch.testing.assert_close(latents, expected, atol=1e-4, rtol=0)
