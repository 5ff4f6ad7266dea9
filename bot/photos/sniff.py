"""Recognise a file from its first bytes and read image dimensions from the header alone.

Names and declared content types are attacker-controlled, so the format is taken from the
content. Dimensions are parsed here, by hand, so that a decompression bomb (a tiny file claiming
30000 x 30000 pixels) is refused before any decoder allocates anything; Pillow's own
``MAX_IMAGE_PIXELS`` guard is only a second line.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.photos.heif import BRANDS as _HEIF_BRANDS
from bot.photos.heif import heif_size

__all__ = ["SUPPORTED_FORMATS", "Sniffed", "header_size", "sniff"]

# Pillow format names we decode. GIF is read only to tell people an animation is not a photo;
# a single-frame GIF is accepted like any other picture. HEIF (the iPhone's HEIC) is decoded by
# pillow-heif.
SUPPORTED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP", "GIF", "HEIF"})

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})


@dataclass(frozen=True, slots=True)
class Sniffed:
    """What the content says the file is. ``format`` is Pillow's name when we can decode it."""

    format: str | None
    description: str


def sniff(data: bytes) -> Sniffed:
    """Identify ``data`` by magic numbers; describe unsupported kinds in words a person knows."""
    head = data[:64]
    if head.startswith(b"\xff\xd8\xff"):
        return Sniffed("JPEG", "a JPEG image")
    if head.startswith(_PNG_SIGNATURE):
        return Sniffed("PNG", "a PNG image")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return Sniffed("WEBP", "a WebP image")
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return Sniffed("GIF", "a GIF image")
    if head[4:8] == b"ftyp":
        return _sniff_ftyp(data)
    if head.startswith(b"%PDF"):
        return Sniffed(None, "a PDF document")
    if head.startswith(b"BM"):
        return Sniffed(None, "a BMP image (not supported)")
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return Sniffed(None, "a TIFF image (not supported)")
    if head.startswith(b"PK\x03\x04"):
        return Sniffed(None, "a ZIP archive or office document")
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if stripped.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return Sniffed(None, "a web page (HTML)")
    if stripped.startswith((b"<?xml", b"<svg")):
        return Sniffed(None, "an XML or SVG file")
    if _looks_like_text(data[:4096]):
        return Sniffed(None, "a text file")
    return Sniffed(None, "not a kind of image we recognise")


def _sniff_ftyp(data: bytes) -> Sniffed:
    """An ISO base media file: a HEIC photo, an AVIF image, or a video (MP4, MOV, 3GP).

    The major brand decides, except for the generic HEIF brands (mif1, msf1), which AVIF
    files use too: their compatible brands tell the codec.
    """
    size = int.from_bytes(data[:4], "big")
    brand = data[8:12]
    compatible = {data[i : i + 4] for i in range(16, min(max(size, 16), 64, len(data)) - 3, 4)}
    if brand in _AVIF_BRANDS or (
        brand in (b"mif1", b"msf1") and compatible & _AVIF_BRANDS and b"heic" not in compatible
    ):
        return Sniffed(None, "an AVIF image (not supported)")
    if brand in _HEIF_BRANDS:
        return Sniffed("HEIF", "a HEIC photo")
    return Sniffed(None, "a video or other media file")


def _looks_like_text(sample: bytes) -> bool:
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character may be cut at the end of the sample.
        try:
            text = sample[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return bool(text) and all(c.isprintable() or c in "\t\r\n\f" for c in text)


def header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) from the header of a sniffed image, or None when the header is broken."""
    try:
        if fmt == "PNG":
            return _png_size(data)
        if fmt == "JPEG":
            return _jpeg_size(data)
        if fmt == "WEBP":
            return _webp_size(data)
        if fmt == "GIF":
            return _gif_size(data)
        if fmt == "HEIF":
            return heif_size(data)
    except IndexError:
        return None
    return None


def _positive(width: int, height: int) -> tuple[int, int] | None:
    return (width, height) if width > 0 and height > 0 else None


def _png_size(data: bytes) -> tuple[int, int] | None:
    # Signature, then the IHDR chunk must come first: length 13, type, width, height (big-endian).
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return _positive(int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"))


def _gif_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 10:
        return None
    return _positive(int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little"))


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the marker segments up to the first start-of-frame; never enter entropy-coded data."""
    pos = 2
    end = len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            if pos + 9 > end:
                return None
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return _positive(width, height)
        pos += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    body = 20
    if chunk == b"VP8X":
        width = int.from_bytes(data[body + 4 : body + 7], "little") + 1
        height = int.from_bytes(data[body + 7 : body + 10], "little") + 1
        return (width, height) if len(data) >= body + 10 else None
    if chunk == b"VP8 ":
        # Lossy: 3-byte frame tag, start code 9D 01 2A, then 14-bit width and height.
        if data[body + 3 : body + 6] != b"\x9d\x01\x2a":
            return None
        width = int.from_bytes(data[body + 6 : body + 8], "little") & 0x3FFF
        height = int.from_bytes(data[body + 8 : body + 10], "little") & 0x3FFF
        return _positive(width, height)
    if chunk == b"VP8L":
        # Lossless: signature 0x2F, then 14 bits width-1 and 14 bits height-1.
        if data[body] != 0x2F:
            return None
        bits = int.from_bytes(data[body + 1 : body + 5], "little")
        return ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    return None
