"""Decode image files for training exactly as the service decodes uploads.

Training goes through `service.imaging` (torch-free: numpy + Pillow), the same function that
decodes every request in production, so a model sees the same pixels in training and in
serving: EXIF orientation, alpha over white, 16-bit scaling, the manifest's resize policy and
interpolation, and reduced-scale JPEG decoding, all bit for bit.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from imgzoo.manifest import InputSpec
from service.errors import ServiceError
from service.imaging import DecodeLimits, decode_into

# What a bad file raises: the service's 4xx errors (not an image, corrupt, too large, a format
# the service cannot take), or OSError when the file itself cannot be read.
DECODE_ERRORS: Final = (ServiceError, OSError)
# Training sets are local files chosen by the user: no tighter limit than the service's.
TRAINING_LIMITS: Final = DecodeLimits()

Pixels = npt.NDArray[np.uint8]


def input_spec(
    *, height: int, width: int, channels: int, policy: str, interpolation: str
) -> InputSpec:
    """The service's input spec for a decode target (mean / std do not affect decoding)."""
    return InputSpec.model_validate(
        {
            "height": height,
            "width": width,
            "channels": channels,
            "resize": policy,
            "interpolation": interpolation,
            "mean": (0.0,) * channels,
            "std": (1.0,) * channels,
        }
    )


def decode_file(path: str | Path, spec: InputSpec, out: Pixels) -> None:
    """Decode the file at `path` into `out` (H, W, C). Raises one of DECODE_ERRORS."""
    with open(path, "rb") as handle:  # noqa: PTH123 - str paths on the hot path, no Path objects
        data = handle.read()
    decode_into(data, spec, TRAINING_LIMITS, out)


def probe_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image as shown (EXIF orientation applied), from its header."""
    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def conform_array(images: Pixels, spec: InputSpec) -> Pixels:
    """Bring an NHWC uint8 batch (RGB or L) to `spec`; a no-op when it already fits.

    Each image goes through the service decoder via an uncompressed BMP, so resizing and
    channel conversion match serving exactly (BMP encodes a 32 px image in microseconds).
    """
    n, h, w, c = images.shape
    if (h, w, c) == (spec.height, spec.width, spec.channels):
        return images
    out = np.empty((n, spec.height, spec.width, spec.channels), dtype=np.uint8)
    buffer = io.BytesIO()
    for i in range(n):
        buffer.seek(0)
        buffer.truncate()
        Image.fromarray(images[i] if c == 3 else images[i, :, :, 0]).save(buffer, format="BMP")
        decode_into(buffer.getvalue(), spec, TRAINING_LIMITS, out[i])
    return out
