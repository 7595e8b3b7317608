from __future__ import annotations

import pytest

from deployments.hunyuan3d.params import GenerationParams


def test_params_defaults_are_valid():
    params = GenerationParams()
    assert params.box_v == 1.01 and params.mc_level == 0.0 and params.volume_decoder == "hierarchical"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_inference_steps", 0, "num_inference_steps must be between 1 and 200"),
        ("num_inference_steps", 2.5, "num_inference_steps must be an integer"),
        ("num_inference_steps", True, "num_inference_steps must be an integer"),
        ("octree_resolution", 8, "octree_resolution must be between 16 and 512"),
        ("guidance_scale", float("nan"), "guidance_scale must be a finite number"),
        ("guidance_scale", -1.0, "guidance_scale must be between"),
        ("box_v", 5.0, "box_v must be between"),
        ("volume_decoder", "flashvdm", "volume_decoder must be one of"),
        ("num_chunks", 10, "num_chunks must be between"),
    ],
)
def test_params_reject_bad_values_with_the_reason(field, value, message):
    with pytest.raises(ValueError, match=message):
        GenerationParams(**{field: value})


def test_params_from_dict_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"unknown generation parameter\(s\) \['steps'\]"):
        GenerationParams.from_dict({"steps": 5})


def test_params_from_dict_round_trips():
    params = GenerationParams(num_inference_steps=5, octree_resolution=64, volume_decoder="dense")
    assert GenerationParams.from_dict(params.to_dict()) == params
