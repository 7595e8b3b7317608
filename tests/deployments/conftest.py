"""Shared pieces of the ShapeGenerator tests: real PNG bytes, small generation params, the tiny model."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import trimesh
from PIL import Image, ImageDraw

from deployments.contract import GenerationResult
from deployments.hunyuan3d import GenerationParams, ShapePipeline
from deployments.mesh_io import load_mesh

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = REPO / "configs" / "models" / "tiny-Hunyuan3D-2" / "hunyuan3d-dit-v2-0"
FIXTURE_IMAGES = REPO / "tests" / "fixtures" / "images"

# The smallest job that still runs every stage: a few ms of DiT per item on the tiny model.
FAST = GenerationParams(num_inference_steps=2, octree_resolution=32, volume_decoder="dense")
FAST_DICT = FAST.to_dict()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def object_png(shift: int = 0) -> bytes:
    """A cut-out object on transparency; ``shift`` moves it, so images differ."""
    image = Image.new("RGBA", (128, 128), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((20 + shift, 16, 100 + shift, 112), fill=(200, 90 + shift, 40, 255))
    return png_bytes(image)


def transparent_png() -> bytes:
    """Decodes fine but has nothing to reconstruct: the pipeline's preprocessing rejects it."""
    return png_bytes(Image.new("RGBA", (64, 64), (0, 0, 0, 0)))


def mesh_of(result: GenerationResult) -> trimesh.Trimesh:
    """The mesh a result carries, read back from its GLB bytes."""
    return load_mesh(result.glb, "glb")


def fixture_png(name: str) -> bytes:
    return (FIXTURE_IMAGES / name).read_bytes()


@pytest.fixture(scope="session")
def tiny_pipeline() -> ShapePipeline:
    return ShapePipeline.from_pretrained(TINY_MODEL)
