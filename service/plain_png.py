"""A plain PNG decoded with less Python around Pillow's own PNG pixel decoder.

On a 32x32 upload, `Image.open` + `load` spends about as long in Python (format dispatch, a
handler per chunk, the tile loop) as in C. A *plain* PNG is decoded here instead, by the
decoder `PngImagePlugin` itself uses (`Image.frombytes(..., "zip", rawmode)`, inflate and
unfilter in C) on the joined IDAT data: the same pixels in the same mode.

Plain means: 8-bit grey, grey + alpha, RGB or RGBA; not interlaced; IHDR first, the IDAT chunks
in one run, IEND; every chunk's CRC right; and besides those only ancillary chunks that carry
nothing Pillow or `service.imaging` acts on (`_INERT`, at the length the PNG specification
fixes). So no palette, no transparency key, no EXIF and no text chunk (Pillow reads an EXIF
orientation from either). Anything else, including a file that is not well formed, gives
None and goes to the general path, which decides what it is: this module never refuses an
upload, so a client sees the same answer and the same errors either way.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

from PIL import Image

__all__ = ["PNG_SIGNATURE", "decode_plain_png"]

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_CHUNK_HEAD: Final = struct.Struct(">I4s")
_IHDR: Final = struct.Struct(">IIBBBBB")
_CRC: Final = struct.Struct(">I")

# (bit depth, colour type) -> Pillow mode; for these the PNG raw mode has the same name.
_MODES: Final[dict[tuple[int, int], str]] = {
    (8, 0): "L",
    (8, 4): "LA",
    (8, 2): "RGB",
    (8, 6): "RGBA",
}
# Ancillary chunks with no effect on the decoded pixels or their orientation -> their length.
_INERT: Final[dict[bytes, int]] = {
    b"gAMA": 4,
    b"cHRM": 32,
    b"sRGB": 1,
    b"pHYs": 9,
    b"tIME": 7,
}


def decode_plain_png(data: bytes, max_pixels: int) -> Image.Image | None:
    """The decoded image of a plain PNG (module docstring), or None for any other data.

    None too above `max_pixels` or Pillow's process-wide `Image.MAX_IMAGE_PIXELS`, so that the
    general path applies both guards and says why.
    """
    parsed = _parse(data)
    if parsed is None:
        return None
    mode, size, idat = parsed
    pixels = size[0] * size[1]
    pillow_limit = Image.MAX_IMAGE_PIXELS
    if pixels > max_pixels or (pillow_limit is not None and pixels > pillow_limit):
        return None
    try:
        return Image.frombytes(mode, size, idat, "zip", mode)
    except ValueError:  # truncated or corrupt pixel data: the general path reports it
        return None


def _parse(data: bytes) -> tuple[str, tuple[int, int], bytes] | None:
    """(mode, (width, height), the joined IDAT data) of a plain PNG, else None."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    view = memoryview(data)
    end = len(data)
    position = len(PNG_SIGNATURE)
    header: tuple[str, tuple[int, int]] | None = None
    idat: list[memoryview] = []
    idat_ended = False
    while position + _CHUNK_HEAD.size <= end:
        length, kind = _CHUNK_HEAD.unpack_from(data, position)
        body_start = position + _CHUNK_HEAD.size
        body_end = body_start + length
        if body_end + _CRC.size > end:
            return None
        # The CRC covers the chunk type and body.
        if zlib.crc32(view[position + 4 : body_end]) != _CRC.unpack_from(data, body_end)[0]:
            return None
        position = body_end + _CRC.size
        if header is None:
            if kind != b"IHDR":
                return None
            header = _header(view[body_start:body_end])
            if header is None:
                return None
        elif kind == b"IDAT":
            if idat_ended:
                return None
            idat.append(view[body_start:body_end])
        elif kind == b"IEND":
            if not idat or length:
                return None
            return header[0], header[1], b"".join(idat)
        elif _INERT.get(kind) == length:
            idat_ended = bool(idat)
        else:
            return None
    return None  # no IEND: truncated


def _header(body: memoryview) -> tuple[str, tuple[int, int]] | None:
    if len(body) != _IHDR.size:
        return None
    width, height, depth, colour, compression, filtering, interlace = _IHDR.unpack(body)
    mode = _MODES.get((depth, colour))
    if mode is None or compression or filtering or interlace or not width or not height:
        return None
    if width >= 1 << 31 or height >= 1 << 31:
        return None
    return mode, (width, height)
