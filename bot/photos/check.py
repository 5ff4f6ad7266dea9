"""The intake pipeline: one photo to a verdict (and its normalised PNG), a set to a set verdict.

Cheap checks run first on the raw bytes and the header, so that a hostile file is refused before
a decoder sees it; only then is the image decoded once, at the smallest scale that still covers
the training resolution, and everything else works on that small copy.
"""

from __future__ import annotations

import logging
import unicodedata
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from bot.photos.analysis import (
    ANALYSIS_SIDE,
    Face,
    FaceDetectorUnavailable,
    detect_faces,
    hamming,
    perceptual_hash,
    sharpness,
    to_analysis_scale,
)
from bot.photos.declared import SEND_INSTEAD, declared_refusal, megabytes
from bot.photos.imaging import decode, encode_png, orientation, prepare, square_crop
from bot.photos.model import (
    NormalisedPhoto,
    PhotoInput,
    PhotoReport,
    PhotoRules,
    Reason,
    SetReport,
    Verdict,
)
from bot.photos.sniff import header_size, sniff
from storage.errors import UserFacingError

__all__ = ["check_photo", "check_photos", "display_name", "extend_set", "normalise_photo"]

log = logging.getLogger(__name__)

# Zero-width (non-)joiners are format characters too, but emoji sequences need them.
_JOINERS = frozenset("\u200c\u200d")


@dataclass(frozen=True, slots=True)
class _Issue:
    reason: Reason
    verdict: Verdict
    message: str


def display_name(name: str, limit: int = 80) -> str:
    """A sender's file name made safe to show: no control or bidi characters, bounded length.

    It is only ever shown, never used as a path.
    """
    cleaned = "".join(
        "?" if unicodedata.category(c).startswith("C") and c not in _JOINERS else c for c in name
    ).strip()
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1] + "…"
    return cleaned or "(unnamed)"


def _report(
    photo: PhotoInput, index: int, issues: Sequence[_Issue], **fields: object
) -> PhotoReport:
    if any(i.verdict is Verdict.REJECT for i in issues):
        verdict = Verdict.REJECT
    elif issues:
        verdict = Verdict.WARN
    else:
        verdict = Verdict.OK
    message = " ".join(i.message for i in issues) if issues else "Looks good."
    if verdict is Verdict.REJECT:
        fields["normalised"] = None
    return PhotoReport(
        index=index,
        name=display_name(photo.name),
        verdict=verdict,
        reasons=tuple(i.reason for i in issues),
        message=message,
        **fields,  # type: ignore[arg-type]
    )


def _dimension_issues(width: int, height: int, rules: PhotoRules) -> list[_Issue]:
    issues: list[_Issue] = []
    short, long_ = min(width, height), max(width, height)
    size = f"{width} x {height}"
    if short < rules.min_side:
        issues.append(
            _Issue(
                Reason.TOO_SMALL,
                Verdict.REJECT,
                f"This photo is only {size} pixels; its shorter side needs at least "
                f"{rules.min_side} pixels.",
            )
        )
    elif short < rules.resolution:
        issues.append(
            _Issue(
                Reason.TOO_SMALL,
                Verdict.WARN,
                f"This photo is {size} pixels, so it will be enlarged to "
                f"{rules.resolution} x {rules.resolution} for training and may look soft.",
            )
        )
    ratio = long_ / short
    shape = "wide" if width > height else "tall"
    if ratio > rules.max_aspect:
        issues.append(
            _Issue(
                Reason.ASPECT_RATIO,
                Verdict.REJECT,
                f"This photo is very {shape} ({ratio:.1f}:1); crop it to at most "
                f"{rules.max_aspect:g}:1 so the subject fits in a square.",
            )
        )
    elif ratio > rules.warn_aspect:
        issues.append(
            _Issue(
                Reason.ASPECT_RATIO,
                Verdict.WARN,
                f"This photo is {shape} ({ratio:.1f}:1); the square crop for training will "
                "cut much of it off.",
            )
        )
    return issues


def _work_side(rules: PhotoRules) -> int:
    """Shorter side of the decoded working copy: enough for both training and analysis."""
    return max(rules.resolution, ANALYSIS_SIDE)


def check_photo(
    photo: PhotoInput, rules: PhotoRules, *, index: int = 0, normalise: bool = True
) -> PhotoReport:
    """Verdict on one photo on its own (no duplicate check), with its normalised PNG if accepted.

    Never raises for anything about the input: every problem becomes a reason code. Only a broken
    installation (no face detector) raises.
    """
    data = photo.data
    refused = declared_refusal(photo, rules)
    if refused is not None:
        return _report(photo, index, [_Issue(refused[0], Verdict.REJECT, refused[1])])
    if photo.read_error is not None:
        message = f"This file could not be read ({photo.read_error})."
        return _report(photo, index, [_Issue(Reason.CORRUPT, Verdict.REJECT, message)])
    if not data:
        return _report(
            photo, index, [_Issue(Reason.NOT_IMAGE, Verdict.REJECT, "This file is empty.")]
        )
    if len(data) > rules.max_bytes:
        return _report(
            photo,
            index,
            [
                _Issue(
                    Reason.TOO_LARGE_BYTES,
                    Verdict.REJECT,
                    f"This file is {megabytes(len(data))}; the limit is "
                    f"{megabytes(rules.max_bytes)}.",
                )
            ],
        )
    kind = sniff(data)
    if kind.format is None:
        message = f"This file is {kind.description}; {SEND_INSTEAD}."
        return _report(photo, index, [_Issue(Reason.NOT_IMAGE, Verdict.REJECT, message)])
    fmt = kind.format
    what = "HEIC photo" if fmt == "HEIF" else "image"
    corrupt = _Issue(
        Reason.CORRUPT,
        Verdict.REJECT,
        f"This {what} is damaged or incomplete and could not be read; try sending the original.",
    )
    size = header_size(data, fmt)
    if size is None:
        return _report(photo, index, [corrupt], format=fmt)
    width, height = size
    if width * height > rules.max_pixels:
        message = (
            f"This image claims to be {width} x {height} pixels "
            f"({width * height / 1e6:.0f} megapixels); the limit is "
            f"{rules.max_pixels / 1e6:g} megapixels."
        )
        issue = _Issue(Reason.TOO_MANY_PIXELS, Verdict.REJECT, message)
        return _report(photo, index, [issue], format=fmt, width=width, height=height)
    issues = _dimension_issues(width, height, rules)
    info: dict[str, object] = {"format": fmt, "width": width, "height": height}
    if any(i.verdict is Verdict.REJECT for i in issues):
        return _report(photo, index, issues, **info)
    try:
        return _analyse(photo, index, fmt, (width, height), issues, info, rules, normalise)
    except FaceDetectorUnavailable:
        raise
    except Image.DecompressionBombError:
        message = f"This image has too many pixels; the limit is {rules.max_pixels / 1e6:g} MP."
        return _report(photo, index, [_Issue(Reason.TOO_MANY_PIXELS, Verdict.REJECT, message)])
    except Exception as exc:  # any decoder failure on hostile data means the file is unusable
        # No traceback: hostile files are expected. The repr is enough to spot a bug of ours.
        log.debug("photo #%d could not be decoded: %r", index + 1, exc)
        return _report(photo, index, [*issues, corrupt], **info)


def _analyse(
    photo: PhotoInput,
    index: int,
    fmt: str,
    size: tuple[int, int],
    issues: list[_Issue],
    info: dict[str, object],
    rules: PhotoRules,
    normalise: bool,
) -> PhotoReport:
    decoded, frames = decode(photo.data, fmt, _work_side(rules), size)
    if frames is not None and frames > 1:
        message = f"This is an animation with {frames} frames; send a still photo."
        issues.append(_Issue(Reason.ANIMATED, Verdict.REJECT, message))
        return _report(photo, index, issues, **info)
    turn = orientation(decoded)
    rgb = prepare(decoded, _work_side(rules), turn)
    if turn >= 5:  # rotated a quarter turn: report the size as the photo is seen
        info["width"], info["height"] = info["height"], info["width"]
    grey = to_analysis_scale(np.asarray(rgb.convert("L")))
    to_rgb = rgb.width / grey.shape[1]
    score = sharpness(grey)
    info["sharpness"] = round(score, 4)
    info["phash"] = perceptual_hash(grey)
    if score < rules.blur_reject:
        message = "This photo looks blank or out of focus; it would teach the model blur."
        issues.append(_Issue(Reason.BLURRY, Verdict.REJECT, message))
    elif score < rules.blur_warn:
        message = "This photo looks a little soft; a sharper one would train better."
        issues.append(_Issue(Reason.BLURRY, Verdict.WARN, message))
    face: Face | None = None
    if rules.needs_face:
        faces = detect_faces(grey)
        info["faces"] = len(faces)
        if not faces:
            message = (
                f"No face was found; for '{rules.class_name}' each photo should show the face "
                "clearly, looking roughly at the camera."
            )
            issues.append(_Issue(Reason.NO_FACE, Verdict.REJECT, message))
        elif len(faces) > 1:
            message = (
                f"{len(faces)} faces were found; each photo should show only the person "
                "being trained."
            )
            issues.append(_Issue(Reason.MULTIPLE_FACES, Verdict.REJECT, message))
        else:
            f = faces[0]
            face = Face(
                round(f.x * to_rgb),
                round(f.y * to_rgb),
                round(f.width * to_rgb),
                round(f.height * to_rgb),
            )
    if normalise and not any(i.verdict is Verdict.REJECT for i in issues):
        square = rgb.crop(square_crop(rgb.width, rgb.height, face))
        info["normalised"] = encode_png(square, rules.resolution)
    return _report(photo, index, issues, **info)


def check_photos(
    photos: Iterable[PhotoInput],
    rules: PhotoRules,
    *,
    normalise: bool = True,
    workers: int = 1,
) -> SetReport:
    """Check a whole training set: every photo in input order, near-duplicates, set size.

    A later copy of a kept photo is rejected as a duplicate, so the first one sent is the one
    trained on. ``photos`` is consumed lazily, so a caller may read files one at a time; with
    ``workers`` > 1 a few photos are checked at once in threads (the decoders release the GIL).
    """
    reports = list(_check_each(photos, rules, normalise, workers))
    return _set_report(tuple(_mark_duplicates(reports, rules)), rules)


def _check_each(
    photos: Iterable[PhotoInput], rules: PhotoRules, normalise: bool, workers: int
) -> Iterator[PhotoReport]:
    if workers <= 1:
        for i, photo in enumerate(photos):
            yield check_photo(photo, rules, index=i, normalise=normalise)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="photos") as pool:
        pending: deque[Future[PhotoReport]] = deque()
        for i, photo in enumerate(photos):
            pending.append(pool.submit(check_photo, photo, rules, index=i, normalise=normalise))
            if len(pending) >= 2 * workers:  # bound the photos held in memory at once
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def extend_set(
    report: SetReport, photos: Iterable[PhotoInput], rules: PhotoRules, *, workers: int = 1
) -> SetReport:
    """``report`` with more photos checked and appended (a member adding photos later): they
    are numbered after the first ones, compared with them for duplicates, and the set verdict
    is made again. Only the new photos are decoded."""
    first = len(report.photos)
    more = [replace(r, index=r.index + first) for r in _check_each(photos, rules, True, workers)]
    return _set_report(tuple(_mark_duplicates([*report.photos, *more], rules)), rules)


def _mark_duplicates(reports: list[PhotoReport], rules: PhotoRules) -> list[PhotoReport]:
    kept: list[PhotoReport] = []
    result: list[PhotoReport] = []
    for report in reports:
        if not report.accepted or report.phash is None:
            result.append(report)
            continue
        phash = report.phash
        original = next(
            (k for k in kept if hamming(k.phash or 0, phash) <= rules.duplicate_distance), None
        )
        if original is None:
            kept.append(report)
            result.append(report)
            continue
        note = (
            f"This looks like the same photo as #{original.index + 1} ({original.name}); "
            "it was left out."
        )
        result.append(
            replace(
                report,
                verdict=Verdict.REJECT,
                reasons=(*report.reasons, Reason.DUPLICATE),
                message=note if report.verdict is Verdict.OK else f"{report.message} {note}",
                normalised=None,
            )
        )
    return result


def _set_report(reports: tuple[PhotoReport, ...], rules: PhotoRules) -> SetReport:
    total = len(reports)
    accepted = sum(1 for r in reports if r.accepted)
    reasons: list[Reason] = []
    messages: list[str] = []
    if total > rules.max_photos:
        reasons.append(Reason.TOO_MANY_PHOTOS)
        messages.append(f"{total} photos were sent; a set can have at most {rules.max_photos}.")
    if accepted < rules.min_photos:
        reasons.append(Reason.TOO_FEW_PHOTOS)
        messages.append(
            f"Only {accepted} of {total} photos can be used; at least {rules.min_photos} "
            "are needed to train."
        )
    if reasons:
        verdict = Verdict.REJECT
    elif accepted < total or any(r.verdict is Verdict.WARN for r in reports):
        verdict = Verdict.WARN
    else:
        verdict = Verdict.OK
    if not messages:
        messages.append(f"{accepted} of {total} photos will be used for training.")
    return SetReport(
        photos=reports, verdict=verdict, reasons=tuple(reasons), message=" ".join(messages)
    )


def normalise_photo(data: bytes, rules: PhotoRules, name: str = "") -> NormalisedPhoto:
    """The trainer-ready PNG of one photo; raises ``UserFacingError`` (code = first reason) when
    the photo would be rejected."""
    report = check_photo(PhotoInput(data=data, name=name), rules)
    if report.normalised is None:
        code = report.reasons[0].value if report.reasons else "rejected"
        raise UserFacingError(report.message, code=code)
    return report.normalised
