"""Refusing from what the platform declares before download, and adding photos to a checked set."""

from __future__ import annotations

import pytest

from bot.photos import (
    PhotoInput,
    PhotoRules,
    Reason,
    Verdict,
    check_photo,
    check_photos,
    declared_refusal,
    extend_set,
)
from tests.bot.photos.images import encode, textured_photo

MUG = PhotoRules(class_name="mug", max_bytes=2 * 1024 * 1024)


def _jpeg(seed: int) -> bytes:
    return encode(textured_photo(seed, (768, 576)))


def test_a_file_declared_too_large_is_refused_without_its_bytes() -> None:
    photo = PhotoInput(b"", "huge.jpg", "image/jpeg", declared_size=25 * 1024 * 1024)
    assert declared_refusal(photo, MUG) == (
        Reason.TOO_LARGE_BYTES,
        "This file is 25.0 MB; the limit is 2.0 MB, so it was not downloaded.",
    )
    report = check_photo(photo, MUG)
    assert report.verdict is Verdict.REJECT and report.reasons == (Reason.TOO_LARGE_BYTES,)


@pytest.mark.parametrize(
    ("content_type", "words"),
    [
        ("video/quicktime", "a video (video/quicktime)"),
        ("text/plain; charset=utf-8", "a text file (text/plain)"),
        ("application/pdf", "a PDF document"),
        ("audio/mpeg", "an audio file"),
        ("application/x-msdownload", "not a photo"),
    ],
)
def test_a_file_declared_as_something_else_is_refused(content_type: str, words: str) -> None:
    photo = PhotoInput(b"", "thing", content_type, declared_size=1000)
    refused = declared_refusal(photo, MUG)
    assert refused is not None and refused[0] is Reason.NOT_IMAGE
    assert words in refused[1] and "HEIC" in refused[1]


@pytest.mark.parametrize(
    "content_type", [None, "", "image/jpeg", "image/heic", "application/octet-stream"]
)
def test_an_image_or_unknown_declaration_lets_the_bytes_decide(content_type: str | None) -> None:
    photo = PhotoInput(_jpeg(1), "x", content_type, declared_size=len(_jpeg(1)))
    assert declared_refusal(photo, MUG) is None
    assert check_photo(photo, MUG).verdict is Verdict.OK


def test_a_declared_image_is_still_judged_by_its_bytes() -> None:
    photo = PhotoInput(b"just text, really\n" * 10, "x.png", "image/png", declared_size=190)
    assert check_photo(photo, MUG).reasons == (Reason.NOT_IMAGE,)


def test_a_file_larger_than_declared_is_judged_by_its_real_size() -> None:
    data = _jpeg(2) + bytes(3 * 1024 * 1024)
    report = check_photo(PhotoInput(data, "x.jpg", "image/jpeg", declared_size=1000), MUG)
    assert report.reasons == (Reason.TOO_LARGE_BYTES,)


def test_extend_set_numbers_new_photos_after_the_first_and_finds_duplicates_across() -> None:
    first = check_photos([PhotoInput(_jpeg(1), "a.jpg"), PhotoInput(_jpeg(2), "b.jpg")], MUG)
    assert not first.can_train and first.reasons == (Reason.TOO_FEW_PHOTOS,)
    more = [
        PhotoInput(_jpeg(3), "c.jpg"),
        PhotoInput(_jpeg(1), "a-again.jpg"),
        PhotoInput(b"", "clip.mov", "video/quicktime", declared_size=10),
    ]
    report = extend_set(first, more, MUG)
    assert [p.index for p in report.photos] == [0, 1, 2, 3, 4]
    assert [p.verdict for p in report.photos] == [
        Verdict.OK,
        Verdict.OK,
        Verdict.OK,
        Verdict.REJECT,
        Verdict.REJECT,
    ]
    assert "same photo as #1 (a.jpg)" in report.photos[3].message
    assert report.photos[4].reasons == (Reason.NOT_IMAGE,)
    assert report.can_train and report.message == "3 of 5 photos will be used for training."
    assert report.photos[0] is first.photos[0]  # the first photos are not checked again
