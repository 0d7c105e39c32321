"""Decode an uploaded image into the uint8 array the graph input `image` takes.

The service calls `decode_image` / `decode_into` from a worker thread for every upload. The path
is: sniff the format from magic bytes -> open it with exactly that Pillow plugin -> refuse it on
the header's pixel count, before any pixel is decoded -> decode (large JPEGs at a reduced DCT
scale) -> apply the EXIF orientation -> bring the pixel mode to what the model takes -> resize as
the manifest's `InputSpec` says -> hand back `(height, width, channels)` uint8. A plain PNG (no
palette, transparency key, EXIF or text; `service.plain_png`) skips `Image.open`: the same
pixel decoder on its IDAT data gives the same pixels with less Python around it.

Every failure a client can cause becomes a `service.errors.ServiceError` with a 4xx status and a
short message of our own; Pillow's messages (which can name internals) never reach a client.
Pillow's global settings (`Image.MAX_IMAGE_PIXELS`, `ImageFile.LOAD_TRUNCATED_IMAGES`, warning
filters) are never changed: other code in the process owns them, and several threads decode at
once.

Choices worth knowing:

- Transparency is composited over WHITE. Transparent pixels often store black (0, 0, 0, 0), so
  dropping alpha would turn every logo, sticker or cut-out product photo into a shape on black;
  white is how browsers and viewers show such images, i.e. what the uploader saw.
- 16-bit grey (`I;16*`, and `I`, which older Pillow used for 16-bit PNG) is scaled to 8 bits,
  `round(v / 257)`, not clipped (clipping turns almost every 16-bit image white). Float (`F`)
  images follow Pillow's convention of a 0..255 range: rounded and clipped.
- `letterbox` pads with black (0), like torchvision's `Pad` default, centring the image.
- `center_crop` is torchvision's `Resize(shorter side) + CenterCrop` (same integer sizes and
  offsets), done in one Pillow call with a source `box`, so only the kept region is resampled.
- JPEGs at least twice the needed size are decoded at 1/2, 1/4 or 1/8 scale (`Image.draft`);
  the final resize then starts from an image at least as large as its output, so the cost is
  a little sharpness on the way down, not detail the model could use. A one-channel model gets
  a colour JPEG's luma straight from libjpeg (its Y plane), within 1-2 levels of Pillow's
  RGB -> L on the decoded colours.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from imgzoo.manifest import InputSpec
from service.errors import ImageTooLarge, InvalidImage, ServiceError, UnsupportedMediaType
from service.plain_png import PNG_SIGNATURE, decode_plain_png

__all__ = [
    "SUPPORTED_FORMATS",
    "DecodeLimits",
    "decode_image",
    "decode_into",
    "sniff_format",
]

SUPPORTED_FORMATS: Final = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF"})
"""Formats that can ever be decoded (Pillow format names); `DecodeLimits.formats` narrows it."""

# Magic bytes -> Pillow format name. The supported formats come first; the others are listed
# only so that a 415 can name what was sent. WebP is checked separately (RIFF....WEBP).
_MAGIC: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\xff\xd8\xff", "JPEG"),
    (PNG_SIGNATURE, "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"%PDF-", "PDF"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEGXL"),
    (b"\xff\x0a", "JPEGXL"),
    (b"qoif", "QOI"),
    (b"icns", "ICNS"),
)
# ISO-BMFF brands (bytes 8..12 after "ftyp") of still-image containers.
_FTYP_BRANDS: Final[dict[bytes, str]] = {
    b"avif": "AVIF",
    b"avis": "AVIF",
    b"heic": "HEIF",
    b"heix": "HEIF",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
}

# EXIF orientation -> the transpose that makes the image upright (the table
# `PIL.ImageOps.exif_transpose` uses). 5-8 swap width and height.
_ORIENTATION_TAG: Final = 0x0112
_TRANSPOSE: Final[dict[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES: Final = frozenset({5, 6, 7, 8})

_RESAMPLE: Final[dict[str, Image.Resampling]] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}

_WHITE: Final = 255
_SIXTEEN_BIT: Final = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_HAS_ALPHA: Final = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_MODE_FOR_CHANNELS: Final[dict[int, str]] = {1: "L", 3: "RGB"}


def _u16_to_u8_table() -> npt.NDArray[np.uint8]:
    table = ((np.arange(1 << 16, dtype=np.uint32) + 128) // 257).astype(np.uint8)
    table.flags.writeable = False
    return table


# round(v / 257) for every 16-bit value: maps 0..65535 onto 0..255 exactly (65535 = 255 * 257).
_U16_TO_U8: Final = _u16_to_u8_table()


@dataclass(frozen=True)
class DecodeLimits:
    """What an upload may be. Built once from the service settings.

    `max_pixels` bounds width * height of the encoded image (first frame), checked from the
    header before decoding. Pillow's own decompression-bomb guard (`Image.MAX_IMAGE_PIXELS`,
    process-wide, not ours to change) still applies on top: above twice its value an image is
    refused whatever `max_pixels` says.
    """

    max_pixels: int = 40_000_000
    formats: frozenset[str] = field(default=SUPPORTED_FORMATS)

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")
        formats = frozenset(f.upper() for f in self.formats)
        unknown = formats - SUPPORTED_FORMATS
        if unknown:
            raise ValueError(
                f"cannot decode {', '.join(sorted(unknown))}; "
                f"supported formats: {', '.join(sorted(SUPPORTED_FORMATS))}"
            )
        if not formats:
            raise ValueError("at least one image format must be accepted")
        object.__setattr__(self, "formats", formats)


def sniff_format(data: bytes) -> str | None:
    """The container format named by `data`'s magic bytes (a Pillow format name), or None.

    Nothing is decoded. Besides the decodable formats (`SUPPORTED_FORMATS`) this recognises a
    few common ones that are refused (TIFF, ICO, PDF, HEIF, AVIF, JPEG 2000, ...) so that the
    415 can say what was sent; whether a format is accepted is `DecodeLimits.formats`' call.
    """
    head = bytes(data[:16])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(head[8:12])
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


def png_header_pixels(data: bytes) -> int | None:
    """width x height from a PNG's IHDR chunk, read without Pillow; None when not a PNG.

    Nothing is validated beyond the chunk's place: a lying header is caught by the real decode,
    this only tells the caller how much work the decode would be.
    """
    if len(data) < 24 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big") * int.from_bytes(data[20:24], "big")


def decode_image(data: bytes, spec: InputSpec, limits: DecodeLimits) -> npt.NDArray[np.uint8]:
    """Decode `data` to a `(spec.height, spec.width, spec.channels)` uint8 C-contiguous array.

    The array is read-only: it wraps the bytes Pillow produced without a second copy. It is
    ready for `np.stack` into the graph input `image` `[N, H, W, C]`.

    Raises `UnsupportedMediaType` (415) for a format outside `limits.formats`, `ImageTooLarge`
    (413) above `limits.max_pixels`, and `InvalidImage` (422) for empty, truncated or corrupt
    data.
    """
    image, (left, top) = _decode_to_pil(data, spec, limits)
    shape = (spec.height, spec.width, spec.channels)
    if image.size == (spec.width, spec.height):
        array: npt.NDArray[np.uint8] = np.asarray(image).reshape(shape)
        return array
    out = np.zeros(shape, dtype=np.uint8)
    _place(image, out, left, top)
    out.flags.writeable = False
    return out


def decode_into(
    data: bytes, spec: InputSpec, limits: DecodeLimits, out: npt.NDArray[np.uint8]
) -> None:
    """Like `decode_image`, writing into `out`, a `(height, width, channels)` uint8 view.

    Lets the batcher decode straight into its batch array. `out` is only written once the
    image has decoded, so on an error it keeps its previous content.
    """
    shape = (spec.height, spec.width, spec.channels)
    if out.shape != shape or out.dtype != np.uint8 or not out.flags.writeable:
        raise ValueError(
            f"out must be a writeable uint8 array of shape {shape}, "
            f"got {out.dtype} {out.shape} (writeable={out.flags.writeable})"
        )
    image, (left, top) = _decode_to_pil(data, spec, limits)
    if image.size != (spec.width, spec.height):
        out[...] = 0
    _place(image, out, left, top)


def _place(image: Image.Image, out: npt.NDArray[np.uint8], left: int, top: int) -> None:
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    out[top : top + height, left : left + width] = pixels.reshape(height, width, out.shape[2])


def _decode_to_pil(
    data: bytes, spec: InputSpec, limits: DecodeLimits
) -> tuple[Image.Image, tuple[int, int]]:
    """The decoded image in the model's mode, and where its top-left goes in the output.

    Its size is (spec.width, spec.height), except under `letterbox`, where it is smaller and
    the rest of the output is padding.
    """
    if not data:
        raise InvalidImage("empty upload: no image data")
    fmt = sniff_format(data)
    if fmt is None or fmt not in limits.formats:
        accepted = sorted(limits.formats)
        what = "unrecognised data" if fmt is None else f"{fmt} images"
        raise UnsupportedMediaType(
            f"{what} cannot be decoded; send {', '.join(accepted)}",
            details={"format": fmt, "accepted": accepted},
        )
    target_mode = _MODE_FOR_CHANNELS[spec.channels]
    try:
        plain = decode_plain_png(data, limits.max_pixels) if fmt == "PNG" else None
        image = plain if plain is not None else _open_upright(data, fmt, spec, target_mode, limits)
        image = _to_resizable_mode(image, target_mode)
        geometry = _Geometry.plan(image.size, spec)
        image = geometry.apply(image, _RESAMPLE[spec.interpolation])
        image = _flatten(image, target_mode)
    except ServiceError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's process-wide guard fired on the header (the warning only when the process
        # turned it into an error). Its message is not a client's business; the numbers are.
        raise ImageTooLarge(
            f"image is too large to decode safely; the limit is {limits.max_pixels} pixels",
            details={"max_pixels": limits.max_pixels},
        ) from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage(f"not a valid {fmt} image: the header is corrupt") from exc
    except MemoryError:
        raise
    except Exception as exc:
        # Pillow's decoders report bad data with OSError, SyntaxError, ValueError, EOFError,
        # struct.error, zlib.error, ... depending on the plugin: all mean "bad bytes" here.
        raise InvalidImage(f"corrupt or truncated {fmt} data") from exc
    return image, geometry.offset


def _open_upright(
    data: bytes, fmt: str, spec: InputSpec, target_mode: str, limits: DecodeLimits
) -> Image.Image:
    """Any accepted image through `Image.open`: size checked from the header, then decoded
    (a large JPEG at a reduced scale) and turned upright by its EXIF orientation."""
    # Not a `with` block: closing would discard pixels the pass-through case returns, and an
    # in-memory file holds nothing to release.
    opened = Image.open(io.BytesIO(data), formats=[fmt])
    width, height = opened.size
    if width < 1 or height < 1:
        raise InvalidImage(f"corrupt {fmt} header: the image has no pixels")
    if width * height > limits.max_pixels:
        raise _too_large(width, height, limits.max_pixels)
    orientation = _orientation(opened) if opened.format in ("JPEG", "MPO") else None
    if orientation is not None:
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale while staying at least as large as the
        # resize needs (sizes in the stored orientation), and give L directly.
        needed = _Geometry.plan(_upright(opened.size, orientation), spec).scaled
        opened.draft(target_mode, _upright(needed, orientation))
    opened.load()
    if orientation is None:
        orientation = _orientation(opened)
    if orientation in _TRANSPOSE:
        return opened.transpose(_TRANSPOSE[orientation])
    return opened


def _too_large(width: int, height: int, max_pixels: int) -> ImageTooLarge:
    return ImageTooLarge(
        f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
        details={"width": width, "height": height, "max_pixels": max_pixels},
    )


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1..8), 1 when absent. Unreadable EXIF counts as absent: a photo
    with a damaged metadata block is still a photo."""
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def _upright(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """`size` with width and height swapped when the orientation is a quarter turn."""
    return (size[1], size[0]) if orientation in _SWAPS_AXES else size


def _to_resizable_mode(image: Image.Image, target_mode: str) -> Image.Image:
    """Bring any decoded mode to one Pillow resizes correctly: L, LA, RGB or RGBA.

    Palette and 1-bit images must be converted before resizing (interpolating palette indexes
    is meaningless); everything else is converted to its nearest 8-bit mode. Channel-count
    changes and alpha removal wait until after the resize, on fewer pixels.
    """
    mode = image.mode
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        return _grey_to_8_bit(image)
    if mode in ("LA", "RGBA"):
        return image
    if mode == "La":  # premultiplied; Pillow converts it to LA only
        return image.convert("LA")
    if mode in _HAS_ALPHA or "transparency" in image.info:
        return image.convert("RGBA")
    if mode in ("L", "RGB"):
        return image
    if mode in ("1", "P"):
        return image.convert(target_mode)
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX


def _grey_to_8_bit(image: Image.Image) -> Image.Image:
    pixels = np.asarray(image)
    if image.mode == "F":
        grey = np.clip(np.rint(np.nan_to_num(pixels)), 0, 255).astype(np.uint8)
    else:
        if image.mode == "I":
            pixels = np.clip(pixels, 0, 0xFFFF)
        grey = _U16_TO_U8[pixels.astype(np.intp, copy=False)]
    return Image.fromarray(grey, "L")


def _flatten(image: Image.Image, target_mode: str) -> Image.Image:
    """Composite alpha over white, then convert to the model's mode (L or RGB)."""
    if image.mode in ("LA", "RGBA"):
        base_mode = image.mode[:-1]
        background = Image.new(base_mode, image.size, (_WHITE,) * len(base_mode))
        background.paste(image.convert(base_mode), mask=image.getchannel("A"))
        image = background
    return image if image.mode == target_mode else image.convert(target_mode)


@dataclass(frozen=True)
class _Geometry:
    """How a `source` size becomes the output under one resize policy.

    `scaled`: the size the whole source would be resized to (what a JPEG draft must keep).
    `size`: the size of the resized region; `box`: that region in source pixels (None: all);
    `offset`: where the resized region's top-left lands in the output.
    """

    source: tuple[int, int]
    scaled: tuple[int, int]
    size: tuple[int, int]
    box: tuple[float, float, float, float] | None
    offset: tuple[int, int]

    @classmethod
    def plan(cls, source: tuple[int, int], spec: InputSpec) -> _Geometry:
        sw, sh = source
        tw, th = spec.width, spec.height
        if spec.resize == "stretch" or source == (tw, th):
            return cls(source, (tw, th), (tw, th), None, (0, 0))
        if spec.resize == "center_crop":
            # torchvision: the side that binds gets exactly its target, the other
            # int(side * scale); crop offsets int(round((scaled - target) / 2)).
            if tw * sh >= th * sw:
                rw, rh = tw, max(th, int(sh * tw / sw))
            else:
                rw, rh = max(tw, int(sw * th / sh)), th
            left, top = round((rw - tw) / 2), round((rh - th) / 2)
            fx, fy = sw / rw, sh / rh
            box = (left * fx, top * fy, (left + tw) * fx, (top + th) * fy)
            return cls(source, (rw, rh), (tw, th), box, (0, 0))
        # letterbox: the longer side (relative to the target) fits, the other is padded.
        scale = min(tw / sw, th / sh)
        rw = min(tw, max(1, round(sw * scale)))
        rh = min(th, max(1, round(sh * scale)))
        return cls(source, (rw, rh), (rw, rh), None, ((tw - rw) // 2, (th - rh) // 2))

    def apply(self, image: Image.Image, resample: Image.Resampling) -> Image.Image:
        if self.box is None:
            if self.size == self.source:
                return image
            return image.resize(self.size, resample)
        if self.scaled == self.source:
            # No scaling, only a crop: integer box, exact pixels.
            left, top = int(self.box[0]), int(self.box[1])
            return image.crop((left, top, left + self.size[0], top + self.size[1]))
        return image.resize(self.size, resample, box=self.box)
