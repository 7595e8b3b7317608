"""Image preprocessing identical to the official ``ImageProcessorV2`` (cv2 resizes, white background).

RGBA input: the alpha channel is the object mask. RGB/greyscale input: the whole image is foreground.
No background removal happens here; agents send cut-out images (or accept a full-frame object).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .config import ImageProcessorConfig


class EmptyImageError(ValueError):
    """The alpha mask has no (or a degenerate) foreground region."""


def recenter(rgba: np.ndarray, border_ratio: float) -> np.ndarray:
    """(H, W, 4) uint8 -> (S, S, 3) uint8, S = max(H, W): object scaled into the centre, composited on white."""
    mask = rgba[..., 3]
    size = max(rgba.shape[:2])
    result = np.zeros((size, size, 4), dtype=np.uint8)

    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise EmptyImageError("the image is fully transparent: nothing to reconstruct")
    x_min, x_max, y_min, y_max = rows.min(), rows.max(), cols.min(), cols.max()
    h, w = x_max - x_min, y_max - y_min
    if h == 0 or w == 0:
        raise EmptyImageError("the visible object is a single row or column of pixels: nothing to reconstruct")
    # the official code crops [min, max) and scales by the extent, both exclusive of the last pixel
    scale = int(size * (1 - border_ratio)) / max(h, w)
    h2, w2 = int(h * scale), int(w * scale)
    top, left = (size - h2) // 2, (size - w2) // 2
    result[top : top + h2, left : left + w2] = cv2.resize(
        rgba[x_min:x_max, y_min:y_max], (w2, h2), interpolation=cv2.INTER_AREA
    )

    alpha = result[..., 3:].astype(np.float32) / 255
    composited = result[..., :3] * alpha + 255.0 * (1 - alpha)
    return composited.clip(0, 255).astype(np.uint8)


class ImageProcessor:
    def __init__(self, cfg: ImageProcessorConfig) -> None:
        self.cfg = cfg

    def __call__(self, image: Image.Image) -> Tensor:
        """PIL image -> (1, 3, size, size) float32 in [-1, 1]."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(image).__name__}")
        # PIL gives images without transparency an opaque alpha, so they are all foreground
        rgba = np.asarray(image.convert("RGBA"))
        square = recenter(rgba, self.cfg.border_ratio)
        square = cv2.resize(square, (self.cfg.size, self.cfg.size), interpolation=cv2.INTER_CUBIC)
        tensor = torch.tensor(square).float() / 255 * 2 - 1  # (S, S, 3)
        return tensor.permute(2, 0, 1).unsqueeze(0)
