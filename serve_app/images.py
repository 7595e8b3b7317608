"""Decoding and bounding agent-supplied images before anything is stored or queued.

Every failure is an :class:`ImageRejected` carrying the HTTP status and a specific error code, so the
ingress answers 400/413/415/422 with a reason and never a 500: not base64, not an image, a format we do not
accept, too many bytes, too many pixels (decompression bombs are refused from the header, before decoding),
too small, or nothing visible.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
_DATA_URL = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,", re.ASCII)


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    min_side: int = 16


class ImageRejected(ValueError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class DecodedImage:
    """The validated original bytes (what is stored and sent to the model) and what we learned of them."""

    data: bytes
    format: str
    width: int
    height: int
    has_alpha: bool


def decode_base64_image(value: object, limits: ImageLimits, field: str = "image") -> DecodedImage:
    """A base64 string (optionally a ``data:image/...;base64,`` URL) -> validated image."""
    if not isinstance(value, str) or not value:
        raise ImageRejected(422, "invalid_image_field", f"'{field}' must be a non-empty base64 string")
    text = _DATA_URL.sub("", value, count=1)
    # base64 inflates by 4/3: refuse oversized payloads before decoding them
    if len(text) > (limits.max_bytes * 4) // 3 + 4:
        raise ImageRejected(413, "image_too_large", f"'{field}' is larger than {limits.max_bytes} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRejected(400, "invalid_base64", f"'{field}' is not valid standard base64") from None
    return validate_image_bytes(data, limits, field)


def validate_image_bytes(data: bytes, limits: ImageLimits, field: str = "image") -> DecodedImage:
    if len(data) > limits.max_bytes:
        raise ImageRejected(413, "image_too_large", f"'{field}' is larger than {limits.max_bytes} bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            # the header alone gives format and size: check them before decoding any pixels
            if image.format not in ACCEPTED_FORMATS:
                raise ImageRejected(
                    415,
                    "unsupported_image_format",
                    f"'{field}' is {image.format or 'an unknown format'}; send one of {', '.join(ACCEPTED_FORMATS)}",
                )
            width, height = image.size
            if width * height > limits.max_pixels:
                raise ImageRejected(
                    413,
                    "image_too_many_pixels",
                    f"'{field}' is {width}x{height}; at most {limits.max_pixels} pixels are accepted",
                )
            if min(width, height) < limits.min_side:
                raise ImageRejected(
                    422, "image_too_small", f"'{field}' is {width}x{height}; each side must be >= {limits.min_side}"
                )
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image.load()
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            if has_alpha and image.convert("RGBA").getchannel("A").getbbox() is None:
                raise ImageRejected(422, "empty_image", f"'{field}' is fully transparent: nothing to reconstruct")
            return DecodedImage(data, image.format, width, height, has_alpha)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow refuses absurd headers itself, even before our own pixel check
        raise ImageRejected(
            413, "image_too_many_pixels", f"'{field}' declares more than {limits.max_pixels} pixels"
        ) from None
    except UnidentifiedImageError:
        raise ImageRejected(400, "invalid_image", f"'{field}' is not a decodable image") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise ImageRejected(400, "invalid_image", f"'{field}' could not be decoded: {exc}") from None


def open_image(data: bytes) -> Image.Image:
    """Bytes that passed :func:`validate_image_bytes` -> a loaded PIL image."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()
