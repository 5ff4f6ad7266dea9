"""The intake pipeline: one photo to a verdict (and its normalised PNG), a set to a set verdict.

Cheap checks run first on the raw bytes and the header, so that a hostile file is refused before
a decoder sees it; only then is the image decoded once, at the smallest scale that still covers
the training resolution, and everything else works on that small copy.
"""

from __future__ import annotations

import hashlib
import io
import unicodedata
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageCms

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

__all__ = ["check_photo", "check_photos", "display_name", "normalise_photo"]

_ORIENTATION_TAG = 0x0112
_TRANSPOSE: dict[int, tuple[Image.Transpose, ...]] = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
_SEND_INSTEAD = "send a JPEG, PNG or WebP photo instead"


@dataclass(frozen=True, slots=True)
class _Issue:
    reason: Reason
    verdict: Verdict
    message: str


def display_name(name: str, limit: int = 80) -> str:
    """A sender's file name made safe to show: no control or bidi characters, bounded length.

    It is only ever shown, never used as a path.
    """
    cleaned = "".join("?" if unicodedata.category(c).startswith("C") else c for c in name).strip()
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1] + "…"
    return cleaned or "(unnamed)"


def _megabytes(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


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


def _to_8bit(image: Image.Image) -> Image.Image:
    """Any decoded mode to one of RGB, RGBA, L, LA or CMYK with 8 bits per channel."""
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
        peak = float(values.max()) if values.size else 0.0
        if peak > 255:
            values = values.astype(np.float32) * (255.0 / (65535.0 if peak <= 65535 else peak))
        return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L")
    return image.convert("RGBA" if "A" in mode or "a" in mode else "RGB")


def _to_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """8-bit RGB in sRGB: alpha flattened on white, an embedded colour profile applied.

    Phones tag photos Display P3; dropping the profile without converting would dull the colours.
    """
    if image.mode in ("RGBA", "LA"):
        if image.mode == "LA":
            icc = None  # a grey profile no longer fits once the image is flattened to RGB
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba).convert("RGB")
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass  # a broken profile is no reason to refuse a photo: fall back to the raw values
    return image if image.mode == "RGB" else image.convert("RGB")


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # Pillow raises many kinds on hostile EXIF; orientation is then unknown
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def _decode(data: bytes, fmt: str, rules: PhotoRules) -> tuple[Image.Image, int | None]:
    """Fully decode the first frame at the smallest scale covering the training resolution.

    Returns the 8-bit image (not yet oriented) and the frame count for animated formats. A full
    decode is what catches truncated and corrupt data; for JPEG, ``draft`` lets libjpeg skip the
    inverse DCT at full size while still reading every entropy-coded byte.
    """
    image = Image.open(io.BytesIO(data), formats=[fmt])
    # A JPEG with several pictures is an MPO (phones add depth maps or previews): still a photo.
    frames = getattr(image, "n_frames", 1) if fmt != "JPEG" else None
    if fmt == "JPEG":
        width, height = image.size
        short = min(width, height)
        side = _work_side(rules)
        if short > side:
            scale = side / short
            image.draft(None, (max(1, int(width * scale)), max(1, int(height * scale))))
    image.load()
    return image, frames


def _work_side(rules: PhotoRules) -> int:
    """Shorter side of the decoded working copy: enough for both training and analysis."""
    return max(rules.resolution, ANALYSIS_SIDE)


def _working_size(width: int, height: int, side: int) -> tuple[int, int]:
    short = min(width, height)
    if short <= side:
        return width, height
    scale = side / short
    return (
        side if width == short else max(side, round(width * scale)),
        side if height == short else max(side, round(height * scale)),
    )


def _square_crop(width: int, height: int, face: Face | None) -> tuple[int, int, int, int]:
    side = min(width, height)
    cx, cy = face.centre if face is not None else (width / 2, height / 2)
    left = round(min(max(cx - side / 2, 0), width - side))
    top = round(min(max(cy - side / 2, 0), height - side))
    return left, top, left + side, top + side


def _encode(image: Image.Image) -> NormalisedPhoto:
    # A fresh image carries no info dict: no EXIF, GPS, ICC, XMP or text chunks reach the file.
    clean = Image.frombytes("RGB", image.size, image.tobytes())
    buffer = io.BytesIO()
    clean.save(buffer, format="PNG", compress_level=3)
    data = buffer.getvalue()
    return NormalisedPhoto(data=data, sha256=hashlib.sha256(data).hexdigest(), size=clean.width)


def check_photo(
    photo: PhotoInput, rules: PhotoRules, *, index: int = 0, normalise: bool = True
) -> PhotoReport:
    """Verdict on one photo on its own (no duplicate check), with its normalised PNG if accepted.

    Never raises for anything about the input: every problem becomes a reason code. Only a broken
    installation (no face detector) raises.
    """
    data = photo.data
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
                    f"This file is {_megabytes(len(data))}; the limit is "
                    f"{_megabytes(rules.max_bytes)}.",
                )
            ],
        )
    kind = sniff(data)
    if kind.format is None:
        message = f"This file is {kind.description}; {_SEND_INSTEAD}."
        return _report(photo, index, [_Issue(Reason.NOT_IMAGE, Verdict.REJECT, message)])
    fmt = kind.format
    corrupt = _Issue(
        Reason.CORRUPT,
        Verdict.REJECT,
        "This image is damaged or incomplete and could not be read; try sending the original.",
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
        return _analyse(photo, index, fmt, issues, info, rules, normalise)
    except FaceDetectorUnavailable:
        raise
    except Image.DecompressionBombError:
        message = f"This image has too many pixels; the limit is {rules.max_pixels / 1e6:g} MP."
        return _report(photo, index, [_Issue(Reason.TOO_MANY_PIXELS, Verdict.REJECT, message)])
    except Exception:  # any decoder failure on hostile data means the file is unusable
        return _report(photo, index, [*issues, corrupt], **info)


def _analyse(
    photo: PhotoInput,
    index: int,
    fmt: str,
    issues: list[_Issue],
    info: dict[str, object],
    rules: PhotoRules,
    normalise: bool,
) -> PhotoReport:
    decoded, frames = _decode(photo.data, fmt, rules)
    if frames is not None and frames > 1:
        message = f"This is an animation with {frames} frames; send a still photo."
        issues.append(_Issue(Reason.ANIMATED, Verdict.REJECT, message))
        return _report(photo, index, issues, **info)
    icc = decoded.info.get("icc_profile")
    orientation = _orientation(decoded)
    image = _to_8bit(decoded)
    image = image.resize(
        _working_size(image.width, image.height, _work_side(rules)),
        Image.Resampling.LANCZOS,
        reducing_gap=3.0,
    )
    for step in _TRANSPOSE.get(orientation, ()):
        image = image.transpose(step)
    rgb = _to_srgb(image, icc if isinstance(icc, bytes) else None)
    info["width"], info["height"] = (
        (info["height"], info["width"]) if orientation >= 5 else (info["width"], info["height"])
    )
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
        square = rgb.crop(_square_crop(rgb.width, rgb.height, face))
        if square.width != rules.resolution:
            square = square.resize((rules.resolution, rules.resolution), Image.Resampling.LANCZOS)
        info["normalised"] = _encode(square)
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
