"""DINOv2 position embeddings at encoder sizes other than 518 px: both transformers rules, exactly.

The default ("size") is what transformers >= 4.45 and 5 compute (and the official code runs: its parity is in
test_parity_numerics.py); "scale_factor" is checked against transformers 4.44.2 itself
(tests/parity/make_legacy_interpolation_reference.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from deployments.hunyuan3d import ShapeModelConfig, ShapePipeline
from deployments.hunyuan3d.conditioner import ImageConditioner
from deployments.hunyuan3d.config import ConditionerConfig
from tests.parity.make_legacy_interpolation_reference import SIZES, TOKEN_STRIDE, pattern

REPO = Path(__file__).resolve().parents[2]
MINI = REPO / "configs" / "models" / "tiny-Hunyuan3D-2" / "hunyuan3d-dit-v2-mini-turbo"
REFERENCE = np.load(REPO / "tests" / "fixtures" / "parity" / "legacy_interpolation.npz")


@pytest.fixture(scope="module")
def pipelines() -> dict[str, ShapePipeline]:
    return {
        rule: ShapePipeline.from_pretrained(MINI, position_interpolation=rule)  # type: ignore[arg-type]
        for rule in ("size", "scale_factor")
    }


def _tokens(pipeline: ShapePipeline, size: int) -> torch.Tensor:
    with torch.inference_mode():
        return pipeline.conditioner.model(pixel_values=pattern(size)).last_hidden_state[0]


@pytest.mark.parametrize("size", SIZES)
def test_scale_factor_rule_equals_transformers_4_44(pipelines: dict[str, ShapePipeline], size: int) -> None:
    assert str(REFERENCE["transformers_version"]).startswith("4.44")
    tokens = _tokens(pipelines["scale_factor"], size)
    np.testing.assert_allclose(tokens[::TOKEN_STRIDE].numpy(), REFERENCE[f"tokens_{size}"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(tokens.double().sum(dim=0).numpy(), REFERENCE[f"sums_{size}"], rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("size", SIZES)
def test_the_default_rule_is_not_the_old_one(pipelines: dict[str, ShapePipeline], size: int) -> None:
    """The reference can tell the two rules apart: the default (transformers >= 4.45) differs from it."""
    tokens = _tokens(pipelines["size"], size)
    assert np.abs(tokens[::TOKEN_STRIDE].numpy() - REFERENCE[f"tokens_{size}"]).max() > 1e-3


def test_both_rules_agree_at_the_trained_size(pipelines: dict[str, ShapePipeline]) -> None:
    np.testing.assert_array_equal(_tokens(pipelines["size"], 518).numpy(), _tokens(pipelines["scale_factor"], 518))


def test_the_rule_is_a_config_choice_validated_by_name() -> None:
    config = ShapeModelConfig.from_yaml(MINI / "config.yaml")
    assert config.conditioner.position_interpolation == "size"
    with pytest.raises(ValueError, match="position_interpolation must be one of"):
        replace(config.conditioner, position_interpolation="nearest")  # type: ignore[arg-type]
    legacy = ImageConditioner(replace(config.conditioner, position_interpolation="scale_factor"))
    assert "interpolate_pos_encoding" in vars(legacy.model.embeddings)  # shadowed on this instance only
    assert "interpolate_pos_encoding" not in vars(
        ImageConditioner(ConditionerConfig(dinov2=dict(config.conditioner.dinov2))).model.embeddings
    )


def test_generator_config_passes_the_rule_to_the_pipeline() -> None:
    from deployments.generator_config import GeneratorConfig
    from deployments.shape_generator import load_pipeline

    pipeline = load_pipeline(
        GeneratorConfig(model=str(MINI), device="cpu", position_embedding_interpolation="scale_factor", warmup=False)
    )
    assert pipeline.config.conditioner.position_interpolation == "scale_factor"
