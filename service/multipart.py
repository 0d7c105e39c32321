"""`multipart/form-data` (RFC 7578 over RFC 2046) parsed from a body already in memory.

The service reads a bounded body whole before parsing it, so a parser that walks the buffer
with `bytes.find` does the work in C: a one-image body parses in a few microseconds. The
streaming parser it replaced (python-multipart's, a byte-level state machine in Python with a
callback per header and data span) cost about 40 µs of a one-image request's 340 µs of app CPU
(docs/benchmarks.md, change 18).

Accepted, as RFC 2046 writes it: a preamble before the first delimiter, transport padding
(spaces and tabs) after a delimiter, parts with or without headers, an epilogue after the close
delimiter. Anything else is `MultipartError`; the caller decides what status that is.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from python_multipart.multipart import parse_options_header

_CRLF = b"\r\n"
_HEADERS_END = b"\r\n\r\n"
_PADDING = b" \t"


class MultipartError(ValueError):
    """The body does not follow the multipart grammar."""


class TruncatedMultipartError(MultipartError):
    """The body ends before its close delimiter (`--boundary--`)."""


@dataclass(frozen=True)
class Part:
    """One body part: its form field name (`None` without one) and its content."""

    name: str | None
    data: bytes


def iter_parts(body: bytes, boundary: bytes) -> Iterator[Part]:
    """The parts of `body`, in order, each as soon as it is found (a caller that stops at a
    limit does not parse the rest)."""
    if not boundary:
        raise MultipartError("empty boundary")
    dash_boundary = b"--" + boundary
    delimiter = _CRLF + dash_boundary
    # The first delimiter may open the body without the CRLF that precedes the others.
    if body.startswith(dash_boundary):
        pos = len(dash_boundary)
    else:
        first = body.find(delimiter)
        if first < 0:
            raise TruncatedMultipartError("no boundary in the body")
        pos = first + len(delimiter)
    while True:
        if body.startswith(b"--", pos):  # the close delimiter; what follows is the epilogue
            return
        line_end = body.find(_CRLF, pos)
        if line_end < 0:
            raise TruncatedMultipartError("the body ends after a boundary")
        if body[pos:line_end].strip(_PADDING):
            raise MultipartError("a boundary is followed by other text on its line")
        start = line_end + 2
        end = body.find(delimiter, start)
        if end < 0:
            raise TruncatedMultipartError("a part is not closed by a boundary")
        if body.startswith(_CRLF, start):  # no headers
            headers, data_start = b"", start + 2
        else:
            headers_end = body.find(_HEADERS_END, start, end)
            if headers_end < 0:
                raise MultipartError("a part's headers do not end with an empty line")
            headers, data_start = body[start:headers_end], headers_end + 4
        yield Part(_field_name(headers), body[data_start:end])
        pos = end + len(delimiter)


def _field_name(headers: bytes) -> str | None:
    """The `name` parameter of the part's first Content-Disposition, if it has one."""
    disposition: bytes | None = None
    for line in headers.split(_CRLF) if headers else ():
        field, colon, value = line.partition(b":")
        if not colon or not field or field != field.strip(_PADDING):
            raise MultipartError("a part header is not `name: value`")
        if disposition is None and field.lower() == b"content-disposition":
            disposition = value
    if disposition is None:
        return None
    name = parse_options_header(disposition.strip(_PADDING))[1].get(b"name")
    return None if name is None else name.decode("utf-8", "replace")
