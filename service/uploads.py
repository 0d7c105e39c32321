"""Reading the images of a /predict request without trusting its size.

Accepted bodies: `multipart/form-data` with one or more parts named `file`, or a raw body with
an `image/*` content type. The declared `Content-Length` is checked before anything is read,
and the bytes are counted while streaming, so an oversized body (declared or chunked) is
refused with 413 as soon as it crosses the limit, never read whole. Multipart parts are kept in
memory: the limit bounds them, and spooling to disk would only add work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.errors import BadRequest, InvalidInput, PayloadTooLarge, UnsupportedMediaType

FILE_FIELD = "file"
_MAX_OTHER_PARTS = 64  # form fields besides `file`, ignored, but not without bound


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    max_images: int


async def read_images(request: Request, limits: UploadLimits) -> list[bytes]:
    """The image payloads of a request, in the order they were sent."""
    mime, params = parse_options_header(request.headers.get("content-type"))
    if mime != b"multipart/form-data" and not mime.startswith(b"image/"):
        raise UnsupportedMediaType(
            "send the image as multipart/form-data field 'file' or as a raw image/* body",
            details={"accepted": ["multipart/form-data", "image/*"]},
        )
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("invalid Content-Length header")
        if int(declared) > limits.max_bytes:
            raise _too_large(limits.max_bytes)
    stream = _limited(request, limits.max_bytes)
    try:
        if mime == b"multipart/form-data":
            return await _read_multipart(params, stream, limits.max_images)
        return [b"".join([chunk async for chunk in stream])]
    except ClientDisconnect:
        raise BadRequest("the client disconnected while sending the body") from None


def _too_large(max_bytes: int) -> PayloadTooLarge:
    # Closing the connection stops the client from sending the rest (uvicorn would otherwise
    # read and discard it to keep the connection alive).
    return PayloadTooLarge(
        f"the request body is larger than {max_bytes} bytes",
        details={"max_bytes": max_bytes},
        headers={"Connection": "close"},
    )


async def _limited(request: Request, max_bytes: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise _too_large(max_bytes)
        if chunk:
            yield chunk


@dataclass
class _Part:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    name: str | None = None
    data: bytearray = field(default_factory=bytearray)


class _MultipartCollector:
    """python-multipart callbacks keeping the data of parts named `file`, in memory."""

    def __init__(self, max_images: int) -> None:
        self.max_images = max_images
        self.files: list[bytes] = []
        self.other_parts = 0
        self.complete = False
        self._part = _Part()
        self._header_name = bytearray()
        self._header_value = bytearray()

    def on_part_begin(self) -> None:
        self._part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._part.headers.append((bytes(self._header_name).lower(), bytes(self._header_value)))
        self._header_name.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        disposition = next((v for k, v in self._part.headers if k == b"content-disposition"), b"")
        _, options = parse_options_header(disposition)
        name = options.get(b"name")
        if name is None:
            raise BadRequest("a multipart part has no name in its Content-Disposition")
        self._part.name = name.decode("utf-8", "replace")
        if self._part.name == FILE_FIELD:
            if len(self.files) >= self.max_images:
                raise InvalidInput(
                    f"too many images: at most {self.max_images} per request",
                    details={"max_images": self.max_images},
                )
        else:
            self.other_parts += 1
            if self.other_parts > _MAX_OTHER_PARTS:
                raise BadRequest(f"too many form fields (at most {_MAX_OTHER_PARTS})")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part.name == FILE_FIELD:
            self._part.data += data[start:end]

    def on_part_end(self) -> None:
        if self._part.name == FILE_FIELD:
            self.files.append(bytes(self._part.data))
        self._part = _Part()

    def on_end(self) -> None:
        self.complete = True


async def _read_multipart(
    params: dict[bytes, bytes], stream: AsyncIterator[bytes], max_images: int
) -> list[bytes]:
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart/form-data without a boundary")
    collector = _MultipartCollector(max_images)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": collector.on_part_begin,
            "on_part_data": collector.on_part_data,
            "on_part_end": collector.on_part_end,
            "on_header_field": collector.on_header_field,
            "on_header_value": collector.on_header_value,
            "on_header_end": collector.on_header_end,
            "on_headers_finished": collector.on_headers_finished,
            "on_end": collector.on_end,
        },
    )
    try:
        async for chunk in stream:
            parser.write(chunk)
        parser.finalize()
    except FormParserError:
        raise BadRequest("malformed multipart/form-data body") from None
    if not collector.complete:
        raise BadRequest("truncated multipart/form-data body (no closing boundary)")
    if not collector.files:
        raise InvalidInput(f"the multipart body has no '{FILE_FIELD}' field")
    return collector.files
