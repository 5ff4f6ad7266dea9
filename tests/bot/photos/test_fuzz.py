"""Random and mutated bytes: a verdict always comes back, no exception escapes.

Random bytes almost never look like an image, so they only exercise the sniffer. The mutation
tests start from real files written by Pillow (and by hand, for what Pillow never writes) and
damage them *past* the bytes our own header parser reads, so the type, size and pixel-limit
checks still pass and the decoders, the EXIF and colour-profile readers and the analysis all see
the damage. Optionally the container's checksums and sizes are repaired afterwards (PNG chunk
CRCs, the WebP RIFF size), so the damage reaches the codecs instead of stopping at a CRC check.
Example counts come from the Hypothesis profile; ``--hypothesis-show-statistics`` shows how far
the inputs got (the ``stage`` events).
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms

from bot.photos import (
    PhotoInput,
    PhotoReport,
    PhotoRules,
    Reason,
    Verdict,
    check_photo,
    check_photos,
)
from bot.photos.sniff import header_size, sniff
from tests.bot.photos.images import encode, png_from_rows, textured_photo

# Small images and a small pixel budget keep each example to milliseconds; the min side of 48 px
# at resolution 64 lets mutated 96 px images reach the decoders instead of stopping at "too small".
RULES = [
    PhotoRules(class_name="mug", resolution=64, max_pixels=2_000_000),
    PhotoRules(class_name="person", resolution=64, max_pixels=2_000_000),
]
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
# A set holds up to six photos, so a quarter of the profile's examples costs about as much.
FUZZ_SETS = settings(FUZZ, max_examples=max(10, settings().max_examples // 4))
INTERESTING_BYTES = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0xD9, 0xDA]


@dataclass(frozen=True, slots=True)
class Seed:
    """A valid file and where it may be damaged.

    ``header`` is the length of the prefix our header parser reads (up to the dimensions):
    bytes are inserted, deleted and cut only after it. ``fields`` are positions inside that
    prefix that the parser skips (a JPEG's EXIF and ICC payloads, a PNG's bit depth and colour
    type): they are flipped in place, never moved.
    """

    name: str
    data: bytes
    header: int
    fields: tuple[int, ...]

    @property
    def format(self) -> str:
        fmt = sniff(self.data).format
        assert fmt is not None
        return fmt


def _jpeg_layout(data: bytes) -> tuple[int, tuple[int, ...]]:
    """End of the frame header, and every payload byte before it except the dimensions."""
    pos, fields = 2, list[int]()
    while True:
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
        end = pos + 2 + length
        if marker in (0xC0, 0xC1, 0xC2):
            return end, (*fields, pos + 4, *range(pos + 9, end))  # precision, components
        fields.extend(range(pos + 4, end))
        pos = end


def _layout(data: bytes) -> tuple[int, tuple[int, ...]]:
    fmt = sniff(data).format
    if fmt == "JPEG":
        return _jpeg_layout(data)
    if fmt == "PNG":
        return 33, tuple(range(24, 29))  # bit depth, colour type, compression, filter, interlace
    if fmt == "GIF":
        return 13, (10, 11, 12)  # flags (colour table size), background, aspect
    if fmt == "WEBP":
        chunk = data[12:16]
        if chunk == b"VP8L":
            return 25, ()  # signature and the 28 bits of size
        if chunk == b"VP8X":
            return 30, (20, 21, 22, 23)  # feature flags and reserved bytes
        return 30, (20, 21, 22)  # VP8 frame tag (key frame, version, partition size)
    raise AssertionError(fmt)


@functools.cache
def _seeds() -> tuple[Seed, ...]:
    image = textured_photo(11, (96, 80))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate a quarter turn
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(image.size))
    files = {
        "jpeg": encode(image, "JPEG"),
        "jpeg-progressive": encode(image, "JPEG", progressive=True),
        "jpeg-exif-icc": encode(image, "JPEG", exif=exif.tobytes(), icc_profile=srgb),
        "jpeg-cmyk": encode(image.convert("CMYK"), "JPEG"),
        "jpeg-grey": encode(image.convert("L"), "JPEG"),
        "png": encode(image, "PNG"),
        "png-rgba-interlaced-icc": encode(rgba, "PNG", interlace=1, icc_profile=srgb),
        "png-palette-transparent": encode(image.convert("P"), "PNG", transparency=0),
        "png-16-bit": png_from_rows(np.asarray(image, dtype=np.uint16) * 257, colour_type=2),
        "apng": encode(image, "PNG", save_all=True, append_images=[image.rotate(90)]),
        "gif": encode(image.convert("P"), "GIF"),
        "gif-animated": encode(image, "GIF", save_all=True, append_images=[image.rotate(90)]),
        "webp": encode(image, "WEBP"),
        "webp-lossless": encode(image, "WEBP", lossless=True),
        "webp-alpha-exif": encode(rgba, "WEBP", exif=exif.tobytes()),
    }
    return tuple(Seed(name, data, *_layout(data)) for name, data in files.items())


def _repair(data: bytearray, fmt: str) -> None:
    """Make the container consistent again so the codec, not a checksum, meets the damage."""
    if fmt == "PNG":
        pos = 8
        while pos + 12 <= len(data):
            (length,) = struct.unpack(">I", data[pos : pos + 4])
            end = pos + 8 + length
            if end + 4 > len(data):
                break
            data[end : end + 4] = struct.pack(">I", zlib.crc32(data[pos + 4 : end]))
            pos = end + 4
    elif fmt == "WEBP":
        data[4:8] = struct.pack("<I", len(data) - 8)
        if bytes(data[12:16]) in (b"VP8 ", b"VP8L"):  # a simple file: one image chunk to the end
            data[16:20] = struct.pack("<I", len(data) - 20)


@st.composite
def _mutated_seed(draw: st.DrawFn) -> tuple[Seed, bytes]:
    seed = draw(st.sampled_from(_seeds()))
    data = bytearray(seed.data)
    for _ in range(draw(st.integers(1, 6))):
        action = draw(
            st.sampled_from(["flip", "set", "field", "cut", "insert", "delete", "repeat", "noise"])
        )
        at = draw(st.integers(seed.header, max(seed.header, len(data) - 1)))
        if action in ("flip", "set") and at < len(data):
            if action == "flip":
                data[at] ^= 1 << draw(st.integers(0, 7))
            else:
                data[at] = draw(st.sampled_from(INTERESTING_BYTES))
        elif action == "field" and seed.fields:
            data[draw(st.sampled_from(seed.fields))] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at:]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif action == "repeat":  # a second IDAT, SOS or frame: a copy of a run of bytes
            data[at:at] = data[at : at + draw(st.integers(1, 512))]
        elif action == "noise":
            data[at:] = draw(st.binary(min_size=0, max_size=2048))
    if draw(st.booleans()):
        _repair(data, seed.format)
    return seed, bytes(data)


def _mutated() -> st.SearchStrategy[bytes]:
    return _mutated_seed().map(lambda pair: pair[1])


def _stage(report: PhotoReport) -> str:
    """How far the checker got: refused on the bytes or header, or the decoder ran."""
    if report.sharpness is not None or Reason.ANIMATED in report.reasons:
        return "decoded"
    if Reason.CORRUPT in report.reasons and report.width is not None:
        return "decoder refused the data"
    if Reason.TOO_MANY_PIXELS in report.reasons and report.width is None:
        return "decoder refused the data"  # Pillow's own bomb guard, not our header check
    return "stopped before the decoder"


def _assert_sane(report: PhotoReport, rules: PhotoRules) -> None:
    assert report.verdict in set(Verdict)
    assert report.message
    if report.verdict is Verdict.REJECT:
        assert report.reasons and report.normalised is None
        return
    assert report.verdict is Verdict.OK or report.reasons
    assert report.normalised is not None
    with Image.open(io.BytesIO(report.normalised.data)) as image:
        image.load()
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.size == (rules.resolution, rules.resolution)


@FUZZ
@given(data=st.binary(max_size=4096), rules=st.sampled_from(RULES))
def test_random_bytes_get_a_verdict(data: bytes, rules: PhotoRules) -> None:
    _assert_sane(check_photo(PhotoInput(data, "random.jpg"), rules), rules)


@FUZZ
@given(mutated=_mutated_seed(), rules=st.sampled_from(RULES))
def test_mutated_images_get_a_verdict(mutated: tuple[Seed, bytes], rules: PhotoRules) -> None:
    seed, data = mutated
    report = check_photo(PhotoInput(data, "mutated.png"), rules)
    event(f"stage: {_stage(report)}")
    event(f"seed: {seed.name}")
    _assert_sane(report, rules)


@FUZZ_SETS
@given(datas=st.lists(_mutated(), min_size=0, max_size=6))
def test_mutated_sets_get_a_report(datas: list[bytes]) -> None:
    report = check_photos([PhotoInput(d) for d in datas], RULES[0])
    assert len(report.photos) == len(datas)
    assert [p.index for p in report.photos] == list(range(len(datas)))
    for photo in report.photos:
        _assert_sane(photo, RULES[0])


def test_seeds_are_valid_and_their_header_ends_where_the_parser_stops() -> None:
    """The fuzzer's premise: each seed passes as is, and with everything after its header
    destroyed it still gets past the header checks, so its mutants reach the decoder."""
    for seed in _seeds():
        size = header_size(seed.data, seed.format)
        assert size == (96, 80), seed.name
        assert header_size(seed.data[: seed.header], seed.format) == size, seed.name
        intact = check_photo(PhotoInput(seed.data, seed.name), RULES[0])
        animated = seed.name in ("apng", "gif-animated")
        assert intact.reasons == ((Reason.ANIMATED,) if animated else ()), seed.name
        wrecked = seed.data[: seed.header] + bytes(len(seed.data) - seed.header)
        report = check_photo(PhotoInput(wrecked, seed.name), RULES[0])
        assert _stage(report) != "stopped before the decoder", (seed.name, report)
