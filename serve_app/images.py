"""Decoding, bounding and normalising agent-supplied images before anything is stored or queued.

Two steps, both pure functions run in the decode pool (:mod:`serve_app.image_pool`):

1. :func:`probe_image` reads the header and walks the container, no pixels: format, size, pixel count
   (decompression bombs are refused here), shortest side, bytes appended after the image, and an encoding far
   larger than its pixels need (a 32x32 PNG carrying a 9 MiB private chunk).
2. :func:`normalise_image` decodes, refuses fully transparent images, turns the pixels the way the EXIF
   Orientation tag says, and re-encodes them with no metadata: what is stored and sent to the model holds
   pixels only (no EXIF/GPS, ICC, text chunks, smuggled data). Lossless PNG keeps alpha and PNG sources exact;
   opaque photos (JPEG, WebP) become JPEG at quality 95, as PNG would make them several times larger.

Every failure is an :class:`ImageRejected` carrying the HTTP status and a specific error code, so the
ingress answers 400/413/415/422 with a reason and never a 500.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from deployments.image_input import upright
from serve_app.image_containers import walk

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "MPO")
# what agents are told they may send: MPO is how Pillow names the multi-picture JPEGs of phone cameras
_ADVERTISED_FORMATS = ("PNG", "JPEG", "WEBP")
_DATA_URL = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,", re.ASCII)
# An honest encoding is at most about the raw pixel size (JPEG at quality 100 without chroma subsampling
# reaches 1.4x on pure noise, PNG and lossless WebP ~1.0x) plus its metadata: twice the raw size leaves room.
ENCODING_SLACK = 2
JPEG_QUALITY = 95
_JPEG_MODES = ("L", "RGB")
_ORIENTATION = 0x0112  # the EXIF tag


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    min_side: int = 16
    # bytes beyond ENCODING_SLACK x the raw pixels an image may carry (ICC profile, EXIF, XMP)
    metadata_allowance: int = 256 * 1024
    # total pixels over all images of one request
    max_request_pixels: int = 4 * 4096 * 4096


class ImageRejected(ValueError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ImageHeader:
    """What the header and the container say, before any pixel is decoded."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class DecodedImage:
    """The normalised bytes (what is stored and sent to the model) and what we learned of them.

    ``format`` is the stored encoding (PNG or JPEG), ``source_format`` what the agent sent; ``width`` and
    ``height`` are those of the upright image."""

    data: bytes
    format: str
    width: int
    height: int
    has_alpha: bool
    source_format: str


def base64_payload(value: object, limits: ImageLimits, field: str = "image") -> bytes:
    """A base64 string (optionally a ``data:image/...;base64,`` URL) -> its bytes, size-checked."""
    if not isinstance(value, str) or not value:
        raise ImageRejected(422, "invalid_image_field", f"'{field}' must be a non-empty base64 string")
    text = _DATA_URL.sub("", value, count=1)
    # base64 inflates by 4/3: refuse oversized payloads before decoding them
    if len(text) > (limits.max_bytes * 4) // 3 + 4:
        raise _too_large(field, limits)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRejected(400, "invalid_base64", f"'{field}' is not valid standard base64") from None


def probe_image(data: bytes, limits: ImageLimits, field: str = "image") -> ImageHeader:
    """Step 1: everything that can be refused without decoding pixels."""
    if len(data) > limits.max_bytes:
        raise _too_large(field, limits)
    with _decoding(field, limits), Image.open(io.BytesIO(data)) as image:
        image_format = image.format or ""
        if image_format not in ACCEPTED_FORMATS:
            raise ImageRejected(
                415,
                "unsupported_image_format",
                f"'{field}' is {image_format or 'an unknown format'}; send one of {', '.join(_ADVERTISED_FORMATS)}",
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
        header = ImageHeader(image_format, width, height)
        _check_encoding(data, header, len(image.getbands()), limits, field)
        return header


def _check_encoding(data: bytes, header: ImageHeader, bands: int, limits: ImageLimits, field: str) -> None:
    """Refuse bytes after the image's end, and an encoding far beyond what its pixels need."""
    container = walk(data, header.format)
    trailing = container.trailing_bytes(len(data))
    if trailing:
        end = {"PNG": "IEND chunk", "JPEG": "EOI marker", "MPO": "last EOI marker", "WEBP": "RIFF size"}[header.format]
        raise ImageRejected(
            422,
            "image_trailing_data",
            f"'{field}' has {trailing} bytes after the end of its {header.format} data (its {end}); "
            "send the image file alone, without appended data",
        )
    width, height = header.width, header.height
    raw = width * height * bands * container.bytes_per_sample
    allowed = ENCODING_SLACK * raw + limits.metadata_allowance
    if len(data) > allowed:
        raise ImageRejected(
            422,
            "image_oversized_encoding",
            f"'{field}' is {len(data)} bytes for {width}x{height} pixels ({container.metadata_bytes} of them "
            f"metadata); the rule is at most {ENCODING_SLACK}x its raw pixel size ({raw} bytes) plus "
            f"{limits.metadata_allowance} bytes: strip the metadata (EXIF, XMP, ICC, text or private chunks)",
        )


def normalise_image(data: bytes, header: ImageHeader, limits: ImageLimits, field: str = "image") -> DecodedImage:
    """Step 2: decode (``data`` passed :func:`probe_image`), check the alpha, turn upright, re-encode bare."""
    with _decoding(field, limits), Image.open(io.BytesIO(data)) as image:
        # probe_image's pixel check is what bounds this. Pillow's own (a warning from 89 Mpx) is left alone:
        # turning it into an error needs warnings.catch_warnings, which is process-wide, not per thread
        image.load()
        has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
        if has_alpha and _alpha(image).getbbox() is None:
            raise ImageRejected(422, "empty_image", f"'{field}' is fully transparent: nothing to reconstruct")
        # the model applies EXIF orientation too; once the tag is gone, the pixels must already be upright
        turned = upright(image) if _orientation(image) != 1 else image
        stored_format = "PNG" if header.format == "PNG" or has_alpha else "JPEG"
        encoded = _encode_bare(turned, stored_format)
        return DecodedImage(encoded, stored_format, turned.width, turned.height, has_alpha, header.format)


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_ORIENTATION, 1))
    except (KeyError, ValueError, TypeError, SyntaxError, OSError):
        return 1  # a damaged EXIF block costs the rotation, not the upload (as in the model's own `upright`)


def _alpha(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA"):
        return image.getchannel("A")  # no converted copy of a 4096x4096 image just to read its alpha
    return image.convert("RGBA").getchannel("A")


def _encode_bare(image: Image.Image, stored_format: str) -> bytes:
    """The pixels alone. Pillow's writers copy ICC profiles, XMP and comments from ``info``: only
    ``transparency`` (a palette's or colour key's alpha) is kept there, and no EXIF is passed."""
    transparency = None if stored_format == "JPEG" else image.info.get("transparency")
    if stored_format == "JPEG" and image.mode not in _JPEG_MODES:
        image = image.convert("RGB")  # CMYK photos: the same conversion the model would do
    image.info = {} if transparency is None else {"transparency": transparency}
    buffer = io.BytesIO()
    if stored_format == "PNG":
        # zlib's fast level: half the time of the default on large images, and the model reads the file once
        image.save(buffer, "PNG", compress_level=1)
    else:
        image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def validate_image_bytes(data: bytes, limits: ImageLimits, field: str = "image") -> DecodedImage:
    """Both steps in the calling thread (tests, tools); the ingress runs them in the decode pool."""
    return normalise_image(data, probe_image(data, limits, field), limits, field)


def decode_base64_image(value: object, limits: ImageLimits, field: str = "image") -> DecodedImage:
    return validate_image_bytes(base64_payload(value, limits, field), limits, field)


def open_image(data: bytes) -> Image.Image:
    """Bytes that passed :func:`validate_image_bytes` -> a loaded PIL image."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()


def _too_large(field: str, limits: ImageLimits) -> ImageRejected:
    return ImageRejected(413, "image_too_large", f"'{field}' is larger than {limits.max_bytes} bytes")


@contextmanager
def _decoding(field: str, limits: ImageLimits) -> Iterator[None]:
    """Pillow's exceptions -> :class:`ImageRejected` (ours pass through)."""
    try:
        yield
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow refuses absurd headers itself, even before our own pixel check
        raise ImageRejected(
            413, "image_too_many_pixels", f"'{field}' declares more than {limits.max_pixels} pixels"
        ) from None
    except UnidentifiedImageError:
        raise ImageRejected(400, "invalid_image", f"'{field}' is not a decodable image") from None
    except (OSError, EOFError, SyntaxError, ValueError, struct.error) as exc:  # truncated or corrupt data
        raise ImageRejected(400, "invalid_image", f"'{field}' could not be decoded: {exc}") from None
