"""Hunyuan3D-2mv: a job's named views -> one condition for the (v2-0) DiT.

Matches the official ``MVImageProcessorV2`` + ``DinoImageEncoderMV``:
  1. each view is preprocessed alone, exactly like a single image (recentre, white background, resize);
  2. views are sorted by their index (front 0, left 1, back 2, right 3: the official ``view2idx``), whatever
     order the job named them in;
  3. DINOv2 encodes every view; each view's tokens get the fixed 1-D sin-cos embedding of its INDEX (CLS
     included), and the views' tokens are concatenated view by view: (B, V x T, C).
The unconditional (CFG) context is V x T zero tokens, with no view embedding (as upstream): the DiT's
one-token trick stays exact with ``cond_copies = V x T``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from deployments.contract import FRONT_VIEW, VIEW_NAMES

from .conditioner import ImageConditioner
from .config import ConditionerConfig, ImageProcessorConfig
from .image_processing import ImageProcessor

# The official view2idx: a view's index picks its embedding and its place in the token sequence.
VIEW_INDEX: dict[str, int] = {name: index for index, name in enumerate(VIEW_NAMES)}


def order_views(names: Iterable[str]) -> tuple[str, ...]:
    """View names in model order (by index); ``ValueError`` for an unknown or repeated name, or no front."""
    names = list(names)
    unknown = [name for name in names if name not in VIEW_INDEX]
    if unknown:
        raise ValueError(f"unknown view {unknown[0]!r}; views are {list(VIEW_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a view is named twice in {names}")
    if FRONT_VIEW not in names:
        raise ValueError(f"every job needs the {FRONT_VIEW!r} view; got {names}")
    return tuple(sorted(names, key=VIEW_INDEX.__getitem__))


@dataclass(frozen=True)
class ViewPixels:
    """Preprocessed views of B jobs that share one view set: ``pixels`` (B, V, 3, S, S) in [-1, 1],
    ``views`` the V names in model order."""

    pixels: Tensor
    views: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.pixels.ndim != 5 or self.pixels.shape[1] != len(self.views):
            raise ValueError(f"expected pixels (B, {len(self.views)}, 3, S, S), got {tuple(self.pixels.shape)}")
        if order_views(self.views) != self.views:
            raise ValueError(f"views {self.views} are not in model order {order_views(self.views)}")

    @property
    def batch_size(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def view_indices(self) -> tuple[int, ...]:
        return tuple(VIEW_INDEX[name] for name in self.views)

    def to(self, device: torch.device | str, dtype: torch.dtype) -> ViewPixels:
        return ViewPixels(self.pixels.to(device, dtype), self.views)

    @classmethod
    def cat(cls, parts: Sequence[ViewPixels]) -> ViewPixels:
        """One batch from jobs of ONE view set (the conditioner makes V x T tokens for all of them)."""
        if not parts:
            raise ValueError("no jobs given")
        views = {part.views for part in parts}
        if len(views) > 1:
            raise ValueError(
                f"the jobs of one call must have the same view set, got {sorted(views)}; run each view set in "
                "its own call"
            )
        return cls(torch.cat([part.pixels for part in parts]), parts[0].views)


Pixels = Tensor | ViewPixels
"""What the accelerator section takes: single images (B, 3, S, S), or the views of B jobs."""


def cat_pixels(parts: Sequence[Pixels]) -> Pixels:
    """Join per-job pixels into one batch: all single images, or all views of one view set."""
    if all(isinstance(part, ViewPixels) for part in parts):
        return ViewPixels.cat(parts)  # type: ignore[arg-type]
    if all(isinstance(part, Tensor) for part in parts):
        return torch.cat(parts)  # type: ignore[arg-type]
    raise ValueError("cannot batch single-image pixels with multiview pixels in one call")


def batch_size_of(pixels: Pixels) -> int:
    return pixels.batch_size if isinstance(pixels, ViewPixels) else int(pixels.shape[0])


class MultiviewImageProcessor:
    """``MVImageProcessorV2``: {view name: PIL image} -> ViewPixels (1, V, 3, S, S), views in model order."""

    def __init__(self, cfg: ImageProcessorConfig) -> None:
        self.single = ImageProcessor(cfg)  # each view goes through exactly the single-image steps

    def __call__(self, views: Mapping[str, Image.Image]) -> ViewPixels:
        names = order_views(views)
        tensors = []
        for name in names:
            try:
                tensors.append(self.single(views[name]))
            except ValueError as exc:  # EmptyImageError: say which view has nothing in it
                raise type(exc)(f"view {name!r}: {exc}") from exc
        return ViewPixels(torch.cat(tensors)[None], names)  # (1, V, 3, S, S)


def sincos_view_embedding(width: int, positions: int) -> Tensor:
    """(positions, width) float32: [sin(p * w_i), cos(p * w_i)], w_i = 10000^(-i / (width / 2)).

    Computed in float64 and rounded once, as the official numpy code does.
    """
    if width % 2:
        raise ValueError(f"the view embedding needs an even width, got {width}")
    omega = 1.0 / 10_000 ** (torch.arange(width // 2, dtype=torch.float64) / (width / 2))  # (width / 2,)
    angles = torch.arange(positions, dtype=torch.float64)[:, None] * omega[None, :]  # (positions, width / 2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


class MultiviewConditioner(ImageConditioner):
    """``DinoImageEncoderMV``: the single-image DINOv2 encoder run per view, plus a view embedding.

    The weights are the single encoder's (same checkpoint keys); the view embedding is fixed, not learned.
    """

    view_embed: Tensor  # (view_num, C), a buffer so it follows the model's device and dtype

    def __init__(self, cfg: ConditionerConfig) -> None:
        if cfg.view_num is None:
            raise ValueError("MultiviewConditioner needs a multiview (DinoImageEncoderMV) config")
        super().__init__(cfg)
        embedding = sincos_view_embedding(cfg.hidden_size, cfg.view_num)
        self.register_buffer("view_embed", embedding, persistent=False)

    def forward(self, image: Tensor, view_indices: Sequence[int] | None = None) -> Tensor:
        """(B, V, 3, H, W) in [-1, 1] -> (B, V x T, C); ``view_indices``: each view's index (default 0..V-1)."""
        b, v = image.shape[:2]
        indices = list(range(v)) if view_indices is None else list(view_indices)
        if len(indices) != v:
            raise ValueError(f"{v} views but {len(indices)} view indices")
        if max(indices) >= self.view_embed.shape[0]:
            raise ValueError(f"view index {max(indices)} is beyond this model's {self.view_embed.shape[0]} views")
        tokens = super().forward(image.flatten(0, 1))  # (B * V, T, C): every view alone through DINOv2
        tokens = tokens.unflatten(0, (b, v))  # (B, V, T, C)
        # the official code adds the float32 embedding after casting it to the tokens' dtype
        tokens = tokens + self.view_embed[indices].to(tokens.dtype)[None, :, None, :]
        return tokens.flatten(1, 2)  # (B, V * T, C), view by view

    def unconditional(self, batch_size: int, num_views: int = 1) -> Tensor:
        """The CFG negative condition: V x T zero tokens (no view embedding, as upstream)."""
        param = next(self.model.parameters())
        shape = (batch_size, num_views * self.cfg.num_tokens, self.cfg.hidden_size)
        return torch.zeros(shape, device=param.device, dtype=param.dtype)


def build_conditioner(cfg: ConditionerConfig) -> ImageConditioner:
    """The encoder a config names: single-image DINOv2, or the multiview one."""
    return MultiviewConditioner(cfg) if cfg.multiview else ImageConditioner(cfg)
