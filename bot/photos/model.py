"""Value types of photo intake: rules in, verdicts and normalised photos out.

Everything here is a frozen dataclass or a ``StrEnum`` so reports can be passed between threads,
compared in tests and turned into JSON without surprises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from storage.errors import InvalidArgument

if TYPE_CHECKING:
    from bot.config import BotSettings

__all__ = [
    "DEFAULT_PERSON_CLASSES",
    "NormalisedPhoto",
    "PhotoInput",
    "PhotoReport",
    "PhotoRules",
    "Reason",
    "SetReport",
    "Verdict",
]

DEFAULT_PERSON_CLASSES: frozenset[str] = frozenset(
    {"person", "man", "woman", "boy", "girl", "face", "child", "baby"}
)


class Verdict(StrEnum):
    """What happens to a photo (or a set): used as is, used with a note, or left out."""

    OK = "ok"
    WARN = "warn"
    REJECT = "reject"


class Reason(StrEnum):
    """Stable reason codes shared by the bot, the CLI, the JSON output and the tests."""

    NOT_IMAGE = "not_image"
    CORRUPT = "corrupt"
    ANIMATED = "animated"
    TOO_SMALL = "too_small"
    TOO_LARGE_BYTES = "too_large_bytes"
    TOO_MANY_PIXELS = "too_many_pixels"
    ASPECT_RATIO = "aspect_ratio"
    DUPLICATE = "duplicate"
    BLURRY = "blurry"
    NO_FACE = "no_face"
    MULTIPLE_FACES = "multiple_faces"
    # set-level
    TOO_FEW_PHOTOS = "too_few_photos"
    TOO_MANY_PHOTOS = "too_many_photos"


@dataclass(frozen=True, slots=True)
class PhotoRules:
    """Everything the checks need to know, decoupled from ``BotSettings`` so tests and the CLI can
    build it directly.

    Thresholds that are not settings live here with their reasons so they can be tuned in one place.
    """

    class_name: str = "person"
    resolution: int = 512
    min_photos: int = 3
    max_photos: int = 25
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 50_000_000
    person_classes: frozenset[str] = DEFAULT_PERSON_CLASSES
    # Beyond 3:1 a centred square keeps under a third of the picture: the subject is usually lost.
    max_aspect: float = 3.0
    # Past 2:1 the square crop still works but throws away most of the frame, so say so.
    warn_aspect: float = 2.0
    # Sharpness (see bot.photos.analysis.sharpness): sharp photographs score about 1 or more; a
    # blur of sigma 2 px at 512 px brings typical ones near 0.1, sigma 5 px below 0.05.
    blur_reject: float = 0.05
    blur_warn: float = 0.15
    # Bits (of 63) by which two perceptual hashes may differ and still be "the same photo".
    duplicate_distance: int = 8

    def __post_init__(self) -> None:
        if self.resolution < 64:
            raise InvalidArgument("resolution must be at least 64")
        if self.min_photos < 1 or self.min_photos > self.max_photos:
            raise InvalidArgument("min_photos must be between 1 and max_photos")
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise InvalidArgument("max_bytes and max_pixels must be positive")
        if not 1.0 <= self.warn_aspect <= self.max_aspect:
            raise InvalidArgument("warn_aspect must be between 1 and max_aspect")

    @classmethod
    def from_settings(
        cls,
        settings: BotSettings,
        *,
        class_name: str = "person",
        resolution: int | None = None,
        max_bytes: int | None = None,
    ) -> PhotoRules:
        """Rules for one training set; ``max_bytes`` is Discord's attachment limit when known."""
        return cls(
            class_name=class_name.strip().lower(),
            resolution=resolution if resolution is not None else settings.train_resolution,
            min_photos=settings.photos_min,
            max_photos=settings.photos_max,
            max_bytes=min(settings.photo_max_bytes, max_bytes or settings.photo_max_bytes),
            max_pixels=settings.photo_max_pixels,
            person_classes=settings.person_class_set,
        )

    @property
    def min_side(self) -> int:
        """Shortest acceptable side: 3/4 of the training resolution (384 px for 512)."""
        return (self.resolution * 3 + 3) // 4

    @property
    def needs_face(self) -> bool:
        """Person-like classes must show exactly one face; a dog or a mug need not."""
        return self.class_name.strip().lower() in self.person_classes


@dataclass(frozen=True, slots=True)
class PhotoInput:
    """One uploaded photo. ``name`` and ``content_type`` are what the sender claimed: shown to
    people, never used as a path, and trusted only to refuse (a declared video is not fetched;
    a declared image is still judged by its bytes)."""

    data: bytes
    name: str = ""
    content_type: str | None = None
    # Why the bytes could not be fetched (a failed download, an unreadable file): the photo is
    # then reported as unreadable instead of silently dropped, so the set still lists it.
    read_error: str | None = None
    # The size the sender's platform declared before download (a Discord attachment's size):
    # a photo declared too large is refused without its bytes ever being fetched.
    declared_size: int | None = None


@dataclass(frozen=True, slots=True)
class NormalisedPhoto:
    """What the trainer consumes: a square 8-bit RGB PNG without metadata, and its content key."""

    data: bytes
    sha256: str
    size: int
    media_type: str = "image/png"
    extension: str = ".png"


@dataclass(frozen=True, slots=True)
class PhotoReport:
    """The verdict on one photo, in the input order of its set (``index`` from 0)."""

    index: int
    name: str
    verdict: Verdict
    reasons: tuple[Reason, ...] = ()
    message: str = ""
    format: str | None = None
    width: int | None = None
    height: int | None = None
    faces: int | None = None
    sharpness: float | None = None
    phash: int | None = field(default=None, repr=False)
    normalised: NormalisedPhoto | None = field(default=None, repr=False)

    @property
    def accepted(self) -> bool:
        """Accepted photos (``ok`` or ``warn``) are trained on."""
        return self.verdict is not Verdict.REJECT


@dataclass(frozen=True, slots=True)
class SetReport:
    """Every photo's verdict in input order, plus whether the set as a whole can train."""

    photos: tuple[PhotoReport, ...]
    verdict: Verdict
    reasons: tuple[Reason, ...]
    message: str

    @property
    def can_train(self) -> bool:
        return self.verdict is not Verdict.REJECT

    @property
    def accepted(self) -> tuple[PhotoReport, ...]:
        return tuple(p for p in self.photos if p.accepted)
