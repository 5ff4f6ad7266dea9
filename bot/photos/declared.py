"""What can be refused before download, from what the sender's platform declares: the size and
the content type of an attachment.

A declaration is trusted only to refuse: a file declared as a 40 MB video is not fetched at all,
while one declared as an image is still judged by its bytes once downloaded (the format always
comes from the content, see :mod:`bot.photos.sniff`).
"""

from __future__ import annotations

from bot.photos.model import PhotoInput, PhotoRules, Reason

__all__ = ["SEND_INSTEAD", "declared_refusal", "megabytes"]

SEND_INSTEAD = "send a JPEG, PNG, WebP or HEIC photo instead"

# Declared types that say nothing either way: the bytes decide.
_UNDECIDED = frozenset({"", "application/octet-stream", "binary/octet-stream"})
_KINDS = {
    "video/": "a video",
    "audio/": "an audio file",
    "text/": "a text file",
    "font/": "a font",
    "model/": "a 3D model",
}
_APPLICATIONS = {
    "application/pdf": "a PDF document",
    "application/zip": "a ZIP archive",
    "application/json": "a text file",
}


def megabytes(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def _kind(content_type: str) -> str | None:
    """What a declared non-image type is, in words; None for an image or an unknown type."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime in _UNDECIDED or mime.startswith("image/"):
        return None
    if mime in _APPLICATIONS:
        return _APPLICATIONS[mime]
    for prefix, kind in _KINDS.items():
        if mime.startswith(prefix):
            return kind
    return "not a photo"


def declared_refusal(photo: PhotoInput, rules: PhotoRules) -> tuple[Reason, str] | None:
    """Why ``photo`` is refused from its declared size and content type alone (the reason and
    its message), or None when its bytes are worth fetching."""
    if photo.declared_size is not None and photo.declared_size > rules.max_bytes:
        return (
            Reason.TOO_LARGE_BYTES,
            f"This file is {megabytes(photo.declared_size)}; the limit is "
            f"{megabytes(rules.max_bytes)}, so it was not downloaded.",
        )
    kind = _kind(photo.content_type) if photo.content_type else None
    if kind is not None:
        mime = (photo.content_type or "").split(";", 1)[0].strip()
        return Reason.NOT_IMAGE, f"This file is {kind} ({mime}); {SEND_INSTEAD}."
    return None
