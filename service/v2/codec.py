"""The wire format: bounded body reading, the JSON header, the binary tensor data extension.

A request is a JSON header, optionally followed by raw tensor bytes; the header's length is the
`Inference-Header-Content-Length` header (absent: the whole body is JSON). Each input with a
`binary_data_size` parameter takes that many bytes of the binary section, in input order, and
together they must use it exactly. BYTES tensors are sequences of elements, each a 4-byte
little-endian length followed by its bytes. Answers use the same framing.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request

from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from service.v2.schemas import InferenceRequest, RequestInput

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_DATA_SIZE = "binary_data_size"
_LENGTH = struct.Struct("<I")
# Content-Encoding -> zlib wbits ("deflate" in HTTP is the zlib format, as tritonclient sends).
_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


# --------------------------------------------------------------------------- request body


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, decompressed; 413 once it (or its decompression) passes `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("invalid Content-Length header")
        if int(declared) > max_bytes:
            raise _too_large(max_bytes)
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes:
                raise _too_large(max_bytes)
            chunks.append(chunk)
    except ClientDisconnect:
        raise BadRequest("the client disconnected while sending the body") from None
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in _ENCODINGS:
        raise UnsupportedMediaType(
            f"unsupported Content-Encoding '{encoding[:40]}': use gzip, deflate or none"
        )
    return _inflate(body, encoding, max_bytes)


def _inflate(data: bytes, encoding: str, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj(_ENCODINGS[encoding])
    try:
        out = inflater.decompress(data, max_bytes + 1)
    except zlib.error:
        raise BadRequest(f"the body is not valid {encoding} data") from None
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise _too_large(max_bytes)
    if not inflater.eof:
        raise BadRequest(f"truncated {encoding} body")
    return out


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body is larger than {max_bytes} bytes", headers={"Connection": "close"}
    )


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary section of a body."""
    if header_length is None:
        return body, memoryview(b"")
    text = header_length.strip()
    if not text.isdigit():
        raise BadRequest(f"{HEADER_LENGTH} must be a non-negative integer")
    length = int(text)
    if length > len(body):
        raise BadRequest(f"{HEADER_LENGTH} is {length} but the body has only {len(body)} bytes")
    view = memoryview(body)
    return body[:length], view[length:]


def parse_request(header: bytes) -> InferenceRequest:
    """The validated JSON header of an inference request."""
    try:
        raw = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON in the request: {exc}") from None
    if not isinstance(raw, dict):
        raise BadRequest("the inference request must be a JSON object")
    try:
        return InferenceRequest.model_validate(raw)
    except ValidationError as exc:
        raise BadRequest(f"invalid inference request: {first_error(exc)}") from None


def first_error(exc: ValidationError) -> str:
    """One line for the first problem pydantic found: where, and what."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error.get("loc", ()))
    message = str(error.get("msg", "invalid value"))
    return f"{where}: {message}" if where else message


def binary_sections(inputs: Sequence[RequestInput], binary: memoryview) -> list[memoryview | None]:
    """Each input's slice of the binary section (None: its data is in the JSON)."""
    sections: list[memoryview | None] = []
    offset = 0
    for tensor in inputs:
        size = tensor.parameters.get(BINARY_DATA_SIZE)
        if size is None:
            sections.append(None)
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BadRequest(f"input '{tensor.name}': {BINARY_DATA_SIZE} must be an integer >= 0")
        if tensor.data is not None:
            raise BadRequest(f"input '{tensor.name}' has both 'data' and {BINARY_DATA_SIZE}")
        if offset + size > len(binary):
            raise BadRequest(
                f"input '{tensor.name}': {BINARY_DATA_SIZE} {size} runs past the end of the "
                f"binary data ({len(binary) - offset} bytes left)"
            )
        sections.append(binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise BadRequest(
            f"the body has {len(binary)} bytes of binary data but the inputs' "
            f"{BINARY_DATA_SIZE} add up to {offset}"
        )
    return sections


# --------------------------------------------------------------------------- BYTES


def serialize_bytes(items: Sequence[bytes]) -> bytes:
    """BYTES tensor data: each element as a little-endian uint32 length, then its bytes."""
    return b"".join(_LENGTH.pack(len(item)) + item for item in items)


def deserialize_bytes(data: memoryview | bytes, name: str) -> list[bytes]:
    """The elements of BYTES tensor data; BadRequest when a length runs past the end."""
    items: list[bytes] = []
    offset, end = 0, len(data)
    while offset < end:
        if offset + _LENGTH.size > end:
            raise BadRequest(f"input '{name}': truncated BYTES element length at byte {offset}")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > end:
            raise BadRequest(
                f"input '{name}': BYTES element {len(items)} declares {length} bytes, "
                f"only {end - offset} remain"
            )
        items.append(bytes(data[offset : offset + length]))
        offset += length
    return items


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class OutputTensor:
    """One output of an answer: FP32 values or BYTES elements, inline or binary."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    binary: bool
    values: npt.NDArray[np.float32] | None = None
    elements: Sequence[bytes] | None = None

    def raw(self) -> bytes:
        if self.elements is not None:
            return serialize_bytes(self.elements)
        assert self.values is not None
        return np.ascontiguousarray(self.values, dtype="<f4").tobytes()

    def inline(self) -> list[Any]:
        if self.elements is not None:
            return [item.decode("utf-8", "replace") for item in self.elements]
        assert self.values is not None
        flat: list[Any] = self.values.reshape(-1).tolist()
        return flat


@dataclass(frozen=True)
class EncodedResponse:
    body: bytes
    header_length: int | None  # None: the body is all JSON

    @property
    def headers(self) -> dict[str, str]:
        if self.header_length is None:
            return {}
        return {HEADER_LENGTH: str(self.header_length)}

    @property
    def media_type(self) -> str:
        return "application/json" if self.header_length is None else "application/octet-stream"


def encode_response(header: dict[str, Any], outputs: Sequence[OutputTensor]) -> EncodedResponse:
    """The answer body: JSON, then the binary outputs' data in output order."""
    described: list[dict[str, Any]] = []
    sections: list[bytes] = []
    for output in outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.shape),
        }
        if output.binary:
            raw = output.raw()
            entry["parameters"] = {BINARY_DATA_SIZE: len(raw)}
            sections.append(raw)
        else:
            entry["data"] = output.inline()
        described.append(entry)
    document = orjson.dumps({**header, "outputs": described})
    if not sections:
        return EncodedResponse(document, None)
    return EncodedResponse(document + b"".join(sections), len(document))
