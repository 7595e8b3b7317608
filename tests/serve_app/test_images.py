from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps, PngImagePlugin

from deployments.image_input import decode_image
from serve_app.image_pool import _pools, decode_images, decode_pool
from serve_app.images import (
    ImageLimits,
    ImageRejected,
    decode_base64_image,
    open_image,
    probe_image,
    validate_image_bytes,
)

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
    assert decode_base64_image(url, LIMITS).data == decoded.data
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


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb)."""

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


# --- encodings far beyond their pixels, trailing data ------------------------------------------------------


def _with_chunk(png: bytes, kind: bytes, body: bytes) -> bytes:
    """``png`` with one more chunk right after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    return png[:33] + chunk(kind, body) + png[33:]


def _jpeg(image: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **save)
    return buf.getvalue()


def _refused(data: bytes, limits=LIMITS) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        validate_image_bytes(data, limits)
    return info.value


def test_validate_refuses_a_small_png_with_a_huge_private_chunk():
    big = ImageLimits()  # the defaults: 10 MiB images, 256 KiB metadata allowance
    error = _refused(_with_chunk(_png(size=(32, 32)), b"prVt", b"\0" * (9 * 1024 * 1024)), big)
    assert (error.status, error.code) == (422, "image_oversized_encoding")
    assert "for 32x32 pixels (9437196 of them metadata)" in error.message
    assert "at most 2x its raw pixel size (4096 bytes) plus 262144 bytes" in error.message


def test_validate_refuses_a_png_whose_text_chunks_exceed_the_allowance():
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 300_000)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(buf, format="PNG", pnginfo=info)
    error = _refused(buf.getvalue(), ImageLimits())
    assert (error.status, error.code) == (422, "image_oversized_encoding")


def test_validate_accepts_legitimate_metadata_within_the_allowance():
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"
    data = _jpeg(Image.new("RGB", (64, 64), (10, 200, 30)), exif=exif.tobytes(), icc_profile=b"\1" * 60_000)
    assert validate_image_bytes(data, ImageLimits()).format == "JPEG"


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (_png() + b"PK\x03\x04 a zip archive appended", "PNG data (its IEND chunk)"),
        (_jpeg(Image.new("RGB", (64, 48), (1, 2, 3))) + b"\x00" * 100, "JPEG data (its EOI marker)"),
    ],
)
def test_validate_refuses_bytes_after_the_image(data, what):
    error = _refused(data)
    assert (error.status, error.code) == (422, "image_trailing_data")
    assert what in error.message


def test_validate_refuses_bytes_after_the_riff_size_of_a_webp():
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (1, 2, 3)).save(buf, format="WEBP")
    error = _refused(buf.getvalue() + b"smuggled" * 10)
    assert (error.status, error.code) == (422, "image_trailing_data")
    assert "after the end of its WEBP data (its RIFF size)" in error.message


def test_validate_refuses_a_jpeg_whose_app_segment_exceeds_the_allowance():
    app15 = b"\xff\xef" + struct.pack(">H", 60_002) + b"\0" * 60_000  # one APP15 segment of 60 kB
    data = _jpeg(Image.new("RGB", (32, 32), (1, 2, 3)))
    error = _refused(data[:2] + app15 + data[2:], ImageLimits(metadata_allowance=16 * 1024))
    assert (error.status, error.code) == (422, "image_oversized_encoding")
    assert "(60022 of them metadata)" in error.message  # with the 18-byte JFIF APP0 Pillow writes


def test_validate_refuses_a_jpeg_carrying_a_huge_icc_profile_in_many_segments():
    data = _jpeg(Image.new("RGB", (32, 32), (1, 2, 3)), icc_profile=b"\2" * 600_000)
    error = _refused(data, ImageLimits())
    assert (error.status, error.code) == (422, "image_oversized_encoding")


def test_validate_accepts_jpegs_with_stuffing_restarts_and_progressive_scans():
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    no_allowance = ImageLimits(max_bytes=200_000, max_pixels=512 * 512, metadata_allowance=0)
    # quality 100 without chroma subsampling on noise: the largest honest encoding (1.4x the raw pixels)
    for save in ({"quality": 100, "subsampling": 0}, {"progressive": True}, {"restart_marker_blocks": 4}):
        assert validate_image_bytes(_jpeg(noise, **save), no_allowance).format == "JPEG"


def test_validate_measures_16_bit_pngs_at_two_bytes_per_sample():
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 65536, (64, 64), dtype=np.uint16)).save(buf, format="PNG")
    assert len(buf.getvalue()) > 2 * 64 * 64  # more than twice the pixels at one byte each
    decoded = validate_image_bytes(buf.getvalue(), ImageLimits(max_bytes=200_000, metadata_allowance=0))
    assert decoded.format == "PNG"


def test_probe_reads_headers_only():
    header = probe_image(_png(size=(300, 200)), LIMITS)
    assert (header.format, header.width, header.height, header.pixels) == ("PNG", 300, 200, 60_000)


# --- what is stored: re-encoded, upright, no metadata ---------------------------------------------------------


def _png_chunk_types(data: bytes) -> list[bytes]:
    types, position = [], 8
    while position < len(data):
        (length,) = struct.unpack_from(">I", data, position)
        types.append(data[position + 4 : position + 8])
        position += 12 + length
    return types


def test_stored_png_carries_no_metadata_chunks():
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "someone")
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta/>")
    exif = Image.Exif()
    exif[0x0131] = "Editing software 1.0"
    buf = io.BytesIO()
    source = Image.new("RGBA", (64, 48), (250, 10, 10, 255))
    source.save(buf, format="PNG", pnginfo=info, exif=exif.tobytes(), icc_profile=b"\3" * 500, dpi=(300, 300))
    data = _with_chunk(buf.getvalue(), b"prVt", b"secret")
    decoded = validate_image_bytes(data, LIMITS)
    assert _png_chunk_types(decoded.data) == [b"IHDR", b"IDAT", b"IEND"]
    assert b"secret" not in decoded.data
    assert open_image(decoded.data).info == {}
    assert np.array_equal(np.asarray(open_image(decoded.data)), np.asarray(source))  # PNG stays lossless


def test_stored_jpeg_carries_no_exif_icc_xmp_or_comment():
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"
    data = _jpeg(
        Image.new("RGB", (64, 48), (10, 200, 30)),
        exif=exif.tobytes(),
        icc_profile=b"\4" * 3000,
        comment=b"shot at home",
        xmp=b"<x:xmpmeta/>",
    )
    decoded = validate_image_bytes(data, LIMITS)
    stored = Image.open(io.BytesIO(decoded.data))
    assert (decoded.format, decoded.source_format, stored.format) == ("JPEG", "JPEG", "JPEG")
    assert [marker for marker, _ in stored.applist] == ["APP0"]  # JFIF only
    assert not {"exif", "icc_profile", "comment", "xmp"} & set(stored.info)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_stored_image_keeps_the_exif_orientation_in_its_pixels(orientation):
    # left half red, right half blue; a camera held sideways stores it turned and says so in EXIF
    image = Image.new("RGB", (96, 64), (220, 20, 20))
    image.paste(Image.new("RGB", (48, 64), (20, 20, 220)), (48, 0))
    exif = Image.Exif()
    exif[0x0112] = orientation
    original = _jpeg(image, quality=95, exif=exif.tobytes())
    decoded = validate_image_bytes(original, LIMITS)
    assert "exif" not in Image.open(io.BytesIO(decoded.data)).info
    # the model (which applies EXIF orientation itself) sees the same picture either way
    expected, stored = decode_image(original), decode_image(decoded.data)
    assert stored.size == expected.size == (decoded.width, decoded.height)
    difference = np.abs(np.asarray(stored, dtype=int) - np.asarray(expected, dtype=int)).mean()
    assert difference < 3
    assert expected.size == ImageOps.exif_transpose(Image.open(io.BytesIO(original))).size


@pytest.mark.parametrize(
    ("mode", "save", "stored_format"),
    [
        ("RGB", {"format": "PNG"}, "PNG"),
        ("RGB", {"format": "JPEG"}, "JPEG"),
        ("RGB", {"format": "WEBP"}, "JPEG"),
        ("RGBA", {"format": "WEBP", "lossless": True}, "PNG"),
        ("CMYK", {"format": "JPEG"}, "JPEG"),
    ],
)
def test_stored_format_is_lossless_png_for_png_and_alpha_else_jpeg(mode, save, stored_format):
    buf = io.BytesIO()
    color = {"RGB": (200, 10, 10), "RGBA": (200, 10, 10, 128), "CMYK": (0, 200, 200, 0)}[mode]
    Image.new(mode, (64, 48), color).save(buf, **save)
    decoded = validate_image_bytes(buf.getvalue(), LIMITS)
    stored = Image.open(io.BytesIO(decoded.data))
    assert (decoded.format, stored.format) == (stored_format, stored_format)
    assert stored.mode in ("RGB", "RGBA")


def test_stored_palette_png_keeps_its_transparency():
    image = Image.new("P", (64, 48), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (16, 12, 48, 36))
    buf = io.BytesIO()
    image.save(buf, format="PNG", transparency=0)
    decoded = validate_image_bytes(buf.getvalue(), LIMITS)
    assert decoded.has_alpha
    stored = open_image(decoded.data)
    assert stored.convert("RGBA").getchannel("A").getbbox() == (16, 12, 48, 36)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
def test_validate_accepts_a_jpeg_with_a_damaged_exif_block():
    data = _jpeg(Image.new("RGB", (64, 48), (10, 200, 30)))
    app1 = b"Exif\0\0" + b"MM\0*\xff\xff\xff\xff garbage"
    damaged = data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]
    decoded = validate_image_bytes(damaged, LIMITS)  # costs the rotation, not the upload
    assert (decoded.width, decoded.height) == (64, 48)
    assert "exif" not in Image.open(io.BytesIO(decoded.data)).info


# --- the decode pool ------------------------------------------------------------------------------------------


async def test_decode_images_reports_the_first_refused_item_by_position():
    payloads = [(_png(), "items[0].image"), (_png() + b"x", "items[1].image"), (b"junk", "items[2].image")]
    with pytest.raises(ImageRejected) as info:
        await decode_images(payloads, LIMITS, workers=3)
    assert (info.value.code, info.value.message[:16]) == ("image_trailing_data", "'items[1].image'")


async def test_decode_images_runs_in_a_bounded_named_pool():
    decoded = await decode_images([(_png(size=(32 + i, 32)), f"items[{i}].image") for i in range(6)], LIMITS, 2)
    assert [image.width for image in decoded] == [32, 33, 34, 35, 36, 37]  # in order
    assert decode_pool(2) is decode_pool(2)
    # the work ran in the pool's threads, at most as many as asked for
    pool = decode_pool(2)
    assert 1 <= len(pool._threads) <= 2 == pool._max_workers
    assert all(thread.name.startswith("orfeas-decode") for thread in pool._threads)
    assert pool in _pools.values()


def _mpo(*images: Image.Image) -> bytes:
    buf = io.BytesIO()
    images[0].save(buf, format="MPO", save_all=True, append_images=list(images[1:]))
    return buf.getvalue()


def test_validate_accepts_a_phone_multi_picture_jpeg_keeping_the_first_picture():
    # phone cameras write MPO (a JPEG followed by preview / depth pictures); Pillow names it MPO, not JPEG
    first, preview = Image.new("RGB", (64, 48), (200, 20, 20)), Image.new("RGB", (32, 24), (20, 200, 20))
    data = _mpo(first, preview)
    assert Image.open(io.BytesIO(data)).format == "MPO"
    decoded = validate_image_bytes(data, LIMITS)
    assert (decoded.format, decoded.source_format, decoded.width, decoded.height) == ("JPEG", "MPO", 64, 48)
    with Image.open(io.BytesIO(decoded.data)) as stored:
        assert stored.format == "JPEG" and getattr(stored, "n_frames", 1) == 1
        red, green, _ = stored.convert("RGB").getpixel((32, 24))
        assert red > 150 and green < 80  # the first picture, not the preview


def test_validate_refuses_bytes_after_the_last_picture_of_an_mpo():
    data = _mpo(Image.new("RGB", (64, 48), (200, 20, 20)), Image.new("RGB", (32, 24), (20, 200, 20)))
    refused = _refused(data + b"smuggled" * 100)
    assert (refused.status, refused.code) == (422, "image_trailing_data")
