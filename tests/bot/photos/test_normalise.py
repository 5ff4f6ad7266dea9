"""Normalised output: what the trainer consumes must be square, upright, sRGB, metadata-free."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from bot.photos import PhotoInput, PhotoRules, Reason, check_photo, normalise_photo
from storage.errors import UserFacingError
from tests.bot.photos.images import encode, png_chunks, textured_photo

MUG = PhotoRules(class_name="mug")


def _exif_with_gps(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "PhoneMaker"
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (51.0, 30.0, 26.0)
    gps[3] = "W"
    gps[4] = (0.0, 7.0, 39.0)
    return exif


def _upright_two_tone(size: tuple[int, int] = (600, 800)) -> Image.Image:
    """Portrait picture: red top half, blue bottom half, with texture so it is not 'blurry'."""
    image = textured_photo(5, size)
    pixels = np.asarray(image).copy()
    half = size[1] // 2
    pixels[:half, :, 0] = np.maximum(pixels[:half, :, 0], 200)
    pixels[:half, :, 2] //= 4
    pixels[half:, :, 2] = np.maximum(pixels[half:, :, 2], 200)
    pixels[half:, :, 0] //= 4
    return Image.fromarray(pixels)


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_output_is_square_rgb_png_at_training_resolution() -> None:
    for resolution, size in ((512, (1024, 768)), (256, (700, 500)), (512, (600, 800))):
        rules = PhotoRules(class_name="mug", resolution=resolution)
        out = normalise_photo(encode(textured_photo(2, size)), rules)
        image = _decode(out.data)
        assert image.format == "PNG"
        assert image.mode == "RGB"
        assert image.size == (resolution, resolution) == (out.size, out.size)


def test_sha256_is_of_the_returned_bytes() -> None:
    out = normalise_photo(encode(textured_photo(2, (800, 600))), MUG)
    assert out.sha256 == hashlib.sha256(out.data).hexdigest()
    again = normalise_photo(encode(textured_photo(2, (800, 600))), MUG)
    assert again.sha256 == out.sha256  # deterministic: same photo, same content key


def test_all_metadata_is_stripped() -> None:
    source = textured_photo(3, (800, 600))
    data = encode(
        source,
        "JPEG",
        exif=_exif_with_gps(),
        icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(),
        comment=b"secret comment",
    )
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825)  # the input does carry GPS
    out = normalise_photo(data, MUG)
    assert set(png_chunks(out.data)) == {b"IHDR", b"IDAT", b"IEND"}
    image = _decode(out.data)
    assert not image.getexif()
    assert "icc_profile" not in image.info and "exif" not in image.info


def test_metadata_in_png_text_chunks_is_stripped() -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Location", "51.5, -0.1")
    data = encode(textured_photo(4, (800, 600)), "PNG", pnginfo=info)
    out = normalise_photo(data, MUG)
    assert set(png_chunks(out.data)) == {b"IHDR", b"IDAT", b"IEND"}
    assert b"Location" not in out.data


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_comes_out_upright(orientation: int) -> None:
    upright = _upright_two_tone()
    # Store the pixels the way a phone held sideways does, with the tag saying how to turn them.
    undo = {
        3: Image.Transpose.ROTATE_180,
        6: Image.Transpose.ROTATE_90,
        8: Image.Transpose.ROTATE_270,
    }
    stored = upright.transpose(undo[orientation])
    data = encode(stored, "JPEG", exif=_exif_with_gps(orientation))
    assert ImageOps.exif_transpose(Image.open(io.BytesIO(data))).size == upright.size
    report = check_photo(PhotoInput(data, "sideways.jpg"), MUG)
    assert (report.width, report.height) == upright.size
    assert report.normalised is not None
    pixels = np.asarray(_decode(report.normalised.data), dtype=np.int32)
    top, bottom = pixels[:100], pixels[-100:]
    assert top[..., 0].mean() > top[..., 2].mean() + 60  # red on top
    assert bottom[..., 2].mean() > bottom[..., 0].mean() + 60  # blue at the bottom


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
@pytest.mark.parametrize("size", [(800, 600), (2400, 1800)], ids=["small", "reduced-first"])
def test_transparency_is_flattened_on_white(mode: str, size: tuple[int, int]) -> None:
    image = textured_photo(6, size).convert(mode)
    alpha = Image.new("L", image.size, 255)
    alpha.paste(0, (0, 0, size[0], size[1] // 4))  # top quarter fully transparent
    image.putalpha(alpha)
    out = np.asarray(_decode(normalise_photo(encode(image, "PNG"), MUG).data), dtype=np.int32)
    assert out[:80].min() >= 250  # transparent: white
    assert out[-200:].mean() < 200  # opaque: the picture, not white


def test_cmyk_colours_survive() -> None:
    image = textured_photo(7, (800, 600))
    pixels = np.asarray(image).copy()
    pixels[:, :400] = (pixels[:, :400] // 8) + np.array([220, 0, 0], dtype=np.uint8)
    data = encode(Image.fromarray(pixels).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = np.asarray(_decode(normalise_photo(data, MUG).data), dtype=np.int32)
    left = out[:, :150]
    assert left[..., 0].mean() > 180 and left[..., 1].mean() < 80


def test_rejected_photo_cannot_be_normalised() -> None:
    with pytest.raises(UserFacingError) as raised:
        normalise_photo(b"not an image", MUG, name="x.jpg")
    assert raised.value.code == Reason.NOT_IMAGE.value
    assert "text file" in raised.value.message


def test_normalise_can_be_skipped() -> None:
    report = check_photo(PhotoInput(encode(textured_photo(8, (800, 600)))), MUG, normalise=False)
    assert report.accepted and report.normalised is None
