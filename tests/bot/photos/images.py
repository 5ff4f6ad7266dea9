"""Image factories for the photo tests: every file is generated here, with real Pillow.

Nothing is mocked: photos are drawn, encoded and, where a hostile file needs bytes Pillow would
never write (a header bomb, a 16-bit RGB PNG), assembled by hand from the format's spec.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "draw_face",
    "encode",
    "face_photo",
    "flat",
    "header_bomb_png",
    "png_chunks",
    "png_from_rows",
    "textured_photo",
]


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    """Encode with Pillow; JPEG defaults to quality 90 like a phone."""
    if fmt == "JPEG":
        params.setdefault("quality", 90)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def textured_photo(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A sharp, photo-like picture that differs in layout for every seed (so hashes differ)."""
    rng = np.random.default_rng(seed)
    width, height = size
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(25):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(width // 30, width // 6))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        else:
            draw.rectangle([x - r, y - r // 2, x + r, y + r // 2], fill=colour)
    grain = rng.integers(-10, 11, (height, width, 1), dtype=np.int16)
    pixels = np.clip(np.asarray(image, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def flat(size: tuple[int, int] = (768, 576), value: int = 128) -> Image.Image:
    return Image.new("RGB", size, (value, value, value))


def draw_face(draw: ImageDraw.ImageDraw, cx: float, cy: float, width: float) -> None:
    """A cartoon frontal face with the light/dark layout a Haar face cascade keys on: dark hair
    and brows above bright skin, dark eyes either side of a bright nose bridge, a darker mouth."""
    h = width * 1.3
    draw.ellipse([cx - width * 0.56, cy - h * 0.58, cx + width * 0.56, cy + h * 0.1], (45, 30, 20))
    draw.ellipse([cx - width / 2, cy - h * 0.45, cx + width / 2, cy + h / 2], (205, 165, 135))
    ey, ex, er = cy - h * 0.08, width * 0.2, width * 0.075
    for side in (-1, 1):
        ox = cx + side * ex
        draw.ellipse([ox - er * 2.2, ey - er * 3.3, ox + er * 2.2, ey - er * 2.3], (70, 45, 30))
        draw.ellipse([ox - er * 1.8, ey - er, ox + er * 1.8, ey + er], (235, 235, 235))
        draw.ellipse([ox - er, ey - er, ox + er, ey + er], (50, 30, 20))
    draw.polygon(
        [(cx, ey), (cx - er * 1.1, cy + h * 0.14), (cx + er * 1.1, cy + h * 0.14)], (175, 130, 105)
    )
    draw.ellipse(
        [cx - width * 0.17, cy + h * 0.24, cx + width * 0.17, cy + h * 0.31], (140, 60, 60)
    )


def face_photo(
    faces: list[tuple[float, float, float]],
    size: tuple[int, int] = (800, 600),
    background: tuple[int, int, int] = (110, 130, 160),
    blur: float = 0.6,
) -> Image.Image:
    """A picture with a face at each (centre x, centre y, face width), softened like a lens."""
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    for cx, cy, width in faces:
        draw_face(draw, cx, cy, width)
    return image.filter(ImageFilter.GaussianBlur(blur)) if blur else image


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def header_bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid-looking PNG header claiming width x height, with a tiny IDAT: a few hundred bytes
    that would need gigabytes if anything believed the header and decoded it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def png_from_rows(pixels: np.ndarray, colour_type: int) -> bytes:
    """A PNG written from the spec: big-endian 16-bit samples, filter 0 on every row.

    Pillow cannot write 16-bit RGB, and phones and scanners do produce it.
    """
    height, width = pixels.shape[:2]
    depth = 16 if pixels.dtype == np.uint16 else 8
    rows = pixels.astype(">u2" if depth == 16 else "u1").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def png_chunks(data: bytes) -> list[bytes]:
    """The chunk types of a PNG, in order."""
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    kinds, pos = [], 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kinds.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return kinds
