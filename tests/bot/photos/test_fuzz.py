"""Random and mutated bytes: a verdict always comes back, no exception escapes."""

from __future__ import annotations

import functools

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.photos import PhotoInput, PhotoReport, PhotoRules, Verdict, check_photo, check_photos
from tests.bot.photos.images import encode, header_bomb_png, png_from_rows, textured_photo

# Small images and a small pixel budget keep each example to milliseconds; the min side of 48 px
# at resolution 64 lets mutated 96 px images reach the decoders instead of stopping at "too small".
RULES = [
    PhotoRules(class_name="mug", resolution=64, max_pixels=2_000_000),
    PhotoRules(class_name="person", resolution=64, max_pixels=2_000_000),
]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def _seeds() -> tuple[bytes, ...]:
    image = textured_photo(11, (96, 80))
    return (
        encode(image, "JPEG"),
        encode(image, "JPEG", progressive=True),
        encode(image, "PNG"),
        encode(image.convert("P"), "GIF"),
        encode(image, "WEBP"),
        encode(image, "WEBP", lossless=True),
        encode(image.convert("CMYK"), "JPEG"),
        encode(image, "PNG", save_all=True, append_images=[image.rotate(90)]),
        png_from_rows(np.asarray(image, dtype=np.uint16) * 257, colour_type=2),
        header_bomb_png(5000, 5000),
    )


def _assert_sane(report: PhotoReport) -> None:
    assert report.verdict in set(Verdict)
    if report.verdict is Verdict.REJECT:
        assert report.reasons and report.normalised is None
    elif report.verdict is Verdict.OK:
        assert report.reasons == () and report.normalised is not None
    assert report.message


@FUZZ
@given(data=st.binary(max_size=4096), rules=st.sampled_from(RULES))
def test_random_bytes_get_a_verdict(data: bytes, rules: PhotoRules) -> None:
    _assert_sane(check_photo(PhotoInput(data, "random.jpg"), rules))


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_seeds())))
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0xD9, 0xDA]))
        elif action == "cut":
            del data[at:]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


@FUZZ
@given(data=_mutated(), rules=st.sampled_from(RULES))
def test_mutated_images_get_a_verdict(data: bytes, rules: PhotoRules) -> None:
    _assert_sane(check_photo(PhotoInput(data, "mutated.png"), rules))


@settings(max_examples=25, deadline=None)
@given(datas=st.lists(_mutated(), min_size=0, max_size=6))
def test_mutated_sets_get_a_report(datas: list[bytes]) -> None:
    report = check_photos([PhotoInput(d) for d in datas], RULES[0])
    assert len(report.photos) == len(datas)
    for photo in report.photos:
        _assert_sane(photo)
