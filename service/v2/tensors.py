"""Input tensors to images: UINT8 pixels `[N, H, W, C]`, or BYTES encoded images `[N]`.

The model's single input `image` is offered under two datatypes. UINT8 must have exactly the
model's height, width and channels (the graph takes it as is, no resizing); BYTES elements are
encoded images (JPEG, PNG, ...) decoded and resized like `/predict` uploads. Inline JSON data is
a flat or nested list: integers 0..255 for UINT8, base64 strings (or `{"b64": ...}` objects)
for BYTES, as raw image bytes cannot travel in a JSON string.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from imgzoo.manifest import INPUT_NAME, InputSpec
from service.errors import BadRequest
from service.v2.codec import deserialize_bytes
from service.v2.schemas import RequestInput

UINT8 = "UINT8"
BYTES = "BYTES"
FP32 = "FP32"


@dataclass(frozen=True)
class ImageInput:
    """The request's images: decoded pixels `[N, H, W, C]`, or encoded images to decode."""

    pixels: npt.NDArray[np.uint8] | None = None
    encoded: list[bytes] | None = None


def input_shape(spec: InputSpec) -> list[int]:
    """The UINT8 input shape a client sees in the metadata, -1 for the batch."""
    return [-1, spec.height, spec.width, spec.channels]


def image_input(
    inputs: list[RequestInput],
    sections: list[memoryview | None],
    spec: InputSpec,
    max_images: int,
) -> ImageInput:
    """The images of a request: exactly one input, named `image`, UINT8 or BYTES."""
    names = [tensor.name for tensor in inputs]
    unknown = [name for name in names if name != INPUT_NAME]
    if unknown:
        raise BadRequest(
            f"unexpected input '{unknown[0][:64]}': the model has one input '{INPUT_NAME}'"
        )
    if len(inputs) != 1:
        raise BadRequest(f"input '{INPUT_NAME}' is given {len(inputs)} times")
    tensor, raw = inputs[0], sections[0]
    if raw is None and tensor.data is None:
        raise BadRequest(
            f"input '{INPUT_NAME}' has neither 'data' nor a 'binary_data_size' parameter"
        )
    if tensor.datatype == UINT8:
        pixels = _pixels(tensor, raw, spec)
        _check_count(int(pixels.shape[0]), max_images)
        return ImageInput(pixels=pixels)
    if tensor.datatype == BYTES:
        encoded = _encoded(tensor, raw)
        _check_count(len(encoded), max_images)
        return ImageInput(encoded=encoded)
    raise BadRequest(
        f"input '{INPUT_NAME}' has datatype {tensor.datatype[:16]}: expected {UINT8} "
        f"{input_shape(spec)} pixels or {BYTES} [-1] encoded images"
    )


def _check_count(count: int, max_images: int) -> None:
    if count < 1:
        raise BadRequest(f"input '{INPUT_NAME}' holds no image")
    if count > max_images:
        raise BadRequest(f"too many images: at most {max_images} per request, got {count}")


def _pixels(tensor: RequestInput, raw: memoryview | None, spec: InputSpec) -> npt.NDArray[np.uint8]:
    shape = tensor.shape
    expected = [spec.height, spec.width, spec.channels]
    if len(shape) != 4 or shape[1:] != expected:
        raise BadRequest(
            f"input '{INPUT_NAME}' has shape {shape}: the model takes {UINT8} "
            f"{input_shape(spec)} (NHWC)"
        )
    size = math.prod(shape)
    if raw is not None:
        if len(raw) != size:
            raise BadRequest(
                f"input '{INPUT_NAME}' of shape {shape} needs {size} bytes of {UINT8} data, "
                f"got {len(raw)}"
            )
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    values = _int_array(tensor.data)
    if values.size != size:
        raise BadRequest(
            f"input '{INPUT_NAME}' of shape {shape} needs {size} values, got {values.size}"
        )
    if values.size and (int(values.min()) < 0 or int(values.max()) > 255):
        raise BadRequest(f"input '{INPUT_NAME}': {UINT8} values must be within 0..255")
    return values.astype(np.uint8).reshape(shape)


def _int_array(data: Any) -> npt.NDArray[np.int64]:
    """JSON numbers (flat or nested lists) as an integer array; BadRequest for anything else."""
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise BadRequest(f"input '{INPUT_NAME}': 'data' is not a regular array") from None
    if array.dtype.kind not in "iu":
        raise BadRequest(f"input '{INPUT_NAME}': {UINT8} 'data' must be a list of integers")
    return array.astype(np.int64, copy=False)


def _encoded(tensor: RequestInput, raw: memoryview | None) -> list[bytes]:
    shape = tensor.shape
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise BadRequest(
            f"input '{INPUT_NAME}' has shape {shape}: {BYTES} images are [N] or [N, 1]"
        )
    count = shape[0]
    if raw is not None:
        items = deserialize_bytes(raw, INPUT_NAME)
    else:
        items = [_from_json(item, index) for index, item in enumerate(_flatten(tensor.data))]
    if len(items) != count:
        raise BadRequest(
            f"input '{INPUT_NAME}' of shape {shape} needs {count} {BYTES} elements, "
            f"got {len(items)}"
        )
    return items


def _flatten(data: Any) -> Iterator[Any]:
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def _from_json(item: Any, index: int) -> bytes:
    """One BYTES element given inline: base64 text, or `{"b64": text}`."""
    if isinstance(item, dict) and set(item) == {"b64"}:
        item = item["b64"]
    if not isinstance(item, str):
        raise BadRequest(
            f"input '{INPUT_NAME}': {BYTES} element {index} must be a base64 string "
            'or {"b64": "..."}'
        )
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(
            f"input '{INPUT_NAME}': {BYTES} element {index} is not valid base64"
        ) from None
