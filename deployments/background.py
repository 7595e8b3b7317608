"""Background removal in the model replica: photos in, RGBA cut-outs (or ``no_foreground``) out.

Hunyuan3D was trained on cut-outs: the preprocessing crops to the alpha channel's bounding box and composites
on white, so an RGB photo with its background turns into a slab. :func:`cut_out` decides per request
(``remove_background`` auto|always|never), runs one :class:`BackgroundRemover` once for every image that needs
it, and puts the mask in the alpha channel.

Two removers:

* :class:`ClassicalRemover` (no weights): a smooth colour model of the background fitted to the image border,
  a per-pixel distance to it in Lab with a threshold from the border's own noise, contact shadows counted as
  background, then OpenCV clean-up. Good on studio photos (a plain, noisy, gradient or off-white backdrop);
  it cannot tell an object from a backdrop of the same colour.
* :class:`OnnxRemover`: a salient-object network (U2Net, ISNet, BiRefNet) from a local ``.onnx`` file, run the
  way rembg runs it. Nothing is ever downloaded.

No torch, no Ray: numpy, OpenCV and PIL; onnxruntime is imported only by the ONNX remover.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import cv2
import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from .contract import REMOVE_BACKGROUND_MODES, ErrorCode, GenerationError, RemoveBackground
from .paths import resolve_path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# An alpha channel "cuts something out" when at least this fraction of the pixels is mostly transparent;
# a few clear pixels (rounded screenshot corners, one stray transparent pixel) do not count.
MEANINGFUL_ALPHA_FRACTION = 0.01
# Border pixels the backdrop model is fitted to, at most (an even subsample of the border).
MAX_BORDER_SAMPLES = 20_000
# A saliency map whose values span less than this holds no object (see OnnxRemover._postprocess).
FLAT_SALIENCY_RANGE = 0.05


class BackgroundConfig(BaseModel):
    """Which background remover the replica runs and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    remover: Literal["classical", "onnx"] = Field(
        default="classical",
        description="'classical': border colour model + OpenCV, no weights. 'onnx': a salient-object network "
        "from `onnx_model` (U2Net, ISNet, BiRefNet).",
    )
    onnx_model: str | None = Field(
        default=None,
        description="Local .onnx file (relative paths resolve against the repository); required for 'onnx'. "
        "Nothing is downloaded.",
    )
    input_size: PositiveInt | None = Field(
        default=None,
        description="Square side the network sees; None: the model's own static input size (U2Net 320, "
        "ISNet and BiRefNet 1024).",
    )
    mean: tuple[float, float, float] = Field(
        default=IMAGENET_MEAN, description="Per-channel mean subtracted from RGB in [0, 1] (ISNet: 0.5)."
    )
    std: tuple[float, float, float] = Field(
        default=IMAGENET_STD, description="Per-channel divisor after the mean (ISNet: 1.0)."
    )
    output: Literal["probability", "logits"] = Field(
        default="probability",
        description="What the model's first output holds: 'probability' (U2Net, ISNet) or 'logits' "
        "(BiRefNet; a sigmoid is applied).",
    )
    providers: list[str] | None = Field(
        default=None,
        description="onnxruntime execution providers in order; None: CUDA when onnxruntime offers it, else CPU.",
    )
    min_foreground_fraction: float = Field(
        default=0.002,
        ge=0,
        lt=1,
        description="An image whose mask covers less than this fraction of its pixels fails with no_foreground.",
    )

    @model_validator(mode="after")
    def _check(self) -> BackgroundConfig:
        if self.remover == "onnx" and not self.onnx_model:
            raise ValueError(
                "onnx_model is required when remover is 'onnx': set it to a local .onnx file "
                "(e.g. configs/models/tiny-salient/u2net-signature.onnx), or use remover: classical"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive in every channel, got {self.std}")
        return self


class BackgroundRemover(Protocol):
    def masks(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        """One float32 alpha mask in [0, 1] per image, at that image's (H, W)."""
        ...


# --- the classical remover ------------------------------------------------------------------------------


class ClassicalRemover:
    """Object vs. backdrop from colour alone: no weights; about 30 ms for a 320 px photo on one CPU core, under a
    second for any photo (larger ones are segmented at ``work_size``).

    Steps (numbered in :meth:`_segment`): fit the backdrop's colour to the border, threshold the distance to it
    by the border's noise, count contact shadows as backdrop, keep the main object, fill holes that do not show
    the backdrop, and settle the edge pixels between the local object and backdrop colours.
    """

    # images are segmented at most this large (the mask is then resized back): edges stay sharp, time bounded
    work_size = 1024
    border_fraction = 0.03
    # a shadow darkens the backdrop by at most this much in Lab lightness; darker neutral pixels are object
    shadow_min_lightness_ratio = 0.55
    shadow_chroma_tolerance = 4.0
    min_delta_e = 4.0

    def masks(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        return [self._mask(image) for image in images]

    def _mask(self, image: Image.Image) -> np.ndarray:
        rgb = np.asarray(image.convert("RGB"))
        h, w = rgb.shape[:2]
        if min(h, w) < 8:  # too small to tell a border from an object
            return np.zeros((h, w), np.float32)
        scale = min(1.0, self.work_size / max(h, w))
        if scale < 1:
            rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        mask = self._segment(rgb)
        # a light blur anti-aliases the edge; resizing it back keeps the edge soft rather than blocky
        soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.7)
        if soft.shape != (h, w):
            soft = cv2.resize(soft, (w, h), interpolation=cv2.INTER_LINEAR)
        return np.clip(soft, 0, 1).astype(np.float32)

    def _segment(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (H, W) bool object mask."""
        h, w = rgb.shape[:2]
        # 1. Lab of a lightly denoised copy (median first: JPEG blocks and salt noise, then sensor noise)
        smooth = cv2.GaussianBlur(cv2.medianBlur(rgb, 3), (0, 0), 1.0)
        lab = _lab(smooth)
        raw_lab = _lab(cv2.medianBlur(rgb, 3))

        # 2. the backdrop's colour everywhere, from the border, and how noisy the border is around it
        border = _border_mask(h, w, max(2, round(self.border_fraction * min(h, w))))
        backdrop, border_residual = _fit_backdrop(lab, border)
        delta = lab - backdrop
        distance = np.linalg.norm(delta, axis=2)
        noise = float(np.quantile(border_residual, 0.995)) if border_residual.size else 0.0
        low = max(self.min_delta_e, 1.5 * noise)
        high = 2.5 * low

        # 3. contact shadows: darker than the backdrop, same chromaticity, touching clear backdrop
        shadow = self._shadow(lab, backdrop)
        clear = distance <= low
        backdrop_like = _touching(clear | shadow, clear)

        # 4. object pixels that hang together with confidently-object pixels (hysteresis)
        candidate = ~backdrop_like
        strong = candidate & (distance > high) & ~shadow
        obj = _touching(candidate, strong)
        radius = max(1, round(min(h, w) / 300))
        obj = cv2.morphologyEx(obj.astype(np.uint8), cv2.MORPH_OPEN, _disk(radius)).astype(bool)
        obj = cv2.morphologyEx(obj.astype(np.uint8), cv2.MORPH_CLOSE, _disk(radius)).astype(bool)
        obj = _main_components(obj)
        if not obj.any():
            return obj

        # 5. holes: filled, unless they show the backdrop (a mug handle's hole stays open)
        obj = _fill_holes(obj, clear, min_area=max(16, round(0.0005 * h * w)))

        # 6. edge pixels go to whichever is closer: the object's colour nearby or the backdrop's colour nearby
        return _settle_edges(obj, raw_lab, radius=max(2, 2 * radius))

    def _shadow(self, lab: np.ndarray, backdrop: np.ndarray) -> np.ndarray:
        lightness, backdrop_lightness = lab[..., 0], np.maximum(backdrop[..., 0], 1.0)
        ratio = lightness / backdrop_lightness
        # darkening light by k scales a*, b* by about k^(1/3), i.e. by the ratio of (L + 16): compare with that
        expected_ab = backdrop[..., 1:] * ((lightness + 16) / (backdrop_lightness + 16))[..., None]
        chroma_gap = np.linalg.norm(lab[..., 1:] - expected_ab, axis=2)
        return (ratio < 1) & (ratio >= self.shadow_min_lightness_ratio) & (chroma_gap <= self.shadow_chroma_tolerance)


def _lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 Lab (L in 0..100)."""
    return cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)


def _border_mask(h: int, w: int, width: int) -> np.ndarray:
    border = np.zeros((h, w), bool)
    border[:width], border[-width:], border[:, :width], border[:, -width:] = True, True, True, True
    return border


def _fit_backdrop(lab: np.ndarray, border: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A quadratic in (x, y) per Lab channel fitted to the border, refitted without outliers.

    Returns the backdrop's Lab everywhere (H, W, 3) and the inlier border pixels' distances to it. A quadratic
    covers flat, gradient and vignetted backdrops. The fit starts from the border's median colour and adds
    terms one degree at a time, each time dropping pixels far from the previous fit: a least-squares quadratic
    through everything would bend towards an object or shadow that touches the border and keep it as inlier.
    """
    h, w = lab.shape[:2]
    rows, cols = np.nonzero(border)
    step = max(1, len(rows) // MAX_BORDER_SAMPLES)  # an even subsample fits as well, and faster
    rows, cols = rows[::step], cols[::step]
    samples = _quadratic_terms(cols / max(w - 1, 1) * 2 - 1, rows / max(h - 1, 1) * 2 - 1)  # (N, 6)
    targets = lab[rows, cols]  # (N, 3)
    coef = np.zeros((6, 3), np.float32)
    coef[0] = np.median(targets, axis=0)
    inliers = np.ones(len(samples), bool)
    for terms in (1, 3, 6, 6, 6):  # degree 0 (the median), 1, 2, then refits
        residual = np.linalg.norm(samples @ coef - targets, axis=1)
        scale = 1.4826 * float(np.median(residual[inliers]))
        inliers = residual <= max(3 * scale, 1.0)
        coef[:] = 0
        coef[:terms], *_ = np.linalg.lstsq(samples[inliers, :terms], targets[inliers], rcond=None)
    residual = np.linalg.norm(samples @ coef - targets, axis=1)
    scale = 1.4826 * float(np.median(residual[inliers]))
    # evaluated term by term on a broadcast (H, 1) x (1, W) grid: no (H, W, 6) array
    x = (np.arange(w, dtype=np.float32) / max(w - 1, 1) * 2 - 1)[None, :]
    y = (np.arange(h, dtype=np.float32) / max(h - 1, 1) * 2 - 1)[:, None]
    backdrop = np.zeros((h, w, 3), np.float32)
    for term, c in zip((1.0, x, y, x * x, x * y, y * y), coef, strict=True):
        backdrop += np.asarray(term, np.float32)[..., None] * c
    return backdrop, residual[residual <= max(3 * scale, 1.0)]


def _quadratic_terms(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N,) x, y in [-1, 1] -> (N, 6): 1, x, y, x^2, xy, y^2."""
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1).astype(np.float32)


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _touching(region: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The connected components of ``region`` that contain at least one ``seeds`` pixel."""
    count, labels = cv2.connectedComponents(region.astype(np.uint8), connectivity=8)
    keep = np.zeros(count, bool)
    keep[np.unique(labels[seeds & region])] = True
    keep[0] = False
    return keep[labels]


def _main_components(obj: np.ndarray, relative_area: float = 0.1) -> np.ndarray:
    """The largest component and any other at least ``relative_area`` of its size (specks and dust go)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(obj.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros_like(obj)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.concatenate([[False], areas >= relative_area * areas.max()])
    return keep[labels]


def _fill_holes(obj: np.ndarray, clear: np.ndarray, min_area: int) -> np.ndarray:
    """Fill enclosed background regions, except large ones that are mostly clear backdrop."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((~obj).astype(np.uint8), connectivity=4)
    areas = stats[:, cv2.CC_STAT_AREA]
    clear_fraction = np.bincount(labels.ravel(), weights=clear.ravel(), minlength=count) / np.maximum(areas, 1)
    shows_backdrop = (areas >= min_area) & (clear_fraction >= 0.5)
    fill = ~shows_backdrop
    # regions touching the image border are the outside, not holes; label 0 is the object itself
    fill[np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))] = False
    fill[0] = False
    return obj | fill[labels]


def _settle_edges(obj: np.ndarray, lab: np.ndarray, radius: int) -> np.ndarray:
    """Reassign a thin band around the edge by local two-colour nearest mean.

    The thresholds decide on a blurred image, which pushes the edge outwards by a pixel or two; here each
    band pixel is compared with the mean colour of nearby certain-object and certain-backdrop pixels, so the
    edge lands where the pixel is more object than backdrop (the anti-aliased 50 % line).
    """
    kernel = _disk(radius)
    core = cv2.erode(obj.astype(np.uint8), kernel).astype(np.float32)
    outer = 1 - cv2.dilate(obj.astype(np.uint8), kernel).astype(np.float32)
    band = (core == 0) & (outer == 0)
    window = (4 * radius + 1, 4 * radius + 1)

    def local_mean(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # box filters: constant time per pixel whatever the window, which grows with the image
        total = cv2.blur(weights, window)
        mean = cv2.blur(lab * weights[..., None], window) / np.maximum(total, 1e-6)[..., None]
        return mean, total

    obj_mean, obj_weight = local_mean(core)
    back_mean, back_weight = local_mean(outer)
    decidable = band & (obj_weight > 1e-3) & (back_weight > 1e-3)
    closer_to_object = np.linalg.norm(lab - obj_mean, axis=2) < np.linalg.norm(lab - back_mean, axis=2)
    settled = obj.copy()
    settled[decidable] = closer_to_object[decidable]
    # the band decision can leave a stray pixel outside the object; keep what hangs on the core
    return _touching(settled, core.astype(bool) & settled) if core.any() else settled


# --- the ONNX remover -----------------------------------------------------------------------------------


class OnnxRemover:
    """A salient-object network from a local ONNX file, preprocessed and normalised the way rembg does."""

    def __init__(self, config: BackgroundConfig) -> None:
        import onnxruntime as ort

        if not config.onnx_model:
            raise ValueError("OnnxRemover needs config.onnx_model (a local .onnx file)")
        path = resolve_path(config.onnx_model)
        if not path.is_file():
            raise FileNotFoundError(
                f"background model not found: {path} (onnx_model must name a local .onnx file; nothing is downloaded)"
            )
        self.config = config
        self.session = ort.InferenceSession(str(path), providers=_providers(config.providers, ort))
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        # U2Net's first output is the fused map (the side outputs are coarser); rembg reads only that one
        self.output_name = self.session.get_outputs()[0].name
        shape = list(model_input.shape)
        if len(shape) != 4:
            raise ValueError(f"{path}: expected an (N, 3, H, W) image input, the model's input is {shape}")
        # a named or missing batch dimension is dynamic: the whole batch goes through one session call
        self.dynamic_batch = not isinstance(shape[0], int)
        static = shape[2] if isinstance(shape[2], int) and shape[2] == shape[3] else None
        if config.input_size is not None and static is not None and config.input_size != static:
            raise ValueError(f"{path}: input_size {config.input_size} does not match the model's input {shape}")
        size = config.input_size or static
        if size is None:
            raise ValueError(f"{path}: the model's input size is dynamic ({shape}); set input_size")
        self.input_size = size

    def masks(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        if not images:
            return []
        batch = np.stack([self._preprocess(image) for image in images])  # (N, 3, S, S)
        if self.dynamic_batch:
            maps = self._run(batch)
        else:
            maps = np.concatenate([self._run(batch[i : i + 1]) for i in range(len(images))])
        return [self._postprocess(m, image.size) for m, image in zip(maps, images, strict=True)]

    def _preprocess(self, image: Image.Image) -> np.ndarray:
        size = (self.input_size, self.input_size)
        rgb = np.asarray(image.convert("RGB").resize(size, Image.Resampling.LANCZOS), np.float32) / 255
        normalised = (rgb - np.array(self.config.mean, np.float32)) / np.array(self.config.std, np.float32)
        return normalised.transpose(2, 0, 1)  # (3, S, S)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) -> (N, S', S') float32: the first output (U2Net's fused map), as probabilities."""
        (first,) = self.session.run([self.output_name], {self.input_name: batch})
        maps = np.asarray(first, np.float32)
        maps = maps.reshape(maps.shape[0], *maps.shape[-2:])
        if self.config.output == "logits":
            maps = (0.5 * (1 + np.tanh(maps / 2))).astype(np.float32)  # the sigmoid, without exp overflow
        return maps

    @staticmethod
    def _postprocess(saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        low, high = float(saliency.min()), float(saliency.max())
        # rembg stretches each map to [0, 1]; a nearly flat map (a blank photo) stays as it is, since
        # stretching it would turn the model's noise into a full-frame "object"
        if high - low >= FLAT_SALIENCY_RANGE:
            saliency = (saliency - low) / (high - low)
        resized = cv2.resize(saliency.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
        return np.clip(resized, 0, 1).astype(np.float32)


class _ProviderSource(Protocol):  # the onnxruntime module, as far as choosing providers goes
    def get_available_providers(self) -> list[str]: ...


def _providers(requested: list[str] | None, ort: _ProviderSource) -> list[str]:
    available = ort.get_available_providers()
    if requested is None:
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    missing = [p for p in requested if p not in available]
    if missing:
        raise ValueError(f"onnxruntime here offers {available}, not {missing}; fix background.providers")
    return list(requested)


def make_remover(config: BackgroundConfig) -> BackgroundRemover:
    return OnnxRemover(config) if config.remover == "onnx" else ClassicalRemover()


# --- deciding and cutting out ---------------------------------------------------------------------------


def has_meaningful_alpha(image: Image.Image) -> bool:
    """Whether the image's transparency actually cuts something out (not all, or all but a few, opaque)."""
    if not _has_alpha(image):
        return False
    alpha = np.asarray(image.convert("RGBA"))[..., 3]
    return bool((alpha < 128).mean() >= MEANINGFUL_ALPHA_FRACTION)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def cut_out(
    images: Sequence[Image.Image],
    modes: Sequence[RemoveBackground],
    remover: BackgroundRemover,
    min_foreground_fraction: float = 0.002,
) -> list[Image.Image | GenerationError]:
    """One RGBA image (at the input's size) or a ``no_foreground`` error per image, in order.

    ``auto`` removes the background only when the image has no meaningful alpha; ``always`` removes it (an
    existing alpha still clips the result); ``never`` keeps the image as it is (RGB becomes fully opaque). The
    remover runs once, on every image that needs it.
    """
    if len(images) != len(modes):
        raise ValueError(f"{len(images)} images but {len(modes)} remove_background modes")
    todo = [i for i, (image, mode) in enumerate(zip(images, modes, strict=True)) if _needs_removal(image, mode)]
    masks = dict(zip(todo, remover.masks([_on_white(images[i]) for i in todo]), strict=True)) if todo else {}

    results: list[Image.Image | GenerationError] = []
    for i, image in enumerate(images):
        rgba = image.convert("RGBA")
        if i not in masks:
            results.append(rgba)
            continue
        alpha = masks[i] * (np.asarray(rgba)[..., 3].astype(np.float32) / 255)
        covered = float((alpha >= 0.5).mean())
        if covered < min_foreground_fraction:
            message = (
                f"background removal left {covered:.2%} of the image, under the {min_foreground_fraction:.2%} "
                "minimum: photograph the object so it stands out from its backdrop, or send a cut-out with alpha"
            )
            results.append(GenerationError(ErrorCode.NO_FOREGROUND, message))
            continue
        rgba.putalpha(Image.fromarray(np.round(alpha * 255).astype(np.uint8), "L"))
        results.append(rgba)
    return results


def _needs_removal(image: Image.Image, mode: RemoveBackground) -> bool:
    if mode not in REMOVE_BACKGROUND_MODES:
        raise ValueError(f"remove_background must be one of {list(REMOVE_BACKGROUND_MODES)}, got {mode!r}")
    return mode == "always" or (mode == "auto" and not has_meaningful_alpha(image))


def _on_white(image: Image.Image) -> Image.Image:
    """RGB for the remover: transparent pixels hold arbitrary colour, so show them as the white the model sees."""
    if not _has_alpha(image):
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")
