from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from serve_app.images import ImageLimits, ImageRejected, decode_base64_image, open_image, validate_image_bytes

LIMITS = ImageLimits(max_bytes=200_000, max_pixels=512 * 512, min_side=16)


def _png(size=(64, 48), mode="RGBA", color=(255, 0, 0, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def _rejected(value, limits=LIMITS) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        decode_base64_image(value, limits)
    return info.value


def test_decode_accepts_png_and_data_urls():
    data = _png()
    decoded = decode_base64_image(base64.b64encode(data).decode(), LIMITS)
    assert (decoded.format, decoded.width, decoded.height, decoded.has_alpha) == ("PNG", 64, 48, True)
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    assert decode_base64_image(url, LIMITS).data == data
    assert open_image(decoded.data).size == (64, 48)


@pytest.mark.parametrize(
    ("value", "status", "code"),
    [
        (None, 422, "invalid_image_field"),
        ("", 422, "invalid_image_field"),
        ("not base64!!", 400, "invalid_base64"),
        (base64.b64encode(b"hello world").decode(), 400, "invalid_image"),
    ],
)
def test_decode_rejects_bad_payloads_with_specific_codes(value, status, code):
    error = _rejected(value)
    assert (error.status, error.code) == (status, code)


def test_decode_rejects_unaccepted_formats_with_415():
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="BMP")
    error = _rejected(base64.b64encode(buf.getvalue()).decode())
    assert (error.status, error.code) == (415, "unsupported_image_format")


def test_decode_rejects_too_many_bytes_before_decoding():
    error = _rejected("A" * 400_000)
    assert (error.status, error.code) == (413, "image_too_large")


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_decode_rejects_decompression_bombs_from_the_header():
    error = _rejected(base64.b64encode(_bomb_png(50_000, 50_000)).decode())
    assert (error.status, error.code) == (413, "image_too_many_pixels")


def test_validate_rejects_truncated_images():
    with pytest.raises(ImageRejected) as info:
        validate_image_bytes(_png()[:60], LIMITS)
    assert (info.value.status, info.value.code) == (400, "invalid_image")


def test_validate_rejects_tiny_and_fully_transparent_images():
    with pytest.raises(ImageRejected) as info:
        validate_image_bytes(_png(size=(8, 8)), LIMITS)
    assert info.value.code == "image_too_small"
    with pytest.raises(ImageRejected) as info:
        validate_image_bytes(_png(color=(0, 0, 0, 0)), LIMITS)
    assert (info.value.status, info.value.code) == (422, "empty_image")


def test_validate_accepts_rgb_as_all_foreground():
    decoded = validate_image_bytes(_png(mode="RGB", color=(1, 2, 3)), LIMITS)
    assert not decoded.has_alpha
