"""Request images in the replica: decoding encoded bytes, and the synthetic image warm-up runs on."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, UnidentifiedImageError

from .messages import GenerationError


def decode_image(image: bytes | Image.Image, job_id: str | None = None) -> Image.Image:
    """Encoded bytes (or a PIL image) -> a fully loaded PIL image; ``GenerationError(invalid_image)`` if not."""
    if isinstance(image, Image.Image):
        return image
    try:
        with Image.open(io.BytesIO(image)) as opened:
            opened.load()  # decode now: a truncated file fails here, not inside the GPU pass
            return opened.copy()
    except UnidentifiedImageError:
        message = "the data is not an image PIL can read; send PNG, JPEG or WebP"
        raise GenerationError("invalid_image", message, job_id) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # truncated data is an OSError, some broken headers are SyntaxError/ValueError
        message = f"the image could not be decoded ({type(exc).__name__}: {exc})"
        raise GenerationError("invalid_image", message, job_id) from None


def warmup_image(size: int = 256) -> Image.Image:
    """A cut-out object (an ellipse on transparency), like what agents send."""
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((size // 5, size // 8, size * 4 // 5, size * 7 // 8), fill=(180, 120, 60, 255))
    return image
