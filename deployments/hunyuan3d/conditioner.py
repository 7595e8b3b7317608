"""Image conditioner: DINOv2 (transformers 5 ``Dinov2Model``) over the preprocessed image.

Matches the official ``DinoImageEncoder``: [-1, 1] -> [0, 1] -> bilinear antialiased resize to the encoder
size + centre crop -> ImageNet normalisation -> last hidden state, CLS token kept.
"""

from __future__ import annotations

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
