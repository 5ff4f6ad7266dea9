"""A generated corpus of hostile and awkward files, each asserted with its verdict and reason."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageFilter

from bot.photos import PhotoInput, PhotoReport, PhotoRules, Reason, Verdict, check_photo
from tests.bot.photos.images import encode, flat, header_bomb_png, png_from_rows, textured_photo

# Most of the corpus is about files, not faces: a class that needs no face keeps it that way.
MUG = PhotoRules(class_name="mug")


def _photo(seed: int = 1, size: tuple[int, int] = (768, 576)) -> Image.Image:
    return textured_photo(seed, size)


def _truncated_jpeg() -> bytes:
    data = encode(_photo())
    return data[: len(data) * 2 // 3]


def _garbage_after_header_jpeg() -> bytes:
    data = encode(_photo())
    scan = data.index(b"\xff\xda")
    header_end = scan + 2 + int.from_bytes(data[scan + 2 : scan + 4], "big")
    rng = np.random.default_rng(7)
    return data[:header_end] + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()


def _animated(fmt: str) -> bytes:
    frames = [_photo(seed, (576, 576)) for seed in (1, 2, 3)]
    params: dict[str, object] = {"save_all": True, "append_images": frames[1:], "duration": 100}
    if fmt == "GIF":
        frames = [f.convert("P") for f in frames]
        params["append_images"] = frames[1:]
    return encode(frames[0], fmt, **params)


def _cmyk_jpeg() -> bytes:
    return encode(_photo().convert("CMYK"), "JPEG")


def _palette_png() -> bytes:
    return encode(_photo().convert("P", palette=Image.Palette.ADAPTIVE), "PNG")


def _alpha_png() -> bytes:
    image = _photo().convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize(image.size))
    return encode(image, "PNG")


def _grey16_png() -> bytes:
    grey = np.asarray(_photo().convert("L"), dtype=np.uint16) * 257
    return png_from_rows(grey, colour_type=0)


def _rgb16_png() -> bytes:
    rgb = np.asarray(_photo(), dtype=np.uint16) * 257
    return png_from_rows(rgb, colour_type=2)


def _grey_alpha_png() -> bytes:
    return encode(_photo().convert("LA"), "PNG")


def _over_limit() -> bytes:
    # A real JPEG with 10 MiB of trailing bytes: valid for most viewers, too big for us.
    return encode(_photo()) + bytes(10 * 1024 * 1024)


def _heic() -> bytes:
    return b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200)


def _bad_ihdr_png() -> bytes:
    data = encode(_photo(), "PNG")
    return data[:12] + b"IHDX" + data[16:]


Case = tuple[str, Callable[[], bytes], str | None, Verdict, Reason | None]

CORPUS: list[Case] = [
    ("empty.jpg", lambda: b"", "image/jpeg", Verdict.REJECT, Reason.NOT_IMAGE),
    (
        "notes.png",
        lambda: b"these are my holiday notes\n" * 20,
        "image/png",
        Verdict.REJECT,
        Reason.NOT_IMAGE,
    ),
    (
        "page.jpg",
        lambda: b"<!DOCTYPE html><html><body>hi</body></html>",
        "image/jpeg",
        Verdict.REJECT,
        Reason.NOT_IMAGE,
    ),
    (
        "scan.jpg",
        lambda: b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n%%EOF",
        "image/jpeg",
        Verdict.REJECT,
        Reason.NOT_IMAGE,
    ),
    ("iphone.heic", _heic, "image/heic", Verdict.REJECT, Reason.CORRUPT),
    (
        "random.bin",
        lambda: np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        None,
        Verdict.REJECT,
        Reason.NOT_IMAGE,
    ),
    ("truncated.jpg", _truncated_jpeg, "image/jpeg", Verdict.REJECT, Reason.CORRUPT),
    ("garbage.jpg", _garbage_after_header_jpeg, "image/jpeg", Verdict.REJECT, Reason.CORRUPT),
    ("bad-ihdr.png", _bad_ihdr_png, "image/png", Verdict.REJECT, Reason.CORRUPT),
    (
        "magic-only.jpg",
        lambda: b"\xff\xd8\xff\xe0\x00\x10JFIF",
        "image/jpeg",
        Verdict.REJECT,
        Reason.CORRUPT,
    ),
    (
        "dot.png",
        lambda: encode(Image.new("RGB", (1, 1)), "PNG"),
        "image/png",
        Verdict.REJECT,
        Reason.TOO_SMALL,
    ),
    (
        "thumb.jpg",
        lambda: encode(_photo(size=(200, 300))),
        "image/jpeg",
        Verdict.REJECT,
        Reason.TOO_SMALL,
    ),
    (
        "small-ok.jpg",
        lambda: encode(_photo(size=(400, 440))),
        "image/jpeg",
        Verdict.WARN,
        Reason.TOO_SMALL,
    ),
    ("bomb.png", header_bomb_png, "image/png", Verdict.REJECT, Reason.TOO_MANY_PIXELS),
    (
        "panorama.jpg",
        lambda: encode(_photo(size=(2400, 600))),
        "image/jpeg",
        Verdict.REJECT,
        Reason.ASPECT_RATIO,
    ),
    (
        "tower.jpg",
        lambda: encode(_photo(size=(600, 2400))),
        "image/jpeg",
        Verdict.REJECT,
        Reason.ASPECT_RATIO,
    ),
    (
        "wide.jpg",
        lambda: encode(_photo(size=(1350, 540))),
        "image/jpeg",
        Verdict.WARN,
        Reason.ASPECT_RATIO,
    ),
    ("anim.gif", lambda: _animated("GIF"), "image/gif", Verdict.REJECT, Reason.ANIMATED),
    ("anim.webp", lambda: _animated("WEBP"), "image/webp", Verdict.REJECT, Reason.ANIMATED),
    ("anim.png", lambda: _animated("PNG"), "image/png", Verdict.REJECT, Reason.ANIMATED),
    ("big.jpg", _over_limit, "image/jpeg", Verdict.REJECT, Reason.TOO_LARGE_BYTES),
    (
        "blurred.jpg",
        lambda: encode(_photo().filter(ImageFilter.GaussianBlur(6))),
        "image/jpeg",
        Verdict.REJECT,
        Reason.BLURRY,
    ),
    ("grey.png", lambda: encode(flat(), "PNG"), "image/png", Verdict.REJECT, Reason.BLURRY),
    ("cmyk.jpg", _cmyk_jpeg, "image/jpeg", Verdict.OK, None),
    ("palette.png", _palette_png, "image/png", Verdict.OK, None),
    ("alpha.png", _alpha_png, "image/png", Verdict.OK, None),
    ("grey16.png", _grey16_png, "image/png", Verdict.OK, None),
    ("rgb16.png", _rgb16_png, "image/png", Verdict.OK, None),
    ("grey-alpha.png", _grey_alpha_png, "image/png", Verdict.OK, None),
    ("still.webp", lambda: encode(_photo(), "WEBP", quality=90), "image/webp", Verdict.OK, None),
    ("still.gif", lambda: encode(_photo().convert("P"), "GIF"), "image/gif", Verdict.OK, None),
    ("lying-name.png", lambda: encode(_photo()), "image/png", Verdict.OK, None),
    ("../../etc/passwd.jpg", lambda: encode(_photo()), "image/jpeg", Verdict.OK, None),
]


@pytest.fixture(scope="module")
def corpus_reports() -> dict[str, PhotoReport]:
    return {
        name: check_photo(PhotoInput(make(), name, content_type), MUG)
        for name, make, content_type, _, _ in CORPUS
    }


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 25


@pytest.mark.parametrize(("name", "verdict", "reason"), [(c[0], c[3], c[4]) for c in CORPUS])
def test_each_file_gets_its_verdict_and_reason(
    corpus_reports: dict[str, PhotoReport], name: str, verdict: Verdict, reason: Reason | None
) -> None:
    report = corpus_reports[name]
    assert report.verdict is verdict, report
    if reason is None:
        assert report.reasons == ()
        assert report.normalised is not None
    else:
        assert report.reasons == (reason,), report
        assert report.message and report.message != "Looks good."
    if verdict is Verdict.REJECT:
        assert report.normalised is None


def test_format_comes_from_content_not_name(corpus_reports: dict[str, PhotoReport]) -> None:
    assert corpus_reports["lying-name.png"].format == "JPEG"
    assert corpus_reports["notes.png"].format is None


def test_messages_say_what_the_file_is(corpus_reports: dict[str, PhotoReport]) -> None:
    assert "PDF" in corpus_reports["scan.jpg"].message
    assert "HEIC" in corpus_reports["iphone.heic"].message
    assert "web page" in corpus_reports["page.jpg"].message
    assert "3 frames" in corpus_reports["anim.gif"].message
    assert "30000 x 30000" in corpus_reports["bomb.png"].message


def test_hostile_name_is_only_shown(corpus_reports: dict[str, PhotoReport]) -> None:
    assert corpus_reports["../../etc/passwd.jpg"].name == "../../etc/passwd.jpg"


def test_control_characters_are_removed_from_names() -> None:
    report = check_photo(PhotoInput(b"", "evil\x1b[2J\u202ename\n.jpg"), MUG)
    assert report.name == "evil?[2J?name?.jpg"
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467.jpg"  # an emoji sequence survives
    assert check_photo(PhotoInput(b"", family), MUG).name == family


def _second_frame_header(data: bytes, width: int, height: int) -> bytes:
    """Insert a second start-of-frame segment claiming another size before the scan."""
    scan = data.index(b"\xff\xda")
    sof = data.index(b"\xff\xc0")
    length = int.from_bytes(data[sof + 2 : sof + 4], "big")
    segment = bytearray(data[sof : sof + 2 + length])
    segment[5:9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return data[:scan] + bytes(segment) + data[scan:]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_jpeg_whose_decoder_would_see_another_size_is_refused() -> None:
    # Our parser reads the first frame header, Pillow the last: 768 x 576 passes the pixel
    # check, then a second header claims 12000 x 12000. The mismatch itself is the refusal.
    data = _second_frame_header(encode(_photo()), 12000, 12000)
    report = check_photo(PhotoInput(data, "two-headers.jpg"), MUG)
    assert report.reasons == (Reason.CORRUPT,)


def test_header_bomb_is_refused_from_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    # With Pillow's own guard switched off, only our header check stands between the bomb and
    # a 2.7 GB allocation.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    data = header_bomb_png()
    assert len(data) < 200
    report = check_photo(PhotoInput(data, "bomb.png"), MUG)
    assert report.reasons == (Reason.TOO_MANY_PIXELS,)
    assert (report.width, report.height) == (30000, 30000)


def test_pixel_limit_is_ours_not_pillows() -> None:
    data = encode(_photo(size=(1000, 800)))
    rules = PhotoRules(class_name="mug", max_pixels=700_000)
    assert check_photo(PhotoInput(data), rules).reasons == (Reason.TOO_MANY_PIXELS,)
    assert check_photo(PhotoInput(data), MUG).verdict is Verdict.OK


def test_byte_limit_follows_the_rules() -> None:
    data = encode(_photo())
    assert check_photo(PhotoInput(data), PhotoRules(class_name="mug", max_bytes=len(data))).accepted
    tight = PhotoRules(class_name="mug", max_bytes=len(data) - 1)
    assert check_photo(PhotoInput(data), tight).reasons == (Reason.TOO_LARGE_BYTES,)


def test_minimum_side_scales_with_resolution() -> None:
    assert PhotoRules(resolution=512).min_side == 384
    assert PhotoRules(resolution=1024).min_side == 768
    data = encode(_photo(size=(700, 700)))
    assert check_photo(PhotoInput(data), PhotoRules(class_name="mug", resolution=1024)).reasons == (
        Reason.TOO_SMALL,
    )


def test_multi_picture_jpeg_is_a_photo_not_an_animation() -> None:
    # Phones write MPO files (a JPEG plus depth map or preview): the first picture is the photo.
    data = encode(_photo(1), "MPO", save_all=True, append_images=[_photo(2)])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    report = check_photo(PhotoInput(data, "portrait.jpg"), MUG)
    assert report.verdict is Verdict.OK, report
    assert report.format == "JPEG"


def test_unreadable_upload_is_reported() -> None:
    report = check_photo(PhotoInput(b"", "a.jpg", read_error="download failed"), MUG)
    assert report.reasons == (Reason.CORRUPT,)
    assert "download failed" in report.message


def test_sharp_photo_is_not_called_blurry() -> None:
    report = check_photo(PhotoInput(encode(_photo())), MUG)
    assert report.sharpness is not None and report.sharpness > MUG.blur_warn


def test_slightly_soft_photo_gets_a_warning() -> None:
    soft = _photo().filter(ImageFilter.GaussianBlur(1.0))
    report = check_photo(PhotoInput(encode(soft)), MUG)
    assert report.verdict is Verdict.WARN, report
    assert report.reasons == (Reason.BLURRY,)


def test_grey16_keeps_its_tones() -> None:
    # A naive conversion clips 16-bit values to white; the mid-tones must survive.
    report = check_photo(PhotoInput(_grey16_png()), MUG)
    assert report.normalised is not None
    pixels = np.asarray(Image.open(io.BytesIO(report.normalised.data)))
    assert 60 < pixels.mean() < 200
