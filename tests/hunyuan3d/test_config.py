from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from deployments.hunyuan3d.config import NAMED_CONFIGS, ShapeModelConfig, UnsupportedModelError, named_config
from deployments.hunyuan3d.dit import Hunyuan3DDiT
from deployments.hunyuan3d.vae import ShapeVAEDecoder


def _released_v2_0() -> dict:
    return named_config("hunyuan3d-dit-v2-0").to_dict()


def test_config_round_trips_through_released_dict():
    for name, config in NAMED_CONFIGS.items():
        assert ShapeModelConfig.from_dict(config.to_dict(), name=name) == config


def test_config_maps_any_hy3dgen_target_path_by_class_name():
    raw = _released_v2_0()
    raw["model"]["target"] = "hy3dgen.shapegen.models.denoisers.hunyuan3ddit.Hunyuan3DDiT"
    assert ShapeModelConfig.from_dict(raw).dit.depth == 16


def test_config_rejects_unknown_image_encoders_naming_them():
    raw = _released_v2_0()
    raw["conditioner"]["params"]["main_image_encoder"]["type"] = "CLIPImageEncoder"
    with pytest.raises(UnsupportedModelError, match="'CLIPImageEncoder'"):
        ShapeModelConfig.from_dict(raw)


def test_config_rejects_unknown_image_processors_naming_them():
    raw = _released_v2_0()
    raw["image_processor"]["target"] = "hy3dgen.shapegen.preprocessors.ImageProcessorV3"
    with pytest.raises(UnsupportedModelError, match="'ImageProcessorV3'"):
        ShapeModelConfig.from_dict(raw)


def test_config_rejects_unknown_parameters_naming_them():
    raw = _released_v2_0()
    raw["vae"]["params"]["mystery_knob"] = 3
    with pytest.raises(ValueError, match="mystery_knob"):
        ShapeModelConfig.from_dict(raw)


def test_config_rejects_missing_sections():
    raw = _released_v2_0()
    del raw["vae"]
    with pytest.raises(ValueError, match="'vae' section"):
        ShapeModelConfig.from_dict(raw)


def test_config_rejects_inconsistent_widths():
    raw = copy.deepcopy(_released_v2_0())
    raw["model"]["params"]["in_channels"] = 32
    with pytest.raises(ValueError, match="embed_dim"):
        ShapeModelConfig.from_dict(raw)


def test_config_parses_turbo_scheduler_and_vae():
    turbo = named_config("hunyuan3d-dit-v2-0-turbo")
    parsed = ShapeModelConfig.from_dict(turbo.to_dict())
    assert parsed.scheduler.kind == "consistency_flow_match_euler"
    assert parsed.vae.geo_width == 512 and not parsed.vae.geo_decoder_ln_post
    assert not parsed.uses_cfg


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("variant", "dit_params"),
    [("hunyuan3d-dit-v2-0", 1_113_274_432), ("hunyuan3d-dit-v2-mini", 559_196_224)],
)
def test_real_size_dit_has_the_published_parameter_count(variant, dit_params):
    with torch.device("meta"):
        dit = Hunyuan3DDiT(named_config(variant).dit)
    assert _count(dit) == dit_params


def test_real_size_vae_decoder_has_214m_parameters():
    with torch.device("meta"):
        vae = ShapeVAEDecoder(named_config("hunyuan3d-dit-v2-0").vae)
    assert _count(vae) == 214_212_865


def test_named_config_unknown_variant_lists_known_ones():
    with pytest.raises(ValueError, match="hunyuan3d-dit-v2-0"):
        named_config("hunyuan3d-dit-v9")


def test_named_mini_variants_share_the_mini_networks():
    mini, fast, turbo = (named_config(f"hunyuan3d-dit-v2-mini{suffix}") for suffix in ("", "-fast", "-turbo"))
    for variant in (fast, turbo):
        assert variant.dit == replace(mini.dit, guidance_embed=True)
        assert variant.vae == mini.vae  # a -turbo DiT folder carries the standard VAE
    assert mini.uses_cfg and not fast.uses_cfg and not turbo.uses_cfg
    assert (mini.vae.num_latents, mini.dit.depth, mini.dit.depth_single_blocks) == (512, 8, 16)


def test_named_mini_turbo_conditions_at_1022_px_without_border():
    turbo = named_config("hunyuan3d-dit-v2-mini-turbo")
    assert (turbo.conditioner.image_size, turbo.conditioner.num_tokens) == (1022, 5330)
    assert turbo.conditioner.dinov2["image_size"] == 518  # DINOv2-giant's embeddings, interpolated to 73 x 73
    assert turbo.image_processor.border_ratio == 0.0
    assert (turbo.scheduler.kind, turbo.scheduler.pcm_timesteps) == ("consistency_flow_match_euler", 100)
    parsed = ShapeModelConfig.from_dict(turbo.to_dict())
    assert (parsed.conditioner.image_size, parsed.image_processor.border_ratio) == (1022, 0.0)
    assert parsed.scheduler.pcm_timesteps == 100
