"""Pixel work: bounded decoding, orientation, colour, cropping and the trainer's PNG.

Everything is shaped by two facts: phone photos are large (12 MP JPEGs are decoded at 1/4 scale
straight from the DCT), and the trainer wants plain square 8-bit sRGB with no metadata at all.
"""

from __future__ import annotations

import hashlib
import io

import cv2
import numpy as np
from PIL import Image, ImageCms

from bot.photos.analysis import Face
from bot.photos.heif import register_heif
from bot.photos.model import NormalisedPhoto

__all__ = [
    "Decoded",
    "decode",
    "encode_png",
    "orientation",
    "prepare",
    "square_crop",
]

ORIENTATION_TAG = 0x0112
_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
# OpenCV's libpng at zlib level 1, run-length strategy, the "up" row filter only: on 512 px
# photos that is 3-4x faster than Pillow's PNG writer (whose adaptive filtering tries every filter
# on every row) for files about 5% larger; and it writes no metadata chunks at all.
_PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_RLE,
]
_PNG_FILTER = getattr(cv2, "IMWRITE_PNG_FILTER", None)  # OpenCV >= 4.10
if _PNG_FILTER is not None:
    _PNG_PARAMS += [_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]

Decoded = tuple[Image.Image, int | None]


def decode(data: bytes, fmt: str, min_side: int, size: tuple[int, int]) -> Decoded:
    """Fully decode the first frame at the smallest scale whose shorter side is >= ``min_side``.

    ``size`` is what our own header parser read; a file whose decoder sees another size (a JPEG
    with a second, larger frame header) is refused, so the pixel limit checked earlier holds.
    Returns the image and, for formats that can animate, the frame count. A full decode is what
    catches truncated and corrupt data; for JPEG, ``draft`` has libjpeg scale in the DCT (1/2,
    1/4, 1/8), so it still reads every entropy-coded byte but never builds the 12 MP bitmap.
    """
    if fmt == "HEIF":
        register_heif()
    image = Image.open(io.BytesIO(data), formats=[fmt])
    if fmt == "HEIF":
        # libheif applies the container's crop (clap) and mirror too, so the picture may come
        # out smaller than the size our parser read, never larger.
        if any(got > said for got, said in zip(sorted(image.size), sorted(size), strict=True)):
            raise ValueError(f"header says {size}, decoder says {image.size}")
    elif image.size != size:
        raise ValueError(f"header says {size}, decoder says {image.size}")
    # A JPEG holding several pictures is an MPO (phones add depth maps, previews), and a HEIC
    # may hold a burst: the primary picture is the photo.
    frames = getattr(image, "n_frames", 1) if fmt not in ("JPEG", "HEIF") else None
    if fmt == "JPEG":
        width, height = image.size
        short = min(width, height)
        if short > min_side:
            scale = min_side / short
            image.draft(None, (max(1, int(width * scale)), max(1, int(height * scale))))
    image.load()
    return image, frames


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8); 1 when absent or unreadable."""
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # Pillow raises many kinds on hostile EXIF; orientation is then unknown
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def prepare(image: Image.Image, side: int, turn: int) -> Image.Image:
    """Decoded image to upright 8-bit sRGB RGB whose shorter side is at most ``side``.

    Alpha is flattened on white before resizing (transparent pixels carry arbitrary colours that
    would otherwise bleed into edges); the embedded colour profile, if any, is applied last, on
    the small image, since phones tag photos Display P3 and dropping the profile dulls them.
    """
    icc = image.info.get("icc_profile")
    if image.mode in ("LA", "La"):
        icc = None  # a grey profile does not fit the RGB image that flattening makes
    small = _shrink(_flatten(_reduce(_to_8bit(image), side)), side)
    if turn in _TRANSPOSE:
        small = small.transpose(_TRANSPOSE[turn])
    return _to_srgb(small, icc if isinstance(icc, bytes) else None)


def _to_8bit(image: Image.Image) -> Image.Image:
    """Any decoded mode to RGB, RGBA, L, LA or CMYK with 8 bits per channel.

    16-bit greys are scaled (a plain convert would clip every value above 255 to white).
    """
    mode = image.mode
    if mode in ("RGB", "RGBA", "L", "LA", "CMYK"):
        return image
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        return image.convert("RGBA" if has_alpha else "RGB")
    if mode == "1":
        return image.convert("L")
    if mode.startswith(("I", "F")):
        values = np.asarray(image)
        if values.dtype.kind == "u" and values.dtype.itemsize == 2:  # 16-bit: keep the high byte
            grey = (values >> 8).astype(np.uint8)
        else:
            peak = float(values.max()) if values.size else 0.0
            if peak > 255:
                values = values.astype(np.float32) * (255.0 / (65535.0 if peak <= 65535 else peak))
            grey = np.clip(values, 0, 255).astype(np.uint8)
        grey = np.ascontiguousarray(grey)
        return Image.frombytes("L", (grey.shape[1], grey.shape[0]), grey.tobytes())
    return image.convert("RGBA" if "A" in mode or "a" in mode else "RGB")


def _reduce(image: Image.Image, side: int) -> Image.Image:
    """Box-reduce by a whole factor while the shorter side stays >= ``side``, first of all.

    A 50 MP PNG or WebP arrives at full size (only JPEG can be decoded smaller); reducing it
    before any other step keeps every later copy small (measured: a 48 MP RGBA PNG needed 900 MB
    without this). Alpha is premultiplied so transparent pixels' hidden colours do not bleed.
    """
    factor = min(image.size) // side
    if factor < 2:
        return image
    if image.mode in ("RGBA", "LA"):
        premultiplied = image.convert("RGBa" if image.mode == "RGBA" else "La")
        return premultiplied.reduce(factor).convert(image.mode)
    return image.reduce(factor)


def _flatten(image: Image.Image) -> Image.Image:
    """RGBA and LA composited on white, so what is transparent in the photo trains as white."""
    if image.mode not in ("RGBA", "LA"):
        return image
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _shrink(image: Image.Image, side: int) -> Image.Image:
    """Area-average down to a shorter side of ``side`` (OpenCV: ~4x faster than Pillow Lanczos
    here, and area averaging is the right filter for large reductions)."""
    width, height = image.size
    short = min(width, height)
    if short <= side:
        return image
    scale = side / short
    size = (
        side if width == short else max(side, round(width * scale)),
        side if height == short else max(side, round(height * scale)),
    )
    pixels = cv2.resize(np.asarray(image), size, interpolation=cv2.INTER_AREA)
    return Image.frombytes(image.mode, size, np.ascontiguousarray(pixels).tobytes())


def _to_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass  # a broken profile is no reason to refuse a photo: fall back to the raw values
    return image if image.mode == "RGB" else image.convert("RGB")


def square_crop(width: int, height: int, face: Face | None) -> tuple[int, int, int, int]:
    """The largest square, centred on the face when there is one (else on the image), kept
    inside the picture."""
    side = min(width, height)
    cx, cy = face.centre if face is not None else (width / 2, height / 2)
    left = round(min(max(cx - side / 2, 0), width - side))
    top = round(min(max(cy - side / 2, 0), height - side))
    return left, top, left + side, top + side


def encode_png(image: Image.Image, size: int) -> NormalisedPhoto:
    """Resize a square to ``size`` and encode it as the trainer's PNG, with its content key."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    # Only the pixels go to the encoder: no EXIF, GPS, ICC, XMP or text chunk can reach the file.
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    ok, encoded = cv2.imencode(".png", bgr, _PNG_PARAMS)
    if not ok:
        raise ValueError("PNG encoding failed")
    data = encoded.tobytes()
    return NormalisedPhoto(data=data, sha256=hashlib.sha256(data).hexdigest(), size=size)
