"""Reading the images of a /predict request without trusting its size.

Accepted bodies: `multipart/form-data` with one or more parts named `file`, or a raw body with
an `image/*` content type. The declared `Content-Length` is checked before anything is read,
and the bytes are counted while streaming, so an oversized body (declared or chunked) is
refused with 413 as soon as it crosses the limit, never read whole. A body within the limit is
read into memory and then parsed (`service.multipart`): the limit bounds it, and spooling to
disk or parsing chunk by chunk would only add work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.errors import BadRequest, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from service.multipart import MultipartError, TruncatedMultipartError, iter_parts

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
    boundary = None
    if mime == b"multipart/form-data":
        boundary = params.get(b"boundary")
        if not boundary:
            raise BadRequest("multipart/form-data without a boundary")
    try:
        body = b"".join([chunk async for chunk in _limited(request, limits.max_bytes)])
    except ClientDisconnect:
        raise BadRequest("the client disconnected while sending the body") from None
    return [body] if boundary is None else _multipart_files(body, boundary, limits.max_images)


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


def _multipart_files(body: bytes, boundary: bytes, max_images: int) -> list[bytes]:
    """The `file` parts of a multipart body, within the request's limits."""
    files: list[bytes] = []
    other_parts = 0
    try:
        for part in iter_parts(body, boundary):
            if part.name is None:
                raise BadRequest("a multipart part has no name in its Content-Disposition")
            if part.name != FILE_FIELD:
                other_parts += 1
                if other_parts > _MAX_OTHER_PARTS:
                    raise BadRequest(f"too many form fields (at most {_MAX_OTHER_PARTS})")
                continue
            if len(files) >= max_images:
                raise InvalidInput(
                    f"too many images: at most {max_images} per request",
                    details={"max_images": max_images},
                )
            files.append(part.data)
    except TruncatedMultipartError:
        raise BadRequest("truncated multipart/form-data body (no closing boundary)") from None
    except MultipartError:
        raise BadRequest("malformed multipart/form-data body") from None
    if not files:
        raise InvalidInput(f"the multipart body has no '{FILE_FIELD}' field")
    return files
