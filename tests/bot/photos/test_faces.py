"""Face counting with the bundled Haar cascade, on faces drawn inside the test."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bot.photos import PhotoInput, PhotoRules, Reason, Verdict, check_photo
from bot.photos.analysis import detect_faces, to_analysis_scale
from tests.bot.photos.images import encode, face_photo, flat, textured_photo

PERSON = PhotoRules(class_name="person")


def _grey(image: Image.Image) -> np.ndarray:
    return to_analysis_scale(np.asarray(image.convert("L")))


@pytest.mark.parametrize(
    "image",
    [flat(), textured_photo(1, (800, 600)), textured_photo(2, (600, 800)), face_photo([])],
    ids=["flat", "textured-wide", "textured-tall", "background-only"],
)
def test_no_face_in_pictures_without_one(image: Image.Image) -> None:
    assert detect_faces(_grey(image)) == []


@pytest.mark.parametrize(
    ("size", "face"),
    [((800, 600), (400, 300, 240)), ((600, 800), (300, 380, 220)), ((1000, 1000), (500, 500, 300))],
)
def test_one_drawn_face_is_found(size: tuple[int, int], face: tuple[int, int, int]) -> None:
    faces = detect_faces(_grey(face_photo([face], size=size)))
    assert len(faces) == 1
    scale = min(size) / 256
    cx, cy = faces[0].centre
    assert abs(cx * scale - face[0]) < face[2] * 0.25
    assert abs(cy * scale - face[1]) < face[2] * 0.4


def test_two_faces_side_by_side_are_both_found() -> None:
    image = face_photo([(230, 300, 220), (570, 300, 220)], size=(800, 600))
    assert len(detect_faces(_grey(image))) == 2


def test_small_background_face_does_not_count() -> None:
    image = face_photo([(300, 300, 260), (660, 200, 100)], size=(800, 600))
    assert len(detect_faces(_grey(image))) == 1


def test_person_photo_with_one_face_is_accepted_and_centred_on_it() -> None:
    # The face sits in the left sixth: a centre crop would cut it out entirely.
    image = face_photo([(200, 300, 220)], size=(1200, 600))
    report = check_photo(PhotoInput(encode(image), "me.jpg"), PERSON)
    assert report.verdict is Verdict.OK, report
    assert report.faces == 1
    assert report.normalised is not None
    out = Image.open(io.BytesIO(report.normalised.data))
    faces = detect_faces(_grey(out))
    assert len(faces) == 1
    cx, _ = faces[0].centre
    assert abs(cx * 512 / 256 - 256) < 120  # the face is in the middle of the square


def test_person_photo_without_face_is_rejected() -> None:
    report = check_photo(PhotoInput(encode(textured_photo(3, (800, 600)))), PERSON)
    assert report.reasons == (Reason.NO_FACE,)
    assert report.faces == 0
    assert "person" in report.message


def test_person_photo_with_two_faces_is_rejected() -> None:
    image = face_photo([(230, 300, 220), (570, 300, 220)], size=(800, 600))
    report = check_photo(PhotoInput(encode(image)), PERSON)
    assert report.reasons == (Reason.MULTIPLE_FACES,)
    assert report.faces == 2


@pytest.mark.parametrize("class_name", ["dog", "mug", "car"])
def test_faces_only_matter_for_person_like_classes(class_name: str) -> None:
    rules = PhotoRules(class_name=class_name)
    assert check_photo(PhotoInput(encode(textured_photo(3, (800, 600)))), rules).accepted
    two = face_photo([(230, 300, 220), (570, 300, 220)], size=(800, 600))
    report = check_photo(PhotoInput(encode(two)), rules)
    assert report.accepted and report.faces is None


def test_person_classes_are_configurable() -> None:
    rules = PhotoRules(class_name="cat", person_classes=frozenset({"cat"}))
    assert rules.needs_face
    report = check_photo(PhotoInput(encode(textured_photo(3, (800, 600)))), rules)
    assert report.reasons == (Reason.NO_FACE,)
