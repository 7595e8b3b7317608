"""Hunyuan3D-2mv (named views) against the official MVImageProcessorV2 + DinoImageEncoderMV.

References: tests/parity/make_tiny_mv.py ran the OFFICIAL hy3dgen 2.0.2 multiview path (fp32, CPU) on the tiny
2mv checkpoint; see tests/parity/README.md. Tolerances: tokens 1e-5, latents 1e-4, the same mesh.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deployments.hunyuan3d import GenerationParams, ShapeModelConfig, ShapePipeline, named_config
from deployments.hunyuan3d.multiview import ViewPixels, order_views, sincos_view_embedding

from .conftest import REPO, TINY_MODELS, load_image

FIXTURES = REPO / "tests" / "fixtures" / "parity"
REFERENCES = json.loads((FIXTURES / "references_mv.json").read_text())
ARRAYS = np.load(FIXTURES / "references_mv.npz")
TINY_MV = TINY_MODELS / "hunyuan3d-dit-v2-mv"
VIEW_SETS = {
    "front_back": {"back": "plain_rgb.png", "front": "object_rgba.png"},
    "front_left_right": {"right": "object_rgba.png", "front": "object_rgba.png", "left": "soft_rgba.png"},
    "all4": {"front": "object_rgba.png", "left": "soft_rgba.png", "back": "plain_rgb.png", "right": "object_rgba.png"},
    "all4_other_images": {
        "left": "object_rgba.png",
        "right": "plain_rgb.png",
        "back": "object_rgba.png",
        "front": "soft_rgba.png",
    },
}


@pytest.fixture(scope="module")
def mv_pipeline() -> ShapePipeline:
    return ShapePipeline.from_pretrained(TINY_MV)


def views_of(name: str) -> dict:
    # the fixture's names are the ones the script used: a drift between the two would void the comparison
    recorded = REFERENCES["conditioner"].get(name, {}).get("views")
    assert recorded is None or recorded == VIEW_SETS[name]
    return {view: load_image(image) for view, image in VIEW_SETS[name].items()}


def reference_params(case: dict) -> GenerationParams:
    return GenerationParams(
        num_inference_steps=case["num_inference_steps"],
        guidance_scale=case["guidance_scale"],
        octree_resolution=case.get("octree_resolution", 32),
        box_v=case["box_v"],
        mc_level=case["mc_level"],
        num_chunks=case["num_chunks"],
        volume_decoder="dense",
    )


# --- config ---------------------------------------------------------------------------------------------


def test_multiview_config_of_the_tiny_folder_takes_all_four_views():
    config = ShapeModelConfig.from_yaml(TINY_MV / "config.yaml")
    assert config.view_names == ("front", "left", "back", "right")
    assert (config.conditioner.view_num, config.image_processor.multiview) == (4, True)
    assert ShapeModelConfig.from_dict(config.to_dict(), name=config.name) == config


@pytest.mark.parametrize("suffix", ["", "-fast", "-turbo"])
def test_multiview_named_configs_are_v2_0_with_the_multiview_conditioner(suffix):
    mv, v2_0 = named_config(f"hunyuan3d-dit-v2-mv{suffix}"), named_config(f"hunyuan3d-dit-v2-0{suffix}")
    assert (mv.dit, mv.vae, mv.scheduler) == (v2_0.dit, v2_0.vae, v2_0.scheduler)
    assert mv.view_names == ("front", "left", "back", "right") and v2_0.view_names == ("front",)


def test_multiview_config_refuses_a_processor_without_its_encoder():
    raw = named_config("hunyuan3d-dit-v2-mv").to_dict()
    raw["image_processor"]["target"] = "hy3dgen.shapegen.preprocessors.ImageProcessorV2"
    with pytest.raises(ValueError, match="go together"):
        ShapeModelConfig.from_dict(raw)


# --- views ----------------------------------------------------------------------------------------------


def test_order_views_sorts_by_the_official_index():
    assert order_views(["right", "back", "front"]) == ("front", "back", "right")


@pytest.mark.parametrize(
    ("names", "message"),
    [(["left"], "needs the 'front' view"), (["front", "top"], "unknown view 'top'"), (["front", "front"], "twice")],
)
def test_order_views_refuses_bad_view_sets(names, message):
    with pytest.raises(ValueError, match=message):
        order_views(names)


def test_sincos_view_embedding_is_sin_then_cos_of_the_view_index():
    table = sincos_view_embedding(8, 4)
    assert table.shape == (4, 8)
    torch.testing.assert_close(table[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    omega = 1 / 10_000 ** (torch.arange(4, dtype=torch.float64) / 4)
    torch.testing.assert_close(table[2], torch.cat([torch.sin(2 * omega), torch.cos(2 * omega)]).float())


# --- parity with the official multiview path ------------------------------------------------------------


@pytest.mark.parametrize("name", ["front_back", "front_left_right", "all4"])
def test_multiview_conditioner_tokens_match_official(mv_pipeline, name):
    reference = REFERENCES["conditioner"][name]
    pixels = mv_pipeline.preprocess_views([views_of(name)])
    assert list(pixels.view_indices) == reference["view_idxs"][0]
    with torch.inference_mode():
        tokens = mv_pipeline.conditioner(pixels.pixels, pixels.view_indices)
    assert list(tokens.shape) == reference["tokens"]["shape"]
    per_view = tokens.view(1, len(pixels.views), -1, tokens.shape[-1])
    stride = reference["token_stride"]
    expected = torch.from_numpy(ARRAYS[f"mv_{name}__tokens_strided"])
    torch.testing.assert_close(per_view[:, :, ::stride], expected, atol=1e-5, rtol=0)
    sums = per_view.double().sum(dim=(2, 3))
    torch.testing.assert_close(sums, torch.from_numpy(ARRAYS[f"mv_{name}__tokens_view_sums"]), atol=0.05, rtol=1e-6)
    uncond = mv_pipeline.conditioner.unconditional(1, len(pixels.views))
    assert list(uncond.shape) == reference["uncond_shape"] and not uncond.any()


def test_multiview_latents_and_mesh_match_official(mv_pipeline):
    case = REFERENCES["latents"]
    params = reference_params(case)
    latents = mv_pipeline.sample_latents([views_of(case["view_set"])], [case["seed"]], params)
    torch.testing.assert_close(latents, torch.from_numpy(ARRAYS["mv_latents"]), atol=1e-4, rtol=0)

    mesh = mv_pipeline.extract_surfaces(mv_pipeline.decode_volumes(latents, params), params)[0]
    np.testing.assert_array_equal(np.asarray(mesh.faces), ARRAYS["mv_mesh_faces"])
    np.testing.assert_allclose(np.asarray(mesh.vertices), ARRAYS["mv_mesh_vertices"], atol=1e-5, rtol=0)
    assert mesh.area == pytest.approx(case["mesh"]["area"], rel=1e-5)


def test_multiview_batched_latents_match_official_batched_call(mv_pipeline):
    reference = REFERENCES["batched"]
    jobs = [views_of(job["view_set"]) for job in reference["jobs"]]
    latents = mv_pipeline.sample_latents(jobs, [job["seed"] for job in reference["jobs"]], reference_params(reference))
    torch.testing.assert_close(latents, torch.from_numpy(ARRAYS["mv_batch2_latents"]), atol=1e-4, rtol=0)


# --- batching and refusals ------------------------------------------------------------------------------

FAST = GenerationParams(num_inference_steps=3, octree_resolution=32, volume_decoder="dense")


def test_multiview_batch_of_two_with_one_view_set_equals_sequential(mv_pipeline):
    jobs = [views_of("front_back"), {"front": load_image("soft_rgba.png"), "back": load_image("object_rgba.png")}]
    together = mv_pipeline.sample_latents(jobs, [5, 6], FAST)
    alone = torch.cat([mv_pipeline.sample_latents([job], [seed], FAST) for job, seed in zip(jobs, [5, 6], strict=True)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    assert (together[0] - together[1]).abs().max() > 1e-2  # the two jobs really differ


def test_multiview_different_view_sets_are_refused_in_one_call(mv_pipeline):
    with pytest.raises(ValueError, match="same view set"):
        mv_pipeline.preprocess_views([views_of("front_back"), views_of("front_left_right")])
    with pytest.raises(ValueError, match="same view set"):
        ViewPixels.cat(
            [
                ViewPixels(torch.zeros(1, 1, 3, 8, 8), ("front",)),
                ViewPixels(torch.zeros(1, 2, 3, 8, 8), ("front", "back")),
            ]
        )


def test_multiview_preprocess_names_the_job_and_view_with_nothing_visible(mv_pipeline):
    from PIL import Image

    empty = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    with pytest.raises(ValueError, match=r"job 1: view 'back': .*transparent"):
        mv_pipeline.preprocess_views([views_of("front_back"), {"front": load_image("object_rgba.png"), "back": empty}])


def test_multiview_a_plain_image_is_the_front_view_alone(mv_pipeline):
    image = load_image("object_rgba.png")
    plain = mv_pipeline.sample_latents([image], [3], FAST)
    front_only = mv_pipeline.sample_latents([{"front": image}], [3], FAST)
    torch.testing.assert_close(plain, front_only, atol=0, rtol=0)


def test_single_image_model_refuses_other_views(tiny_cfg_pipeline):
    with pytest.raises(ValueError, match="hunyuan3d-dit-v2-0 takes only the front view"):
        tiny_cfg_pipeline.preprocess_views([views_of("front_back")])


def test_single_image_model_given_front_only_views_is_unchanged(tiny_cfg_pipeline):
    image = load_image("object_rgba.png")
    views = tiny_cfg_pipeline.preprocess_views([{"front": image}])
    plain = tiny_cfg_pipeline.preprocess([image])
    assert torch.equal(views.pixels[:, 0], plain)
    torch.testing.assert_close(
        tiny_cfg_pipeline.sample(views, [2], FAST), tiny_cfg_pipeline.sample(plain, [2], FAST), atol=0, rtol=0
    )


def test_multiview_one_token_uncond_equals_v_times_t_zero_tokens(mv_pipeline):
    """CFG runs the unconditional context as ONE zero token standing for V x T: exact for V views too."""
    torch.manual_seed(0)
    dit = mv_pipeline.dit
    views, tokens, width = 4, mv_pipeline.config.conditioner.num_tokens, mv_pipeline.config.conditioner.hidden_size
    full = mv_pipeline.conditioner.unconditional(2, views)
    assert full.shape == (2, views * tokens, width)
    x = torch.randn(2, mv_pipeline.config.vae.num_latents, mv_pipeline.config.vae.embed_dim)
    t = torch.tensor([0.25, 0.75])
    with torch.inference_mode():
        expected = dit(x, t, full)
        one_token = dit(x, t, full[:, :1], cond_copies=views * tokens)
    torch.testing.assert_close(one_token, expected, atol=1e-5, rtol=1e-5)
