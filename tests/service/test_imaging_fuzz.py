"""Fuzz the decoding path with mutated real-format bytes (issue 8, "Bad input").

Every outcome must be a valid array of the requested shape or a `ServiceError` with a 4xx
status and a short message of our own: no other exception, no hang (hypothesis' deadline bounds
each example), no runaway memory (the pixel limit bounds every allocation).
"""

from __future__ import annotations

import io
import resource
from datetime import timedelta
from functools import cache
from typing import Any, Literal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from imgzoo.manifest import InputSpec
from service.errors import ImageTooLarge, InvalidImage, ServiceError, UnsupportedMediaType
from service.imaging import DecodeLimits, decode_image

# 1 Mpx keeps each example's worst-case allocation small; the default limit is tested elsewhere.
LIMITS = DecodeLimits(max_pixels=1_000_000)
Channels = Literal[1, 3]
Resize = Literal["stretch", "center_crop", "letterbox"]
# Pillow warns about some damaged files ("Invalid APNG", "Corrupt EXIF data") before failing or
# recovering; the outcome is what is checked here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")


def _encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


@cache
def seeds() -> dict[str, bytes]:
    """Small valid files of every format, exercising the features the decoder parses."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    photo = noise.resize((48, 40), Image.Resampling.BICUBIC)
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((48, 40)))
    grey = photo.convert("L")
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [Image.new("RGB", (24, 24), colour) for colour in ("red", "green", "blue")]
    return {
        "jpeg": _encode(photo, "JPEG", quality=80, exif=exif.tobytes()),
        "jpeg_progressive": _encode(photo, "JPEG", progressive=True, optimize=True),
        "jpeg_cmyk": _encode(photo.convert("CMYK"), "JPEG"),
        "png": _encode(photo, "PNG"),
        "png_rgba": _encode(rgba, "PNG"),
        "png_palette": _encode(photo.convert("P"), "PNG", transparency=0),
        "png_16bit": _encode(Image.fromarray(np.asarray(grey, np.uint16) * 257), "PNG"),
        "png_animated": _encode(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "webp": _encode(photo, "WEBP", quality=80),
        "webp_lossless_alpha": _encode(rgba, "WEBP", lossless=True),
        "gif": _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], loop=0),
        "bmp": _encode(photo, "BMP"),
    }


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed with 1-4 mutations, biased towards the headers where the parsing happens."""
    names = sorted(seeds())
    data = bytearray(seeds()[draw(st.sampled_from(names))])
    for _ in range(draw(st.integers(1, 4))):
        size = max(len(data), 1)
        position = draw(st.one_of(st.integers(0, min(size - 1, 96)), st.integers(0, size - 1)))
        kind = draw(st.sampled_from(["flip", "set", "truncate", "splice", "insert", "delete"]))
        if kind == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[position] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF]) | st.integers(0, 255))
        elif kind == "truncate":
            del data[position:]
        elif kind == "splice":
            # The tail of another file (same or other format) after this one's head.
            other = seeds()[draw(st.sampled_from(names))]
            data = data[:position] + other[draw(st.integers(0, len(other))) :]
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[position : position + draw(st.integers(1, 16))]
    return bytes(data)


def check_outcome(data: bytes, spec: InputSpec) -> str:
    try:
        out = decode_image(data, spec, LIMITS)
    except ServiceError as exc:
        assert isinstance(exc, InvalidImage | UnsupportedMediaType | ImageTooLarge), type(exc)
        assert 400 <= exc.status_code < 500
        assert exc.message and len(exc.message) < 160 and "PIL" not in exc.message
        return exc.code
    assert out.shape == (spec.height, spec.width, spec.channels)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    return "ok"


@pytest.mark.parametrize("name", sorted(seeds()))
def test_seeds_decode(name: str) -> None:
    spec = InputSpec(height=16, width=16, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert check_outcome(seeds()[name], spec) == "ok"


@settings(
    max_examples=600,
    deadline=timedelta(seconds=1),
    derandomize=True,  # the same examples on every run: CI failures reproduce
    database=None,  # write nothing into the checkout
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    data=mutated(),
    channels=st.sampled_from([1, 3]),
    resize=st.sampled_from(["stretch", "center_crop", "letterbox"]),
    size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
)
def test_mutated_images_give_an_array_or_a_4xx(
    data: bytes, channels: Channels, resize: Resize, size: tuple[int, int]
) -> None:
    spec = InputSpec(
        height=size[0],
        width=size[1],
        channels=channels,
        resize=resize,
        mean=(0.5,) * channels,
        std=(0.5,) * channels,
    )
    check_outcome(data, spec)


def test_fuzzing_leaves_memory_bounded() -> None:
    """Thousands of hostile inputs later, the process has not grown by more than the limit."""
    rng = np.random.default_rng(1)
    spec = InputSpec(height=8, width=8, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    names = sorted(seeds())
    outcomes: dict[str, int] = {}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i in range(1500):
        data = bytearray(seeds()[names[i % len(names)]])
        for _ in range(3):
            data[rng.integers(0, len(data))] = rng.integers(0, 256)
        code = check_outcome(bytes(data[: rng.integers(1, len(data) + 1)]), spec)
        outcomes[code] = outcomes.get(code, 0) + 1
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 64
    # The mutations really exercised both sides.
    assert outcomes.get("ok", 0) > 10 and outcomes.get("invalid_image", 0) > 10, outcomes
