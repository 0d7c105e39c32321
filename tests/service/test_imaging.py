"""service.imaging: formats, conversions, orientation, resize policies, limits and errors."""

from __future__ import annotations

import io
import resource
import struct
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageOps, JpegImagePlugin

from imgzoo.manifest import InputSpec
from service import imaging
from service.errors import ImageTooLarge, InvalidImage, ServiceError, UnsupportedMediaType
from service.imaging import (
    DecodeLimits,
    decode_image,
    decode_into,
    png_header_pixels,
    sniff_format,
)

LIMITS = DecodeLimits()
RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)
Array = npt.NDArray[Any]


def make_spec(
    height: int,
    width: int,
    channels: Literal[1, 3] = 3,
    resize: Literal["stretch", "center_crop", "letterbox"] = "stretch",
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos", "box"] = "bilinear",
) -> InputSpec:
    return InputSpec(
        height=height,
        width=width,
        channels=channels,
        resize=resize,
        interpolation=interpolation,
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
    )


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def smooth_rgb(width: int, height: int, seed: int = 0) -> Array:
    """A smooth random RGB image: upsampled noise, so lossy codecs keep it close."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    return np.asarray(small.resize((width, height), Image.Resampling.BICUBIC))


def bands(width: int, height: int, colours: list[tuple[int, int, int]]) -> Image.Image:
    """Vertical bands of equal width, left to right."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    step = width // len(colours)
    for i, colour in enumerate(colours):
        array[:, i * step : (i + 1) * step] = colour
    return Image.fromarray(array)


def pillow_rgb(data: bytes) -> Array:
    """Pillow's own decode, as a reference."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def assert_colour(region: Array, colour: tuple[int, ...], tol: float = 24) -> None:
    assert region.size > 0
    mean = region.reshape(-1, region.shape[-1]).mean(axis=0)
    assert np.abs(mean - np.array(colour)).max() <= tol, (mean, colour)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height RGB, with one empty IDAT: no real pixels."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


# --- sniffing and limits -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("JPEG", "JPEG"),
        ("PNG", "PNG"),
        ("WEBP", "WEBP"),
        ("BMP", "BMP"),
        ("GIF", "GIF"),
        ("TIFF", "TIFF"),
        ("ICO", "ICO"),
        ("PDF", "PDF"),
    ],
)
def test_sniff_format_names_what_pillow_wrote(fmt: str, expected: str) -> None:
    data = encode(Image.fromarray(smooth_rgb(16, 16)), fmt)
    assert sniff_format(data) == expected


@pytest.mark.parametrize("data", [b"", b"hello, world", b"\x00" * 64, b"RIFF\x00\x00\x00\x00WAVE"])
def test_sniff_format_unknown(data: bytes) -> None:
    assert sniff_format(data) is None


def test_limits_validate_and_normalise() -> None:
    assert DecodeLimits(formats=frozenset({"png", "Jpeg"})).formats == {"PNG", "JPEG"}
    with pytest.raises(ValueError, match="TIFF"):
        DecodeLimits(formats=frozenset({"PNG", "TIFF"}))
    with pytest.raises(ValueError, match="positive"):
        DecodeLimits(max_pixels=0)
    with pytest.raises(ValueError, match="at least one"):
        DecodeLimits(formats=frozenset())


# --- formats and pass-through --------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_each_format_decodes_like_pillow(fmt: str) -> None:
    source = smooth_rgb(40, 24, seed=1)
    params = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    data = encode(Image.fromarray(source), fmt, **params)
    out = decode_image(data, make_spec(24, 40), LIMITS)
    assert out.shape == (24, 40, 3)
    assert out.dtype == np.uint8
    assert out.flags.c_contiguous
    # Same size: no resampling, so exactly Pillow's pixels, and near the source for every codec.
    np.testing.assert_array_equal(out, pillow_rgb(data))
    assert np.abs(out.astype(int) - source).mean() < 8
    if fmt in ("PNG", "BMP"):
        np.testing.assert_array_equal(out, source)


def test_exact_pass_through_png_rgb_and_grey() -> None:
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(rgb), "PNG"), make_spec(32, 32), LIMITS)
    np.testing.assert_array_equal(out, rgb)
    grey = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(grey), "PNG"), make_spec(20, 30, 1), LIMITS)
    assert out.shape == (20, 30, 1)
    np.testing.assert_array_equal(out[..., 0], grey)


def test_result_is_read_only() -> None:
    data = encode(Image.fromarray(smooth_rgb(8, 8)), "PNG")
    for spec in (make_spec(8, 8), make_spec(8, 8, resize="letterbox"), make_spec(4, 8)):
        assert not decode_image(data, spec, LIMITS).flags.writeable


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animation_gives_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(io.BytesIO(data)) as check:
        assert getattr(check, "n_frames", 1) == 3
    out = decode_image(data, make_spec(16, 16), LIMITS)
    assert_colour(out, RED, tol=8)


# --- EXIF orientation ----------------------------------------------------------------------


def jpeg_with_orientation(image: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, fmt, exif=exif.tobytes(), quality=95)


@pytest.mark.parametrize(("orientation", "top", "bottom"), [(6, RED, BLUE), (8, BLUE, RED)])
@pytest.mark.parametrize("stored_width", [64, 640])  # 640: decoded at 1/8 scale via draft
def test_exif_quarter_turns(
    orientation: int, top: tuple[int, ...], bottom: tuple[int, ...], stored_width: int
) -> None:
    # Stored wide: left half red, right half blue. 6 = turn clockwise: left edge goes on top.
    stored = bands(stored_width, stored_width // 2, [RED, BLUE])
    out = decode_image(jpeg_with_orientation(stored, orientation), make_spec(64, 32), LIMITS)
    assert out.shape == (64, 32, 3)
    assert_colour(out[:28], top)
    assert_colour(out[36:], bottom)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_imageops(orientation: int) -> None:
    stored = Image.fromarray(smooth_rgb(48, 24, seed=orientation))
    stored.paste(RED, (0, 0, 8, 4))  # an asymmetric marker
    data = jpeg_with_orientation(stored, orientation)
    with Image.open(io.BytesIO(data)) as reference_image:
        reference = np.asarray(ImageOps.exif_transpose(reference_image).convert("RGB"))
    height, width = reference.shape[:2]
    out = decode_image(data, make_spec(height, width), LIMITS)
    np.testing.assert_array_equal(out, reference)


def test_png_exif_orientation_applied() -> None:
    stored = bands(40, 20, [RED, BLUE])
    out = decode_image(jpeg_with_orientation(stored, 6, fmt="PNG"), make_spec(40, 20), LIMITS)
    assert_colour(out[:20], RED, tol=0)
    assert_colour(out[20:], BLUE, tol=0)


# --- pixel modes ---------------------------------------------------------------------------


def expected_for(channels: int, rgb: Array) -> Array:
    """What a model with `channels` sees for these RGB pixels (Pillow's luma for grey)."""
    if channels == 3:
        return rgb
    return np.asarray(Image.fromarray(rgb.astype(np.uint8)).convert("L"))[..., None]


@pytest.mark.parametrize("channels", [1, 3])
def test_palette_with_and_without_transparency(channels: Literal[1, 3]) -> None:
    palette_image = Image.new("P", (4, 2))
    palette_image.putpalette([*RED, *GREEN, *BLUE] + [0] * (256 - 3) * 3)
    palette_image.putdata([0, 1, 2, 1, 2, 0, 1, 1])
    rgb = np.array([[RED, GREEN, BLUE, GREEN], [BLUE, RED, GREEN, GREEN]], dtype=np.uint8)
    spec = make_spec(2, 4, channels)
    plain = decode_image(encode(palette_image, "PNG"), spec, LIMITS)
    np.testing.assert_array_equal(plain, expected_for(channels, rgb))
    # Index 0 transparent -> composited over white.
    rgb_transparent = rgb.copy()
    rgb_transparent[[0, 1], [0, 1]] = WHITE
    for fmt in ("PNG", "GIF"):
        out = decode_image(encode(palette_image, fmt, transparency=0), spec, LIMITS)
        np.testing.assert_array_equal(out, expected_for(channels, rgb_transparent), err_msg=fmt)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_rgba_composited_over_white(channels: Literal[1, 3], fmt: str) -> None:
    rgba = np.array([[[10, 200, 30, 0], [10, 200, 30, 255], [10, 200, 30, 128]]], np.uint8)
    out = decode_image(
        encode(Image.fromarray(rgba, "RGBA"), fmt, lossless=True), make_spec(1, 3, channels), LIMITS
    )
    alpha = rgba[..., 3:].astype(float) / 255
    expected = np.rint(rgba[..., :3] * alpha + 255 * (1 - alpha))
    assert np.abs(out.astype(int) - expected_for(channels, expected)).max() <= 1


@pytest.mark.parametrize("channels", [1, 3])
def test_la_composited_over_white(channels: Literal[1, 3]) -> None:
    la = np.array([[[40, 0], [40, 255], [40, 64]]], dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(la, "LA"), "PNG"), make_spec(1, 3, channels), LIMITS)
    expected = [255, 40, round(40 * 64 / 255 + 255 * 191 / 255)]
    for c in range(channels):
        assert np.abs(out[0, :, c].astype(int) - expected).max() <= 1


@pytest.mark.parametrize("channels", [1, 3])
def test_cmyk_jpeg(channels: Literal[1, 3]) -> None:
    cmyk = np.zeros((16, 32, 4), dtype=np.uint8)
    cmyk[:, 16:, 0] = 255  # right half pure cyan, left half no ink (white)
    data = encode(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95)
    out = decode_image(data, make_spec(16, 32, channels), LIMITS)
    expected = expected_for(channels, np.array([[WHITE, (0, 255, 255)]], dtype=np.uint8))
    assert_colour(out[:, :8], tuple(expected[0, 0]), tol=6)
    assert_colour(out[:, 24:], tuple(expected[0, 1]), tol=6)


@pytest.mark.parametrize("channels", [1, 3])
def test_sixteen_bit_grey_is_scaled_not_clipped(channels: Literal[1, 3]) -> None:
    values = np.array([[0, 1000, 257 * 100, 32768, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode.startswith("I;16")
    out = decode_image(data, make_spec(1, 5, channels), LIMITS)
    expected = [0, 4, 100, 128, 255]  # round(v / 257); clipping would give 0, 255, 255, ...
    for c in range(channels):
        assert out[0, :, c].tolist() == expected


def test_int32_and_float_modes_become_8_bit() -> None:
    as_int = Image.fromarray(np.array([[-5, 0, 257 * 7, 70000]], dtype=np.int32), "I")
    assert np.asarray(imaging._grey_to_8_bit(as_int)).tolist() == [[0, 0, 7, 255]]
    as_float = Image.fromarray(np.array([[-1.0, 3.4, 3.6, 300.0]], dtype=np.float32), "F")
    assert np.asarray(imaging._grey_to_8_bit(as_float)).tolist() == [[0, 3, 4, 255]]


@pytest.mark.parametrize("mode", ["YCbCr", "RGBX", "PA", "La", "RGBa", "1", "P"])
def test_any_mode_becomes_resizable(mode: str) -> None:
    image = Image.new(mode, (3, 2))
    converted = imaging._to_resizable_mode(image, "RGB")
    assert converted.mode in {"L", "LA", "RGB", "RGBA"}
    assert converted.size == (3, 2)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("fmt", ["PNG", "BMP"])
def test_one_bit(channels: Literal[1, 3], fmt: str) -> None:
    bits = np.array([[0, 1, 1, 0], [1, 0, 0, 1]], dtype=bool)
    data = encode(Image.fromarray(bits), fmt)
    out = decode_image(data, make_spec(2, 4, channels), LIMITS)
    for c in range(channels):
        np.testing.assert_array_equal(out[..., c], np.where(bits, 255, 0))


def test_grey_to_rgb_and_rgb_to_grey() -> None:
    grey = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    out = decode_image(encode(Image.fromarray(grey), "PNG"), make_spec(4, 6, 3), LIMITS)
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))
    rgb = smooth_rgb(6, 4, seed=3)
    out = decode_image(encode(Image.fromarray(rgb), "PNG"), make_spec(4, 6, 1), LIMITS)
    np.testing.assert_array_equal(out, expected_for(1, rgb))


# --- resize policies -----------------------------------------------------------------------


def test_stretch_ignores_aspect_ratio() -> None:
    data = encode(bands(64, 16, [RED, BLUE]), "PNG")
    out = decode_image(data, make_spec(32, 32), LIMITS)
    assert out.shape == (32, 32, 3)
    assert_colour(out[:, :14], RED, tol=0)
    assert_colour(out[:, 18:], BLUE, tol=0)


def test_center_crop_keeps_the_middle() -> None:
    two = encode(bands(64, 32, [RED, BLUE]), "PNG")
    out = decode_image(two, make_spec(32, 32, resize="center_crop"), LIMITS)
    assert_colour(out[:, :16], RED, tol=0)
    assert_colour(out[:, 16:], BLUE, tol=0)
    three = encode(bands(96, 32, [RED, GREEN, BLUE]), "PNG")
    out = decode_image(three, make_spec(16, 16, resize="center_crop"), LIMITS)
    # Scaled to 48x16, the centre 16 columns are green; only the outer ones see the neighbours
    # through the filter.
    assert_colour(out[:, 2:14], GREEN, tol=0)
    assert (out[:, :, 0].astype(int) + out[:, :, 2] < 64).all()
    tall = encode(bands(32, 96, [RED]).rotate(0), "PNG")
    out = decode_image(tall, make_spec(8, 24, resize="center_crop"), LIMITS)
    assert out.shape == (8, 24, 3)


@pytest.mark.parametrize(
    ("src", "dst"), [((57, 41), (32, 32)), ((41, 57), (24, 24)), ((64, 48), (48, 48))]
)
def test_center_crop_matches_torchvision(src: tuple[int, int], dst: tuple[int, int]) -> None:
    transforms = pytest.importorskip("torchvision.transforms")
    image = Image.fromarray(smooth_rgb(*src, seed=5))
    pipeline = transforms.Compose(
        [
            transforms.Resize(dst[0], interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(dst),
        ]
    )
    expected = np.asarray(pipeline(image))
    out = decode_image(
        encode(image, "PNG"), make_spec(dst[1], dst[0], resize="center_crop"), LIMITS
    )
    diff = np.abs(out.astype(int) - expected)
    assert diff.max() <= 1  # the same filter taps; at most float rounding differs
    assert diff.mean() < 0.05


@pytest.mark.parametrize(("size", "spec_hw"), [((64, 32), (32, 32)), ((16, 48), (24, 24))])
def test_letterbox_pads_with_black(size: tuple[int, int], spec_hw: tuple[int, int]) -> None:
    data = encode(Image.new("RGB", size, RED), "PNG")
    spec = make_spec(*spec_hw, resize="letterbox")
    out = decode_image(data, spec, LIMITS)
    assert out.shape == (*spec_hw, 3)
    if size[0] > size[1]:  # wide: 64x32 -> 32x16 centred, rows 0..7 and 24..31 black
        assert_colour(out[:8], BLACK, tol=0)
        assert_colour(out[8:24], RED, tol=0)
        assert_colour(out[24:], BLACK, tol=0)
    else:  # tall: 16x48 -> 8x24 centred, columns 0..7 and 16..23 black
        assert_colour(out[:, :8], BLACK, tol=0)
        assert_colour(out[:, 8:16], RED, tol=0)
        assert_colour(out[:, 16:], BLACK, tol=0)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic", "lanczos", "box"])
def test_interpolation_is_the_specs(
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos", "box"],
) -> None:
    rng = np.random.default_rng(11)
    image = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    out = decode_image(encode(image, "PNG"), make_spec(13, 17, interpolation=interpolation), LIMITS)
    expected = np.asarray(image.resize((17, 13), imaging._RESAMPLE[interpolation]))
    np.testing.assert_array_equal(out, expected)


def test_large_jpeg_is_drafted_and_close_to_full_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    scales: list[int] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: Any) -> Any:
        result = original(self, mode, size)
        scales.append(self.decoderconfig[0] if self.decoderconfig else 1)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    source = Image.fromarray(smooth_rgb(800, 600, seed=2))
    data = encode(source, "JPEG", quality=92)
    spec = make_spec(32, 32, resize="center_crop")
    out = decode_image(data, spec, LIMITS)
    assert scales == [8]  # 600 // 32 = 18 -> 1/8 scale: 100x75 decoded
    # Reference: full-size decode, then the same crop + resize.
    full = Image.open(io.BytesIO(data)).convert("RGB")
    reference = np.asarray(full.resize((32, 32), Image.Resampling.BILINEAR, box=(100, 0, 700, 600)))
    assert np.abs(out.astype(int) - reference).mean() < 3
    scales.clear()
    decode_image(encode(source.resize((40, 30)), "JPEG"), spec, LIMITS)
    assert scales == [1]  # under 2x the target: full-scale decode


# --- decode_into ---------------------------------------------------------------------------


@pytest.mark.parametrize("resize", ["stretch", "center_crop", "letterbox"])
def test_decode_into_batch_slot_equals_decode_image(
    resize: Literal["stretch", "center_crop", "letterbox"],
) -> None:
    spec = make_spec(16, 24, resize=resize)
    images = [encode(Image.fromarray(smooth_rgb(40, 20 + 10 * i, seed=i)), "PNG") for i in range(3)]
    batch = np.full((3, 16, 24, 3), 77, dtype=np.uint8)
    for i, data in enumerate(images):
        decode_into(data, spec, LIMITS, batch[i])
    for i, data in enumerate(images):
        np.testing.assert_array_equal(batch[i], decode_image(data, spec, LIMITS))


def test_decode_into_rejects_wrong_buffer_and_keeps_it_on_error() -> None:
    spec = make_spec(8, 8)
    data = encode(Image.new("RGB", (8, 8), RED), "PNG")
    wrong: list[Array] = [np.zeros((8, 8, 1), np.uint8), np.zeros((8, 8, 3), np.float32)]
    for bad in wrong:
        with pytest.raises(ValueError, match="out must be"):
            decode_into(data, spec, LIMITS, bad)
    read_only = np.zeros((8, 8, 3), np.uint8)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        decode_into(data, spec, LIMITS, read_only)
    out = np.full((8, 8, 3), 9, np.uint8)
    with pytest.raises(InvalidImage):
        decode_into(data[: len(data) // 2], spec, LIMITS, out)
    assert (out == 9).all()


# --- errors --------------------------------------------------------------------------------


def assert_service_error(exc: ServiceError, status: int, code: str) -> None:
    assert exc.status_code == status
    assert exc.code == code
    assert "PIL" not in exc.message
    assert "/" not in exc.message.replace("x/", "")  # no paths
    assert len(exc.message) < 160


def test_empty_upload() -> None:
    with pytest.raises(InvalidImage) as info:
        decode_image(b"", make_spec(8, 8), LIMITS)
    assert_service_error(info.value, 422, "invalid_image")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_truncated(fmt: str) -> None:
    data = encode(Image.fromarray(smooth_rgb(64, 64)), fmt)
    with pytest.raises(InvalidImage) as info:
        decode_image(data[: len(data) // 2], make_spec(8, 8), LIMITS)
    assert_service_error(info.value, 422, "invalid_image")
    assert fmt in info.value.message


def test_magic_then_garbage_is_invalid() -> None:
    rng = np.random.default_rng(3)
    for magic in (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM"):
        with pytest.raises(InvalidImage) as info:
            decode_image(magic + rng.bytes(200), make_spec(8, 8), LIMITS)
        assert_service_error(info.value, 422, "invalid_image")


def test_random_bytes_are_unsupported() -> None:
    data = b"\x01" + np.random.default_rng(0).bytes(4096)
    with pytest.raises(UnsupportedMediaType) as info:
        decode_image(data, make_spec(8, 8), LIMITS)
    assert_service_error(info.value, 415, "unsupported_media_type")
    assert info.value.details["format"] is None


@pytest.mark.parametrize("kind", ["TIFF", "ICO", "PDF", "text"])
def test_other_formats_are_415(kind: str) -> None:
    image = Image.fromarray(smooth_rgb(16, 16))
    data = b"just some text, not an image\n" if kind == "text" else encode(image, kind)
    with pytest.raises(UnsupportedMediaType) as info:
        decode_image(data, make_spec(8, 8), LIMITS)
    assert_service_error(info.value, 415, "unsupported_media_type")
    assert info.value.details["accepted"] == ["BMP", "GIF", "JPEG", "PNG", "WEBP"]
    if kind != "text":
        assert kind in info.value.message


def test_format_switched_off_by_limits() -> None:
    data = encode(Image.fromarray(smooth_rgb(16, 16)), "JPEG")
    with pytest.raises(UnsupportedMediaType, match="JPEG"):
        decode_image(data, make_spec(8, 8), DecodeLimits(formats=frozenset({"PNG"})))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@pytest.mark.parametrize("max_pixels", [40_000_000, 10**12])
def test_png_declaring_100k_by_100k_is_refused_fast(max_pixels: int) -> None:
    # 10^10 pixels. With a huge max_pixels, Pillow's own bomb guard answers (same 413).
    if max_pixels > 10**10 and Image.MAX_IMAGE_PIXELS is None:
        pytest.skip("Pillow's bomb guard is switched off in this process")
    data = png_header_only(100_000, 100_000)
    rss_before = peak_rss_mib()
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data, make_spec(8, 8), DecodeLimits(max_pixels=max_pixels))
    assert time.perf_counter() - started < 0.5
    assert peak_rss_mib() - rss_before < 64  # decoding would need 40 GB
    assert_service_error(info.value, 413, "image_too_large")
    assert info.value.details["max_pixels"] == max_pixels


def test_pillow_bomb_warning_as_error_is_413() -> None:
    # 10000 x 10000 = 1e8 pixels: over Pillow's warning threshold, under its error threshold.
    data = png_header_only(10_000, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageTooLarge):
            decode_image(data, make_spec(8, 8), DecodeLimits(max_pixels=10**9))
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageTooLarge) as info:
        decode_image(data, make_spec(8, 8), LIMITS)
    assert info.value.details == {"width": 10_000, "height": 10_000, "max_pixels": 40_000_000}


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
def test_max_pixels_is_respected(fmt: str) -> None:
    data = encode(Image.fromarray(smooth_rgb(200, 100)), fmt)
    out = decode_image(data, make_spec(10, 20), DecodeLimits(max_pixels=20_000))
    assert out.shape == (10, 20, 3)
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data, make_spec(10, 20), DecodeLimits(max_pixels=19_999))
    assert info.value.details == {"width": 200, "height": 100, "max_pixels": 19_999}


# --- real images ---------------------------------------------------------------------------


def first_files(root: Path, pattern: str, count: int) -> Iterator[Path]:
    files = sorted(root.rglob(pattern))
    assert files, f"no {pattern} under {root}"
    step = max(1, len(files) // count)
    return iter(files[::step][:count])


@pytest.mark.shared_data
def test_cifar10_png_pass_through_is_exact(cifar10_subset: Path) -> None:
    spec = make_spec(32, 32)
    for path in first_files(cifar10_subset, "*.png", 100):
        data = path.read_bytes()
        np.testing.assert_array_equal(decode_image(data, spec, LIMITS), pillow_rgb(data))


@pytest.mark.shared_data
def test_fer2013_grey_jpeg_for_both_channel_counts(fer2013_subset: Path) -> None:
    for path in first_files(fer2013_subset, "*.jpg", 50):
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            assert image.mode == "L"
            reference = np.asarray(image)
        grey = decode_image(data, make_spec(48, 48, 1), LIMITS)
        np.testing.assert_array_equal(grey[..., 0], reference)
        rgb = decode_image(data, make_spec(48, 48, 3), LIMITS)
        np.testing.assert_array_equal(rgb, np.repeat(reference[..., None], 3, axis=2))


@pytest.mark.shared_data
@pytest.mark.parametrize("resize", ["stretch", "center_crop", "letterbox"])
def test_butterfly_photos_resized(
    butterfly_sample: Path, resize: Literal["stretch", "center_crop", "letterbox"]
) -> None:
    spec = make_spec(64, 48, resize=resize)
    for path in first_files(butterfly_sample, "*.jpg", 30):
        data = path.read_bytes()
        out = decode_image(data, spec, LIMITS)
        assert out.shape == (64, 48, 3)
        assert out.std() > 10  # a photo, not a constant
        if resize == "stretch":
            # Drafted at 1/2 scale; close to a full-size decode and resize.
            reference = np.asarray(
                Image.open(io.BytesIO(data))
                .convert("RGB")
                .resize((48, 64), Image.Resampling.BILINEAR)
            )
            assert np.abs(out.astype(int) - reference).mean() < 4


def test_png_header_pixels_reads_the_ihdr_and_nothing_else() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (37, 11)).save(buffer, format="PNG")
    data = buffer.getvalue()
    assert png_header_pixels(data) == 37 * 11
    assert png_header_pixels(data[:23]) is None  # too short to hold the IHDR
    assert png_header_pixels(b"GIF89a" + data[6:]) is None
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8)).save(jpeg, format="JPEG")
    assert png_header_pixels(jpeg.getvalue()) is None
