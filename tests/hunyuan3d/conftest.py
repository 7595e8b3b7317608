from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from deployments.hunyuan3d import ShapePipeline

REPO = Path(__file__).resolve().parents[2]
TINY_MODELS = REPO / "configs" / "models" / "tiny-Hunyuan3D-2"
IMAGES = REPO / "tests" / "fixtures" / "images"


@pytest.fixture(scope="session")
def tiny_cfg_pipeline() -> ShapePipeline:
    """The tiny CFG checkpoint (hunyuan3d-dit-v2-0 layout), fp32 on CPU."""
    return ShapePipeline.from_pretrained(TINY_MODELS / "hunyuan3d-dit-v2-0")


@pytest.fixture(scope="session")
def tiny_fast_pipeline() -> ShapePipeline:
    """The tiny guidance-distilled checkpoint (hunyuan3d-dit-v2-0-fast layout)."""
    return ShapePipeline.from_pretrained(TINY_MODELS / "hunyuan3d-dit-v2-0-fast")


def load_image(name: str) -> Image.Image:
    with Image.open(IMAGES / name) as image:
        image.load()
        return image.copy()


@pytest.fixture(scope="session")
def test_images() -> list[Image.Image]:
    return [load_image(name) for name in ("object_rgba.png", "plain_rgb.png", "soft_rgba.png")]
