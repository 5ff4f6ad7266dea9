"""HEIC/HEIF photos (the iPhone default): real files written by pillow-heif's own encoder, and
the bad ones a member may send (damaged, truncated, lying about their size or their name)."""

from __future__ import annotations

import functools
import io

import numpy as np
import pillow_heif
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from bot.photos import PhotoInput, PhotoRules, Reason, Verdict, check_photo, check_photos
from bot.photos.heif import heif_size
from bot.photos.sniff import header_size, sniff
from tests.bot.photos.images import encode, textured_photo

MUG = PhotoRules(class_name="mug")
# Flat colour fields are "blurry" to the sharpness check; these tests are about orientation.
FLAT_OK = PhotoRules(class_name="mug", resolution=64, blur_reject=0.0, blur_warn=0.0)
FUZZ_RULES = PhotoRules(class_name="mug", resolution=64, max_pixels=2_000_000)


def heic(image: Image.Image, **params: object) -> bytes:
    """Encode with pillow-heif (libheif + x265), as an iPhone would write it."""
    pillow_heif.register_heif_opener()
    out = io.BytesIO()
    image.save(out, format="HEIF", quality=85, **params)
    return out.getvalue()


@pytest.fixture(scope="module")
def photo_heic() -> bytes:
    return heic(textured_photo(5, (768, 576)))


@functools.cache
def _small_heic() -> bytes:
    return heic(textured_photo(3, (96, 96)))


def _box(data: bytes, kind: bytes) -> int:
    """Offset of the first box of ``kind`` (its size field)."""
    return data.index(kind) - 4


def test_a_heic_photo_is_accepted_and_normalised(photo_heic: bytes) -> None:
    assert sniff(photo_heic).format == "HEIF"
    assert header_size(photo_heic, "HEIF") == (768, 576)
    report = check_photo(PhotoInput(photo_heic, "IMG_0001.HEIC", "image/heic"), MUG)
    assert report.verdict is Verdict.OK, report
    assert (report.format, report.width, report.height) == ("HEIF", 768, 576)
    assert report.normalised is not None
    square = Image.open(io.BytesIO(report.normalised.data))
    assert (square.format, square.size, square.mode) == ("PNG", (512, 512), "RGB")


def test_a_heic_turned_by_the_phone_is_upright_and_sized_as_seen() -> None:
    # What the member sees: a portrait photo, red on top and blue below. The phone stores the
    # sensor's landscape pixels and a quarter-turn (irot) that shows them upright.
    seen = Image.new("RGB", (96, 128), (220, 30, 30))
    seen.paste((30, 30, 220), (0, 64, 96, 128))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = heic(seen.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes())
    assert b"irot" in data
    assert heif_size(data) == (96, 128)
    report = check_photo(PhotoInput(data, "portrait.heic"), FLAT_OK)
    assert report.accepted, report
    assert (report.width, report.height) == (96, 128)
    assert report.normalised is not None
    pixels = np.asarray(Image.open(io.BytesIO(report.normalised.data)).convert("RGB"))
    top, bottom = pixels[4, 32], pixels[60, 32]
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0], (top, bottom)


def test_a_heic_with_a_jpeg_name_is_still_read_as_heic(photo_heic: bytes) -> None:
    report = check_photo(PhotoInput(photo_heic, "holiday.jpg", "image/jpeg"), MUG)
    assert report.verdict is Verdict.OK and report.format == "HEIF"


def test_a_jpeg_named_heic_is_read_as_jpeg() -> None:
    data = encode(textured_photo(6, (768, 576)))
    report = check_photo(PhotoInput(data, "IMG_0002.heic", "image/heic"), MUG)
    assert report.verdict is Verdict.OK and report.format == "JPEG"


def test_a_transparent_heic_trains_on_white() -> None:
    image = textured_photo(7, (640, 640)).convert("RGBA")
    image.putalpha(Image.new("L", image.size, 0))  # fully transparent
    report = check_photo(PhotoInput(heic(image), "sticker.heic"), FLAT_OK)
    assert report.normalised is not None, report
    pixels = np.asarray(Image.open(io.BytesIO(report.normalised.data)))
    assert pixels.min() > 240


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("truncated", lambda d: d[: len(d) * 2 // 3]),
        ("header-only", lambda d: d[: _box(d, b"mdat")]),
        ("garbage-pixels", lambda d: d[: _box(d, b"mdat") + 8] + bytes(range(256)) * 40),
        ("stub", lambda d: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200)),
        ("meta-overruns-file", lambda d: d[: _box(d, b"meta")] + b"\x7f\xff\xff\xffmeta" + d[-64:]),
    ],
)
def test_a_damaged_heic_is_rejected_as_corrupt(photo_heic: bytes, name: str, damage) -> None:  # type: ignore[no-untyped-def]
    report = check_photo(PhotoInput(damage(photo_heic), f"{name}.heic", "image/heic"), MUG)
    assert report.verdict is Verdict.REJECT, report
    assert report.reasons == (Reason.CORRUPT,)
    assert "HEIC photo is damaged" in report.message
    assert report.normalised is None


def test_a_heic_claiming_a_huge_picture_is_refused_before_decoding(photo_heic: bytes) -> None:
    ispe = photo_heic.index(b"ispe")
    bomb = (
        photo_heic[: ispe + 8]
        + (30000).to_bytes(4, "big")
        + (30000).to_bytes(4, "big")
        + photo_heic[ispe + 16 :]
    )
    assert header_size(bomb, "HEIF") == (30000, 30000)
    report = check_photo(PhotoInput(bomb, "bomb.heic"), MUG)
    assert report.reasons == (Reason.TOO_MANY_PIXELS,)
    assert "30000 x 30000" in report.message


def test_a_heic_larger_than_its_header_claims_is_refused(photo_heic: bytes) -> None:
    # The header says 700 x 500 while the coded picture is 768 x 576: the pixel limit was
    # checked on the header, so a file that understates its size is not decoded as if true.
    ispe = photo_heic.index(b"ispe")
    lying = (
        photo_heic[: ispe + 8]
        + (700).to_bytes(4, "big")
        + (500).to_bytes(4, "big")
        + photo_heic[ispe + 16 :]
    )
    report = check_photo(PhotoInput(lying, "lying.heic"), MUG)
    assert report.verdict is Verdict.REJECT
    assert Reason.CORRUPT in report.reasons
    assert report.normalised is None


@pytest.mark.parametrize(
    ("head", "words"),
    [
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf", "AVIF"),
        (b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avifmiaf", "AVIF"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", "video"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  ", "video"),
    ],
)
def test_other_iso_media_files_are_not_photos(head: bytes, words: str) -> None:
    report = check_photo(PhotoInput(head + bytes(300), "clip.heic"), MUG)
    assert report.reasons == (Reason.NOT_IMAGE,)
    assert words in report.message


def test_heic_and_jpeg_in_one_set_checked_in_threads(photo_heic: bytes) -> None:
    photos = [
        PhotoInput(photo_heic, "a.heic"),
        PhotoInput(encode(textured_photo(8, (768, 576))), "b.jpg"),
        PhotoInput(heic(textured_photo(9, (768, 576))), "c.heic"),
        PhotoInput(photo_heic, "a-again.heic"),
    ]
    report = check_photos(photos, MUG, workers=2)
    assert [p.verdict for p in report.photos] == [Verdict.OK] * 3 + [Verdict.REJECT]
    assert report.photos[3].reasons == (Reason.DUPLICATE,)
    assert report.can_train and "3 of 4" in report.message


@given(data=st.data())
def test_damaged_heic_bytes_always_get_a_verdict(data: st.DataObject) -> None:
    """libheif is C code fed by strangers: bytes flipped, cut or inserted anywhere after the
    ftyp box (the container's boxes, the HEVC stream) give a verdict, never an exception."""
    base = _small_heic()
    start = _box(base, b"meta")
    edits = data.draw(
        st.lists(
            st.tuples(st.integers(start, len(base) - 1), st.integers(0, 255)),
            min_size=1,
            max_size=8,
        )
    )
    damaged = bytearray(base)
    for position, value in edits:
        damaged[position] = value
    cut = data.draw(st.integers(start, len(base)))
    for blob in (bytes(damaged), bytes(damaged[:cut])):
        report = check_photo(PhotoInput(blob, "fuzz.heic"), FUZZ_RULES)
        assert report.verdict in (Verdict.OK, Verdict.WARN, Verdict.REJECT)
        assert report.accepted == (report.normalised is not None)
