"""service.plain_png: a plain PNG decodes to exactly what Pillow gives; anything else is None.

Pillow (`Image.open` + `load`) is the reference throughout. The second half checks the
hand-over: every PNG feature outside "plain" returns None, and `decode_image` answers the
same (pixels or error) whichever path a file takes.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, PngImagePlugin

from imgzoo.manifest import InputSpec
from service.errors import ImageTooLarge, InvalidImage
from service.imaging import DecodeLimits, decode_image
from service.plain_png import decode_plain_png

MAX_PIXELS = 40_000_000
CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
SIGNATURE = b"\x89PNG\r\n\x1a\n"


def pillow(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def save_png(image: Image.Image, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **params)
    return buffer.getvalue()


def random_image(mode: str, width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (height, width) if mode == "L" else (height, width, CHANNELS[mode])
    # Half noise, half gradient: every PNG row filter wins somewhere.
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    ramp = np.linspace(0, 255, width).astype(np.uint8)
    pixels[: height // 2] = ramp if mode == "L" else ramp[:, None]
    return Image.fromarray(pixels, mode)


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of every chunk of a well-formed PNG."""
    out, position = [], len(SIGNATURE)
    while position < len(data):
        (length,) = struct.unpack_from(">I", data, position)
        kind = data[position + 4 : position + 8]
        out.append((kind, data[position + 8 : position + 8 + length]))
        position += 12 + length
    return out


def assemble(parts: list[tuple[bytes, bytes]]) -> bytes:
    return SIGNATURE + b"".join(chunk(kind, body) for kind, body in parts)


def with_chunk(data: bytes, kind: bytes, body: bytes, before: bytes = b"IDAT") -> bytes:
    """`data` with one more chunk, placed before the first chunk of type `before`."""
    parts = chunks(data)
    index = next(i for i, (k, _) in enumerate(parts) if k == before)
    return assemble([*parts[:index], (kind, body), *parts[index:]])


def assert_same_as_pillow(data: bytes) -> None:
    decoded = decode_plain_png(data, MAX_PIXELS)
    assert decoded is not None, "a plain PNG must take the fast path"
    reference = pillow(data)
    assert decoded.mode == reference.mode
    assert decoded.size == reference.size
    assert np.array_equal(np.asarray(decoded), np.asarray(reference))


# ---------------------------------------------------------------- same pixels as Pillow


@pytest.mark.parametrize("mode", sorted(CHANNELS))
@pytest.mark.parametrize(("width", "height"), [(1, 1), (7, 5), (32, 32), (65, 3)])
@pytest.mark.parametrize("params", [{}, {"compress_level": 0}, {"optimize": True}])
def test_plain_png_decodes_to_pillows_pixels(
    mode: str, width: int, height: int, params: dict[str, Any]
) -> None:
    assert_same_as_pillow(save_png(random_image(mode, width, height), **params))


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(sorted(CHANNELS)).flatmap(
        lambda mode: st.tuples(
            st.just(mode),
            arrays(
                np.uint8,
                st.tuples(st.integers(1, 24), st.integers(1, 24)).map(
                    lambda hw: hw if mode == "L" else (*hw, CHANNELS[mode])
                ),
            ),
        )
    ),
    st.integers(0, 9),
)
def test_any_plain_png_decodes_to_pillows_pixels(
    case: tuple[str, np.ndarray[Any, Any]], level: int
) -> None:
    mode, pixels = case
    assert_same_as_pillow(save_png(Image.fromarray(pixels, mode), compress_level=level))


def test_idat_split_over_several_chunks_is_joined() -> None:
    data = save_png(random_image("RGB", 40, 30))
    parts = chunks(data)
    (idat,) = [body for kind, body in parts if kind == b"IDAT"]
    pieces = [idat[i : i + 97] for i in range(0, len(idat), 97)]
    split = assemble([parts[0], *[(b"IDAT", p) for p in pieces], (b"IEND", b"")])
    assert len(pieces) > 3
    assert_same_as_pillow(split)


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (b"gAMA", struct.pack(">I", 45455)),
        (b"sRGB", b"\x00"),
        (b"pHYs", struct.pack(">IIB", 2835, 2835, 1)),
        (b"cHRM", struct.pack(">8I", *range(8))),
        (b"tIME", struct.pack(">HBBBBB", 2026, 12, 5, 12, 0, 0)),
    ],
)
def test_inert_ancillary_chunks_keep_the_fast_path(kind: bytes, body: bytes) -> None:
    data = save_png(random_image("RGB", 9, 9))
    assert_same_as_pillow(with_chunk(data, kind, body))
    assert_same_as_pillow(with_chunk(data, kind, body, before=b"IEND"))


def test_data_after_iend_is_ignored_as_pillow_does() -> None:
    assert_same_as_pillow(save_png(random_image("RGBA", 8, 8)) + b"trailing bytes")


def test_real_cifar10_pngs_take_the_fast_path(cifar10_subset: Path) -> None:
    files = sorted(cifar10_subset.glob("train/*/*.png"))[::40]
    assert len(files) >= 40
    for path in files:
        assert_same_as_pillow(path.read_bytes())


# ---------------------------------------------------------------- everything else: None


def interlaced(data: bytes) -> bytes:
    parts = chunks(data)
    ihdr = parts[0][1][:12] + b"\x01"
    return assemble([(b"IHDR", ihdr), *parts[1:]])


def with_bad_crc(data: bytes, kind: bytes) -> bytes:
    position = len(SIGNATURE)
    while True:
        (length,) = struct.unpack_from(">I", data, position)
        if data[position + 4 : position + 8] == kind:
            crc_at = position + 8 + length
            return data[:crc_at] + bytes([data[crc_at] ^ 1]) + data[crc_at + 1 :]
        position += 12 + length


def corrupt_idat(data: bytes) -> bytes:
    parts = chunks(data)
    return assemble([(k, b"\x78\x9c" + b"\xff" * 40 if k == b"IDAT" else b) for k, b in parts])


def truncated_idat(data: bytes) -> bytes:
    """The zlib stream cut in half, every chunk still well formed."""
    return assemble([(k, b[: len(b) // 2] if k == b"IDAT" else b) for k, b in chunks(data)])


def rotated_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    return exif


RGB = save_png(random_image("RGB", 12, 10))
NOT_PLAIN: dict[str, bytes] = {
    "palette": save_png(random_image("RGB", 12, 10).convert("P")),
    "1-bit": save_png(random_image("L", 12, 10).convert("1")),
    "16-bit grey": save_png(Image.fromarray(np.arange(120, dtype=np.uint16).reshape(10, 12))),
    "interlaced": interlaced(RGB),
    "transparency key": save_png(random_image("RGB", 12, 10), transparency=(1, 2, 3)),
    "EXIF": save_png(random_image("RGB", 12, 10), exif=rotated_exif()),
    "text": with_chunk(RGB, b"tEXt", b"Software\x00imgzoo"),
    "ICC profile": with_chunk(RGB, b"iCCP", b"icc\x00\x00" + zlib.compress(b"profile")),
    "unknown chunk": with_chunk(RGB, b"prIv", b"data"),
    "inert chunk of the wrong length": with_chunk(RGB, b"gAMA", b"\x00\x01"),
    "chunk between IDATs": assemble(
        [
            chunks(RGB)[0],
            (b"IDAT", chunks(RGB)[1][1][:10]),
            (b"sRGB", b"\x00"),
            (b"IDAT", chunks(RGB)[1][1][10:]),
            (b"IEND", b""),
        ]
    ),
    "bad IHDR CRC": with_bad_crc(RGB, b"IHDR"),
    "bad IDAT CRC": with_bad_crc(RGB, b"IDAT"),
    "no IEND": RGB[:-12],
    "cut in a chunk": RGB[:-20],
    "no IDAT": assemble([chunks(RGB)[0], (b"IEND", b"")]),
    "IHDR not first": assemble([(b"sRGB", b"\x00"), *chunks(RGB)]),
    "corrupt pixel data": corrupt_idat(RGB),
    "truncated pixel data": truncated_idat(RGB),
    "zero width": assemble(
        [(b"IHDR", struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0)), *chunks(RGB)[1:]]
    ),
    "not a PNG": b"GIF89a" + RGB[6:],
    "empty": b"",
}


@pytest.mark.parametrize("name", sorted(NOT_PLAIN))
def test_anything_but_a_plain_png_goes_to_the_general_path(name: str) -> None:
    assert decode_plain_png(NOT_PLAIN[name], MAX_PIXELS) is None


def test_size_limits_hand_over_to_the_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    data = save_png(random_image("RGB", 20, 10))
    assert decode_plain_png(data, 200) is not None
    assert decode_plain_png(data, 199) is None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 199)
    assert decode_plain_png(data, MAX_PIXELS) is None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert decode_plain_png(data, MAX_PIXELS) is not None


# ---------------------------------------------------------------- decode_image either way


def spec(
    channels: Literal[1, 3], resize: Literal["stretch", "center_crop", "letterbox"]
) -> InputSpec:
    return InputSpec(
        height=16, width=16, channels=channels, resize=resize, mean=(0.5,) * channels,
        std=(0.25,) * channels,
    )  # fmt: skip


@pytest.mark.parametrize("mode", sorted(CHANNELS))
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("resize", ["stretch", "center_crop", "letterbox"])
def test_decode_image_is_the_same_on_either_path(
    mode: str, channels: Literal[1, 3], resize: Literal["stretch", "center_crop", "letterbox"]
) -> None:
    """A text chunk sends the same pixels through `Image.open`: the answers must match,
    alpha composited over white included."""
    plain = save_png(random_image(mode, 24, 20, seed=3))
    general = with_chunk(plain, b"tEXt", b"Comment\x00same pixels")
    assert decode_plain_png(plain, MAX_PIXELS) is not None
    assert decode_plain_png(general, MAX_PIXELS) is None
    model = spec(channels, resize)
    np.testing.assert_array_equal(
        decode_image(plain, model, DecodeLimits()), decode_image(general, model, DecodeLimits())
    )


def test_decode_image_accepts_what_pillow_accepts() -> None:
    """A wrong IDAT CRC is not plain, but Pillow does not check it: the image still decodes."""
    model = spec(3, "stretch")
    np.testing.assert_array_equal(
        decode_image(NOT_PLAIN["bad IDAT CRC"], model, DecodeLimits()),
        decode_image(RGB, model, DecodeLimits()),
    )


def test_an_exif_orientation_still_turns_the_image() -> None:
    upright = decode_image(NOT_PLAIN["EXIF"], InputSpec(
        height=12, width=10, channels=3, resize="stretch", mean=(0.5,) * 3, std=(0.25,) * 3
    ), DecodeLimits())  # fmt: skip
    stored = np.asarray(pillow(RGB))
    np.testing.assert_array_equal(upright, np.rot90(stored, k=-1))


@pytest.mark.parametrize("name", ["corrupt pixel data", "truncated pixel data", "bad IHDR CRC"])
def test_broken_pngs_still_get_a_422(name: str) -> None:
    with pytest.raises(InvalidImage):
        decode_image(NOT_PLAIN[name], spec(3, "stretch"), DecodeLimits())


def test_an_oversized_plain_png_still_gets_a_413() -> None:
    with pytest.raises(ImageTooLarge):
        decode_image(RGB, spec(3, "stretch"), DecodeLimits(max_pixels=119))


def test_pillow_reads_the_inert_chunks_as_nothing_that_matters() -> None:
    """What `_INERT` assumes: Pillow keeps these chunks as metadata and never alters pixels."""
    data = with_chunk(with_chunk(RGB, b"gAMA", struct.pack(">I", 100000)), b"sRGB", b"\x01")
    image = pillow(data)
    assert isinstance(image, PngImagePlugin.PngImageFile)
    assert "transparency" not in image.info
    assert image.getexif().get(0x0112) is None
    assert np.array_equal(np.asarray(image), np.asarray(pillow(RGB)))
