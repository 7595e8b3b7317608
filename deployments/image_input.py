"""Request images in the replica: decoding encoded bytes, and the synthetic image warm-up runs on."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from .contract import ErrorCode, GenerationError


def decode_image(image: bytes, job_id: str | None = None) -> Image.Image:
    """Encoded bytes -> a fully loaded PIL image; ``GenerationError(invalid_image)`` if not."""
    try:
        with Image.open(io.BytesIO(image)) as opened:
            opened.load()  # decode now: a truncated file fails here, not inside the GPU pass
            return upright(opened)
    except UnidentifiedImageError:
        message = "the data is not an image PIL can read; send PNG, JPEG or WebP"
        raise GenerationError(ErrorCode.INVALID_IMAGE, message, job_id) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # truncated data is an OSError, some broken headers are SyntaxError/ValueError
        message = f"the image could not be decoded ({type(exc).__name__}: {exc})"
        raise GenerationError(ErrorCode.INVALID_IMAGE, message, job_id) from None


def upright(image: Image.Image) -> Image.Image:
    """A copy turned the way the camera's EXIF Orientation tag says (phone photos are stored sideways)."""
    try:
        return ImageOps.exif_transpose(image)
    except (KeyError, ValueError, TypeError, SyntaxError, OSError):
        # a damaged EXIF block costs the rotation, not the upload
        return image.copy()


def warmup_image(size: int = 256) -> Image.Image:
    """A cut-out object (an ellipse on transparency), like what agents send."""
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((size // 5, size // 8, size * 4 // 5, size * 7 // 8), fill=(180, 120, 60, 255))
    return image
