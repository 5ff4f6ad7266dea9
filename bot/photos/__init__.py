"""Photo intake: per-photo verdicts with reasons, set rules and trainer-ready normalisation.

Pure functions over bytes (no Discord types), shared by the bot, the CLI and the tests::

    rules = PhotoRules.from_settings(settings, class_name="person")
    report = check_photos([PhotoInput(data, name, content_type), ...], rules)
    report.can_train, [(p.verdict, p.reasons, p.message) for p in report.photos]
    [p.normalised for p in report.accepted]   # square sRGB PNGs + sha256 content keys
"""

from __future__ import annotations

from bot.photos.analysis import FACE_MODEL, FaceDetectorUnavailable
from bot.photos.check import (
    check_photo,
    check_photos,
    display_name,
    extend_set,
    normalise_photo,
)
from bot.photos.declared import declared_refusal
from bot.photos.files import expand_paths, printable, read_photo_files
from bot.photos.model import (
    DEFAULT_PERSON_CLASSES,
    NormalisedPhoto,
    PhotoInput,
    PhotoReport,
    PhotoRules,
    Reason,
    SetReport,
    Verdict,
)

__all__ = [
    "DEFAULT_PERSON_CLASSES",
    "FACE_MODEL",
    "FaceDetectorUnavailable",
    "NormalisedPhoto",
    "PhotoInput",
    "PhotoReport",
    "PhotoRules",
    "Reason",
    "SetReport",
    "Verdict",
    "check_photo",
    "check_photos",
    "declared_refusal",
    "display_name",
    "expand_paths",
    "extend_set",
    "normalise_photo",
    "printable",
    "read_photo_files",
]
