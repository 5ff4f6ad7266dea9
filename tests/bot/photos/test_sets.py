"""Set rules: counts, near-duplicates, input order, rules built from BotSettings."""

from __future__ import annotations

from PIL import Image, ImageFilter

from bot.config import BotSettings
from bot.photos import PhotoInput, PhotoRules, Reason, Verdict, check_photos
from tests.bot.photos.images import encode, face_photo, textured_photo

MUG = PhotoRules(class_name="mug")


def _good(seed: int) -> PhotoInput:
    return PhotoInput(encode(textured_photo(seed, (800, 600))), f"photo{seed}.jpg")


def test_three_good_photos_can_train() -> None:
    report = check_photos([_good(1), _good(2), _good(3)], MUG)
    assert report.can_train and report.verdict is Verdict.OK
    assert report.reasons == ()
    assert [p.index for p in report.photos] == [0, 1, 2]
    assert len({p.normalised.sha256 for p in report.accepted if p.normalised}) == 3


def test_too_few_accepted_photos() -> None:
    report = check_photos([_good(1), _good(2), PhotoInput(b"junk", "x.jpg")], MUG)
    assert not report.can_train
    assert report.reasons == (Reason.TOO_FEW_PHOTOS,)
    assert "Only 2 of 3" in report.message


def test_too_many_photos() -> None:
    rules = PhotoRules(class_name="mug", min_photos=2, max_photos=3)
    report = check_photos([_good(i) for i in range(1, 5)], rules)
    assert report.reasons == (Reason.TOO_MANY_PHOTOS,)
    assert not report.can_train
    assert len(report.photos) == 4  # every photo is still reported


def test_empty_set_cannot_train() -> None:
    report = check_photos([], MUG)
    assert report.reasons == (Reason.TOO_FEW_PHOTOS,) and report.photos == ()


def test_report_lists_every_photo_in_input_order() -> None:
    inputs = [PhotoInput(b"", "a.jpg"), _good(1), PhotoInput(b"text", "b.png"), _good(2), _good(3)]
    report = check_photos(inputs, MUG)
    assert [p.name for p in report.photos] == [
        "a.jpg",
        "photo1.jpg",
        "b.png",
        "photo2.jpg",
        "photo3.jpg",
    ]
    assert [p.index for p in report.photos] == list(range(5))
    assert report.verdict is Verdict.WARN and report.can_train


def test_exact_and_resized_duplicates_are_left_out() -> None:
    original = textured_photo(1, (1200, 900))
    exact = encode(original)
    resized = encode(original.resize((800, 600), Image.Resampling.BILINEAR), "WEBP", quality=80)
    inputs = [
        PhotoInput(exact, "first.jpg"),
        _good(2),
        PhotoInput(exact, "again.jpg"),
        PhotoInput(resized, "smaller.webp"),
        _good(3),
    ]
    report = check_photos(inputs, MUG)
    verdicts = [(p.verdict, p.reasons) for p in report.photos]
    assert verdicts[0] == (Verdict.OK, ())
    assert verdicts[2] == (Verdict.REJECT, (Reason.DUPLICATE,))
    assert verdicts[3][0] is Verdict.REJECT and Reason.DUPLICATE in verdicts[3][1]
    assert "#1 (first.jpg)" in report.photos[3].message
    assert report.can_train  # 3 distinct photos remain


def test_different_photos_are_not_duplicates() -> None:
    report = check_photos([_good(seed) for seed in range(1, 9)], MUG)
    assert all(p.verdict is Verdict.OK for p in report.photos), report.photos


def test_blurred_copy_is_blurry() -> None:
    original = textured_photo(1, (800, 600))
    blurred = encode(original.filter(ImageFilter.GaussianBlur(6)))
    report = check_photos([PhotoInput(encode(original)), PhotoInput(blurred)], MUG)
    assert Reason.BLURRY in report.photos[1].reasons
    assert report.photos[0].verdict is Verdict.OK


def test_person_set_with_distinct_faces() -> None:
    faces = [
        face_photo([(400, 300, 240)]),
        face_photo([(300, 320, 220)], background=(90, 120, 90)),
        face_photo([(520, 280, 260)], background=(160, 120, 110)),
    ]
    report = check_photos([PhotoInput(encode(f)) for f in faces], PhotoRules(class_name="woman"))
    assert report.can_train, report.photos
    assert [p.faces for p in report.photos] == [1, 1, 1]


def test_threads_give_the_same_report() -> None:
    inputs = [_good(1), PhotoInput(b"", "e.jpg"), _good(2), _good(1), _good(3)]
    one = check_photos(inputs, MUG)
    two = check_photos(iter(inputs), MUG, workers=2)
    assert one == two


def test_rules_from_settings() -> None:
    settings = BotSettings(  # type: ignore[call-arg]
        _env_file=None,
        photos_min=4,
        photos_max=12,
        photo_max_bytes=5 * 1024 * 1024,
        photo_max_pixels=20_000_000,
        train_resolution=768,
        person_classes="Person, selfie",
    )
    rules = PhotoRules.from_settings(settings, class_name=" Selfie ", max_bytes=8 * 1024 * 1024)
    assert (rules.min_photos, rules.max_photos, rules.max_pixels) == (4, 12, 20_000_000)
    assert rules.max_bytes == 5 * 1024 * 1024  # the smaller of Discord's and ours
    assert rules.resolution == 768 and rules.min_side == 576
    assert rules.needs_face and rules.class_name == "selfie"
    assert not PhotoRules.from_settings(settings, class_name="dog").needs_face
    assert PhotoRules.from_settings(settings, resolution=256).resolution == 256
