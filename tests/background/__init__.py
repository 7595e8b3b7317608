"""Background removal tests: the studio photos with their true masks, and the tiny ONNX model's script.

The photos are made by ``tests/fixtures/studio/make_studio_photos.py``; the model by
``configs/models/tiny-salient/make_tiny_salient_onnx.py`` (both committed with their outputs).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
STUDIO = REPO / "tests" / "fixtures" / "studio"
TINY_SALIENT = REPO / "configs" / "models" / "tiny-salient"
TINY_MODEL = TINY_SALIENT / "u2net-signature.onnx"
TINY_MODEL_RELATIVE = "configs/models/tiny-salient/u2net-signature.onnx"
IMAGES = REPO / "tests" / "fixtures" / "images"

STUDIO_PHOTOS = sorted(path.name.removesuffix(".mask.png") for path in STUDIO.glob("*.mask.png"))


def photo_path(name: str) -> Path:
    return next(path for path in (STUDIO / f"{name}.png", STUDIO / f"{name}.jpg") if path.exists())


def load_photo(name: str) -> Image.Image:
    with Image.open(photo_path(name)) as image:
        return image.copy()


def true_mask(name: str) -> np.ndarray:
    return np.asarray(Image.open(STUDIO / f"{name}.mask.png")) > 127


def iou(mask: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of a soft mask (thresholded at 0.5) and a boolean truth."""
    predicted = mask >= 0.5
    return float((predicted & truth).sum() / max((predicted | truth).sum(), 1))


def load_script(path: Path) -> ModuleType:
    """A committed generator script as a module (its folder is not a package)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


def studio_script() -> ModuleType:
    return load_script(STUDIO / "make_studio_photos.py")


def tiny_model_script() -> ModuleType:
    return load_script(TINY_SALIENT / "make_tiny_salient_onnx.py")
