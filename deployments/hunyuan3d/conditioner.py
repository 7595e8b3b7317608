"""Image conditioner: DINOv2 (transformers 5 ``Dinov2Model``) over the preprocessed image.

Matches the official ``DinoImageEncoder``: [-1, 1] -> [0, 1] -> bilinear antialiased resize to the encoder
size + centre crop -> ImageNet normalisation -> last hidden state, CLS token kept.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Dinov2Config, Dinov2Model

from .config import ConditionerConfig


class ImageConditioner(nn.Module):
    mean: Tensor  # buffers, registered in __init__
    std: Tensor

    def __init__(self, cfg: ConditionerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dinov2 = {k: v for k, v in cfg.dinov2.items() if k not in ("torch_dtype", "dtype")}
        self.model = Dinov2Model(Dinov2Config(**dinov2))
        if cfg.position_interpolation == "scale_factor":
            embeddings = self.model.embeddings
            patch = int(dinov2.get("patch_size", 14))

            def interpolate(tokens: Tensor, height: int, width: int) -> Tensor:
                table = embeddings.position_embeddings
                return interpolate_by_scale_factor(table, patch, tokens.shape[1] - 1, height, width)

            # an instance attribute shadows the method for this model only (no global patch of transformers)
            embeddings.__dict__["interpolate_pos_encoding"] = interpolate
        self.model.eval()
        self.model.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

    def _transform(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, S, S) normalised, S = encoder image size."""
        size = self.cfg.image_size
        h, w = image.shape[-2:]
        if (h, w) != (size, size):
            # resize the shorter side to `size` (keeping aspect), then centre-crop, like torchvision's
            # Resize(size, antialias=True) + CenterCrop(size) on tensors
            scale = size / min(h, w)
            new_h, new_w = (size, int(w * scale)) if h <= w else (int(h * scale), size)
            # in float32 and back, as torchvision's resize does for other dtypes (and CPU has no fp16 kernel)
            image = F.interpolate(
                image.float(), size=[new_h, new_w], mode="bilinear", align_corners=False, antialias=True
            ).to(image.dtype)
            top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
            image = image[..., top : top + size, left : left + size]
        return (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)

    def forward(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, T, C) image tokens (T = 1370 for DINOv2 at 518 px)."""
        param = next(self.model.parameters())
        image = ((image + 1.0) / 2.0).to(param.device, dtype=param.dtype)
        tokens = self.model(pixel_values=self._transform(image)).last_hidden_state
        return tokens if self.cfg.use_cls_token else tokens[:, 1:, :]

    def unconditional(self, batch_size: int) -> Tensor:
        """The CFG negative condition: zeros shaped like the image tokens."""
        param = next(self.model.parameters())
        return torch.zeros(
            batch_size, self.cfg.num_tokens, self.cfg.hidden_size, device=param.device, dtype=param.dtype
        )


def interpolate_by_scale_factor(table: Tensor, patch: int, num_patches: int, height: int, width: int) -> Tensor:
    """DINOv2 position embeddings ``table`` (1, 1 + N, C) for a ``height`` x ``width`` input of ``num_patches``
    patches, resized the way transformers < 4.45 did.

    Bicubic in float32 by the factors ``(height // patch + 0.1) / sqrt(N)`` (and width) rather than to an exact
    size: the output has the same shape but its samples sit at slightly different positions.
    """
    num_positions = table.shape[1] - 1
    if num_patches == num_positions and height == width:
        return table
    side = math.sqrt(num_positions)
    rows, cols = height // patch + 0.1, width // patch + 0.1
    grid = table[:, 1:].reshape(1, int(side), int(side), -1).permute(0, 3, 1, 2)
    resized = F.interpolate(
        grid.float(), scale_factor=(float(rows / side), float(cols / side)), mode="bicubic", align_corners=False
    ).to(table.dtype)
    if resized.shape[-2:] != (int(rows), int(cols)):
        raise ValueError(f"position embeddings resized to {tuple(resized.shape[-2:])}, not {(int(rows), int(cols))}")
    return torch.cat((table[:, :1], resized.permute(0, 2, 3, 1).reshape(1, -1, table.shape[-1])), dim=1)
