from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pytest
from PIL import Image

from deployments.background import ClassicalRemover, cut_out, has_meaningful_alpha
from deployments.contract import ErrorCode, GenerationError
from deployments.image_input import decode_image
from tests.background import IMAGES, iou, load_photo, true_mask


class CountingRemover:
    """The real classical remover, counting its calls and the images it was given."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.inner = ClassicalRemover()

    def masks(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        self.calls.append(len(images))
        return self.inner.masks(images)


def alpha(image: Image.Image) -> np.ndarray:
    return np.asarray(image.getchannel("A")).astype(np.float32) / 255


def rgba_cutout() -> Image.Image:
    with Image.open(IMAGES / "object_rgba.png") as image:
        return image.convert("RGBA")


def test_cut_out_auto_leaves_an_rgba_cutout_alone():
    cutout = rgba_cutout()
    remover = CountingRemover()
    (result,) = cut_out([cutout], ["auto"], remover)
    assert remover.calls == []
    assert result.mode == "RGBA" and np.array_equal(np.asarray(result), np.asarray(cutout))


def test_cut_out_auto_removes_the_background_of_an_rgb_photo():
    photo = load_photo("mug_gradient")
    (result,) = cut_out([photo], ["auto"], ClassicalRemover())
    assert isinstance(result, Image.Image) and result.mode == "RGBA" and result.size == photo.size
    assert iou(alpha(result), true_mask("mug_gradient")) >= 0.9
    # the colour is the photo's own; only the alpha channel is new
    assert np.array_equal(np.asarray(result.convert("RGB")), np.asarray(photo.convert("RGB")))


def test_cut_out_never_keeps_an_rgb_image_fully_opaque():
    photo = load_photo("plain_white")
    remover = CountingRemover()
    (result,) = cut_out([photo], ["never"], remover)
    assert remover.calls == []
    assert result.mode == "RGBA" and result.size == photo.size and alpha(result).min() == 1.0


def test_cut_out_always_removes_even_with_alpha_and_keeps_it_as_a_limit():
    cutout = rgba_cutout()
    (result,) = cut_out([cutout], ["always"], ClassicalRemover())
    assert isinstance(result, Image.Image) and result.size == cutout.size
    assert np.all(alpha(result) <= alpha(cutout) + 1e-6)  # nothing transparent comes back
    assert (alpha(result) >= 0.5).mean() > 0.5 * (alpha(cutout) >= 0.5).mean()


def test_cut_out_blank_image_fails_alone_while_its_neighbours_succeed():
    blank = Image.new("RGB", (320, 240), (246, 246, 244))
    images = [load_photo("mug_gradient"), blank, load_photo("non_square")]
    results = cut_out(images, ["auto", "auto", "always"], ClassicalRemover())
    assert isinstance(results[0], Image.Image) and isinstance(results[2], Image.Image)
    error = results[1]
    assert isinstance(error, GenerationError) and error.code == ErrorCode.NO_FOREGROUND
    assert "background removal left 0.00% of the image" in error.message
    assert iou(alpha(results[2]), true_mask("non_square")) >= 0.9


def test_cut_out_runs_the_remover_once_for_every_image_that_needs_it():
    remover = CountingRemover()
    images = [
        load_photo("plain_white"),
        rgba_cutout(),
        rgba_cutout(),
        load_photo("noisy_grey"),
        load_photo("dark_on_light"),
    ]
    results = cut_out(images, ["auto", "auto", "always", "never", "always"], remover)
    assert remover.calls == [3]  # the RGB photo, the forced cut-out, the forced photo
    assert [r.size for r in results] == [i.size for i in images]  # type: ignore[union-attr]


def test_cut_out_threshold_is_the_configured_fraction():
    photo = load_photo("plain_white")  # the vase covers 29% of the frame
    (kept,) = cut_out([photo], ["auto"], ClassicalRemover(), min_foreground_fraction=0.25)
    (failed,) = cut_out([photo], ["auto"], ClassicalRemover(), min_foreground_fraction=0.35)
    assert isinstance(kept, Image.Image)
    assert isinstance(failed, GenerationError) and failed.code == ErrorCode.NO_FOREGROUND


def test_cut_out_rejects_mismatched_modes():
    with pytest.raises(ValueError, match="2 images but 1 remove_background modes"):
        cut_out([load_photo("plain_white")] * 2, ["auto"], ClassicalRemover())
    with pytest.raises(ValueError, match="remove_background must be one of"):
        cut_out([load_photo("plain_white")], ["sometimes"], ClassicalRemover())  # type: ignore[list-item]


@pytest.mark.parametrize("orientation", [6, 8])
def test_cut_out_exif_rotated_jpeg_comes_out_upright(orientation):
    upright = load_photo("non_square")  # 480 x 288, a car standing on its wheels
    # a camera held sideways stores the pixels turned and says in EXIF how to turn them back
    stored = upright.transpose(Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=92, exif=exif.tobytes())
    decoded = decode_image(buffer.getvalue())
    assert decoded.size == (480, 288)
    (result,) = cut_out([decoded], ["auto"], ClassicalRemover())
    assert isinstance(result, Image.Image) and result.size == (480, 288)
    assert iou(alpha(result), true_mask("non_square")) >= 0.9


def test_has_meaningful_alpha_only_when_something_is_cut_out():
    rgb = Image.new("RGB", (100, 100), "white")
    opaque = Image.new("RGBA", (100, 100), (10, 20, 30, 255))
    few = opaque.copy()
    few.putpixel((0, 0), (0, 0, 0, 0))
    few.putpixel((99, 99), (0, 0, 0, 3))
    faint = Image.new("RGBA", (100, 100), (10, 20, 30, 200))  # see-through everywhere, but nothing cut away
    palette = Image.new("P", (100, 100), 0)
    palette.paste(1, (0, 0, 100, 50))
    palette.info["transparency"] = 1
    grey_alpha = rgba_cutout().convert("LA")
    assert not has_meaningful_alpha(rgb)
    assert not has_meaningful_alpha(opaque)
    assert not has_meaningful_alpha(few)
    assert not has_meaningful_alpha(faint)
    assert has_meaningful_alpha(rgba_cutout())
    assert has_meaningful_alpha(palette)
    assert has_meaningful_alpha(grey_alpha)
