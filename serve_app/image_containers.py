"""Walking an image file's container (PNG chunks, JPEG segments, WebP RIFF chunks) without decoding pixels.

Pillow stops reading at the end of the image data and never says what came after it, nor how many bytes sat
in metadata. Both matter at the edge: bytes appended after PNG ``IEND`` / JPEG ``EOI`` / the RIFF size are
smuggled data, and a tiny image carrying megabytes of ancillary chunks fills disks. The walks here are cheap
(chunk headers; for JPEG a ``find`` over the entropy-coded data for markers) and never raise: damage they
cannot follow is left for the decoder to report.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# RIFF chunks that hold pixels (or the frame and canvas layout); anything else is metadata (ICCP, EXIF, XMP)
_WEBP_IMAGE_CHUNKS = {b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF"}
# JPEG markers that stand alone (no length field): TEM and the restart markers RST0-7
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}


@dataclass(frozen=True)
class Container:
    """``end``: offset just past the image's last structure (``len(data)`` when unknown: nothing counts as
    trailing); ``metadata_bytes``: bytes in ancillary chunks / APPn and COM segments / non-image RIFF chunks;
    ``bytes_per_sample``: 2 for 16-bit PNGs (Pillow reports them as 8-bit modes), else 1."""

    end: int
    metadata_bytes: int = 0
    bytes_per_sample: int = 1

    def trailing_bytes(self, size: int) -> int:
        return max(0, size - self.end)


def walk(data: bytes, image_format: str) -> Container:
    """The container of ``data``, which Pillow identified as ``image_format`` (PNG, JPEG, MPO or WEBP)."""
    if image_format == "PNG":
        return _png(data)
    if image_format == "JPEG":
        return _jpeg(data)
    if image_format == "MPO":
        return _mpo(data)
    if image_format == "WEBP":
        return _webp(data)
    return Container(len(data))


def _png(data: bytes) -> Container:
    position, metadata, sample_bytes = len(_PNG_SIGNATURE), 0, 1
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 12 + length  # length, type, body, CRC
        if kind == b"IHDR" and length >= 13:
            sample_bytes = 2 if data[position + 16] == 16 else 1
        if kind[:1].islower():  # ancillary chunk (tEXt, zTXt, iCCP, eXIf, private ones...)
            metadata += 12 + length
        if kind == b"IEND":
            return Container(end, metadata, sample_bytes)
        position = end
    return Container(len(data), metadata, sample_bytes)  # truncated: the decoder says so


def _jpeg(data: bytes) -> Container:
    size, position, metadata = len(data), 2, 0
    while position + 1 < size:
        if data[position] != 0xFF:
            return Container(size, metadata)  # not a marker where one must be: damage, left to the decoder
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker == 0xD9:  # EOI
            return Container(position + 2, metadata)
        if marker in _JPEG_STANDALONE:
            position += 2
            continue
        if position + 4 > size:
            break
        (length,) = struct.unpack_from(">H", data, position + 2)
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:  # APP0-15 (EXIF, ICC, XMP, ...) and COM
            metadata += 2 + length
        position += 2 + length
        if marker == 0xDA:  # SOS: entropy-coded data runs to the next marker that is not a stuffed FF00 or RSTn
            position = _end_of_scan(data, position)
    return Container(size, metadata)


def _mpo(data: bytes) -> Container:
    """Multi-picture JPEG (CIPA DC-007; most phone cameras): the first JPEG, then further complete JPEG
    streams (previews, depth maps, stereo frames) back to back. Those count as metadata: only the first
    picture is kept. Anything after the last complete stream is trailing data."""
    first = _jpeg(data)
    end, metadata = first.end, first.metadata_bytes
    while data[end : end + 2] == b"\xff\xd8":
        picture = _jpeg(data[end:])
        if end + picture.end >= len(data) and not data[: end + picture.end].endswith(b"\xff\xd9"):
            break  # an unfinished stream: the decoder of the first picture does not care, nor do we
        metadata += picture.end
        end += picture.end
    return Container(end, metadata)


def _end_of_scan(data: bytes, position: int) -> int:
    while True:
        position = data.find(b"\xff", position)
        if position < 0 or position + 1 >= len(data):
            return len(data)
        following = data[position + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:
            position += 2
        elif following == 0xFF:
            position += 1
        else:
            return position


def _webp(data: bytes) -> Container:
    if len(data) < 12:
        return Container(len(data))
    (riff_size,) = struct.unpack_from("<I", data, 4)
    end, position, metadata = 8 + riff_size, 12, 0
    while position + 8 <= min(end, len(data)):
        kind, length = struct.unpack_from("<4sI", data, position)
        chunk = 8 + length + (length & 1)  # chunks are padded to an even size
        if kind not in _WEBP_IMAGE_CHUNKS:
            metadata += chunk
        position += chunk
    return Container(end, metadata)
