"""Measurements on a decoded, downscaled photo: sharpness, perceptual hash and faces.

All of them run on a greyscale copy whose shorter side is ``ANALYSIS_SIDE`` pixels (or less for a
smaller photo), which keeps them fast and makes their numbers comparable between a 12-megapixel
phone photo and a 600-pixel screenshot.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
from numpy.typing import NDArray

from storage.errors import ConfigError

__all__ = [
    "ANALYSIS_SIDE",
    "FACE_MODEL",
    "Face",
    "FaceDetectorUnavailable",
    "detect_faces",
    "hamming",
    "perceptual_hash",
    "sharpness",
    "to_analysis_scale",
]

Grey = NDArray[np.uint8]

# Shorter side of the greyscale copy every measurement runs on. Faces that matter are at least
# 10% of it (25 px, just above the cascade's 24 px window); blur below this scale is invisible
# after training at 512 px anyway.
ANALYSIS_SIDE = 256

# OpenCV's frontal-face Haar cascade. Its XML ships inside the opencv-python-headless 4.x wheel
# (cv2.data.haarcascades), so nothing is downloaded at run time; OpenCV 5 dropped both the files
# and CascadeClassifier, hence the pin below 5. YuNet (cv2.FaceDetectorYN) is more accurate but
# needs an ONNX file that no wheel ships. On the 256 px analysis copy the cascade takes 10-30 ms
# on one core and answers what we ask: is there one clear, roughly frontal face.
FACE_MODEL = "haarcascade_frontalface_default.xml"
# Faces narrower than this share of the shorter side are background people, not the subject.
_MIN_FACE_SHARE = 0.10
# A face counts towards "several faces" when it is at least this share of the largest face's width.
_COMPANION_FACE_SHARE = 0.5


class FaceDetectorUnavailable(ConfigError):
    """The installed OpenCV has no Haar cascades (OpenCV 5 dropped them); pin opencv < 5."""


@dataclass(frozen=True, slots=True)
class Face:
    """A detected face box in the coordinates of the image it was found in."""

    x: int
    y: int
    width: int
    height: int

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x + self.width / 2, self.y + self.height / 2)


def to_analysis_scale(grey: Grey) -> Grey:
    """Shrink (never enlarge) so the shorter side is ``ANALYSIS_SIDE``."""
    height, width = grey.shape
    short = min(height, width)
    if short <= ANALYSIS_SIDE:
        return grey
    scale = ANALYSIS_SIDE / short
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(cv2.resize(grey, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)


def sharpness(grey: Grey, tiles: int = 4) -> float:
    """Contrast-normalised focus score: var(Laplacian) / var(image), over a grid of tiles.

    Run at analysis scale. Dividing by the image variance makes a dim or low-contrast photo as
    sharp as a bright one; taking the 90th-percentile tile lets a portrait with a blurred
    background pass on its face. A blank tile (almost no variance) says nothing about focus and
    is skipped; an image with no informative tile at all scores 0. Measured on real photographs
    at 256 px: sharp ones score about 1 to 6; after a Gaussian blur of sigma 2 px at 512 px,
    0.09 to 0.55; sigma 5 px, 0.01 to 0.19.
    """
    height, width = grey.shape
    lap = cv2.Laplacian(grey, cv2.CV_32F, ksize=1)
    img = grey.astype(np.float32)
    scores: list[float] = []
    for ty in range(tiles):
        for tx in range(tiles):
            ys = slice(ty * height // tiles, (ty + 1) * height // tiles)
            xs = slice(tx * width // tiles, (tx + 1) * width // tiles)
            tile_var = float(img[ys, xs].var())
            if tile_var < 4.0:  # std below 2 grey levels: flat
                continue
            scores.append(float(lap[ys, xs].var()) / tile_var)
    if not scores:
        return 0.0
    return float(np.percentile(scores, 90))


def perceptual_hash(grey: Grey) -> int:
    """63-bit DCT hash (pHash): the sign of the 8x8 lowest frequencies against their median.

    Survives resizing, re-encoding, mild blur and colour changes, which is exactly a re-sent copy.
    """
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()[1:]  # drop the DC term: overall brightness
    bits = low > np.median(low)
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return (a ^ b).bit_count()


class _Cascade(Protocol):
    """The part of ``cv2.CascadeClassifier`` we use (typed here: OpenCV 5 no longer has it)."""

    def empty(self) -> bool: ...

    def detectMultiScale(
        self, image: Grey, scaleFactor: float, minNeighbors: int, minSize: tuple[int, int]
    ) -> Sequence[Sequence[int]]: ...


_local = threading.local()


def _cascade() -> _Cascade:
    """One classifier per thread: detectMultiScale is not safe to share across threads."""
    cascade: _Cascade | None = getattr(_local, "cascade", None)
    if cascade is not None:
        return cascade
    factory: Callable[[str], _Cascade] | None = getattr(cv2, "CascadeClassifier", None)
    root = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if factory is None or not root or not (Path(root) / FACE_MODEL).is_file():
        raise FaceDetectorUnavailable(
            f"OpenCV {cv2.__version__} ships no Haar face cascade; install opencv-python-headless<5"
        )
    cascade = factory(str(Path(root) / FACE_MODEL))
    if cascade.empty():
        raise FaceDetectorUnavailable(f"OpenCV could not load {FACE_MODEL}")
    _local.cascade = cascade
    return cascade


def detect_faces(grey: Grey) -> list[Face]:
    """Faces that matter in a photo, largest first.

    Tiny faces (people in the background) are ignored and so are faces much smaller than the main
    one, so a holiday snap with strangers behind the subject still counts as one face.
    """
    height, width = grey.shape
    min_side = max(24, int(min(height, width) * _MIN_FACE_SHARE))
    # scaleFactor 1.2 and 5 neighbours: on sample photos (coins, the moon) 1.1 found faces that
    # are not there; 1.2 still finds a frontal face at every size we tried and is ~2x faster.
    boxes = _cascade().detectMultiScale(
        grey, scaleFactor=1.2, minNeighbors=5, minSize=(min_side, min_side)
    )
    faces = sorted(
        (Face(int(x), int(y), int(w), int(h)) for x, y, w, h in boxes),
        key=lambda f: f.width * f.height,
        reverse=True,
    )
    kept: list[Face] = []
    for face in faces:
        cx, cy = face.centre
        nested = any(k.x <= cx <= k.x + k.width and k.y <= cy <= k.y + k.height for k in kept)
        if not nested and (not kept or face.width >= kept[0].width * _COMPANION_FACE_SHARE):
            kept.append(face)
    return kept
