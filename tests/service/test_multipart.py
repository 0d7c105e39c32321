"""`service.multipart`: the buffered multipart/form-data parser behind /predict.

Bodies from real encoders (httpx, the benchmark's), python-multipart's streaming parser as the
oracle on generated bodies, RFC 2046's optional pieces, and every malformed shape the parser
must refuse. The HTTP statuses of these errors are tested in test_errors.py.
"""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from python_multipart.multipart import MultipartParser, parse_options_header

from service.multipart import MultipartError, Part, TruncatedMultipartError, iter_parts

_BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=?"


def _body(boundary: bytes, parts: list[tuple[bytes, bytes]]) -> bytes:
    """`parts` as (header block, data) between delimiters of `boundary`."""
    out = b""
    for headers, data in parts:
        out += b"--" + boundary + b"\r\n" + headers + b"\r\n" + data + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def _disposition(name: str) -> bytes:
    return f'Content-Disposition: form-data; name="{name}"\r\n'.encode()


def _oracle(body: bytes, boundary: bytes) -> list[Part]:
    """python-multipart's streaming parser, fed in small chunks, as the reference."""
    parts: list[Part] = []
    state: dict[str, object] = {}

    def on_part_begin() -> None:
        state.update(headers=[], field=b"", value=b"", data=b"")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] = state["field"] + data[start:end]  # type: ignore[operator]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] = state["value"] + data[start:end]  # type: ignore[operator]

    def on_header_end() -> None:
        state["headers"].append((state["field"], state["value"]))  # type: ignore[attr-defined]
        state.update(field=b"", value=b"")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"] = state["data"] + data[start:end]  # type: ignore[operator]

    def on_part_end() -> None:
        headers: list[tuple[bytes, bytes]] = state["headers"]  # type: ignore[assignment]
        disposition = next((v for k, v in headers if k.lower() == b"content-disposition"), None)
        name = None
        if disposition is not None:
            raw = parse_options_header(disposition)[1].get(b"name")
            name = None if raw is None else raw.decode("utf-8", "replace")
        parts.append(Part(name, state["data"]))  # type: ignore[arg-type]

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    for i in range(0, len(body), 7):
        parser.write(body[i : i + 7])
    parser.finalize()
    return parts


def test_a_body_httpx_encodes_parses_to_its_files_and_fields() -> None:
    png, jpeg = b"\x89PNG\r\n\x1a\n\r\n--not-the-boundary\r\n", b"\xff\xd8\xff" + bytes(range(256))
    request = httpx.Request(
        "POST",
        "http://x/predict",
        files=[("file", ("a.png", png, "image/png")), ("file", ("b.jpg", jpeg, "image/jpeg"))],
        data={"note": "kept apart"},
    )
    content_type = request.headers["content-type"].encode()
    boundary = parse_options_header(content_type)[1][b"boundary"]
    parts = list(iter_parts(request.read(), boundary))
    assert parts == [Part("note", b"kept apart"), Part("file", png), Part("file", jpeg)]


def test_the_benchmark_encoder_round_trips() -> None:
    from service.bench.serve_requests import BOUNDARY, Image, multipart_body

    images = [Image(f"{i}.png", bytes([i]) * (100 + i), "image/png") for i in range(3)]
    parts = list(iter_parts(multipart_body(images), BOUNDARY.encode()))
    assert parts == [Part("file", image.data) for image in images]


@given(
    boundary=st.text(_BCHARS, min_size=1, max_size=70).map(str.encode),
    parts=st.lists(
        st.tuples(
            st.sampled_from(["file", "note", "ümlaut", None]),
            st.binary(max_size=300),
            st.booleans(),
        ),
        max_size=5,
    ),
)
def test_generated_bodies_parse_as_python_multipart_parses_them(
    boundary: bytes, parts: list[tuple[str | None, bytes, bool]]
) -> None:
    built = []
    for name, data, with_type in parts:
        headers = b"" if name is None else _disposition(name)
        if with_type:
            headers += b"Content-Type: application/octet-stream\r\n"
        if b"\r\n--" + boundary in b"\r\n" + data + b"\r\n":
            return  # a sender picks a boundary its data does not contain (RFC 2046)
        built.append((headers, data))
    body = _body(boundary, built)
    assert list(iter_parts(body, boundary)) == _oracle(body, boundary)


def test_preamble_padding_headerless_parts_and_epilogue_are_accepted() -> None:
    body = (
        b"a preamble that mentions --b without a CRLF before it\r\n"
        b"--b \t\r\n"  # transport padding after the delimiter
        + _disposition("file")
        + b"\r\nfirst\r\n--b\r\n"
        + b"\r\nno headers\r\n--b--\r\nan epilogue\r\n--b\r\nignored"
    )
    assert list(iter_parts(body, b"b")) == [Part("file", b"first"), Part(None, b"no headers")]


def test_an_empty_body_part_and_case_insensitive_header_names() -> None:
    body = b'--b\r\ncontent-DISPOSITION: form-data; name="file"\r\n\r\n\r\n--b--'
    assert list(iter_parts(body, b"b")) == [Part("file", b"")]


def test_a_body_without_parts_has_none() -> None:
    assert list(iter_parts(b"--b--\r\n", b"b")) == []


@pytest.mark.parametrize(
    "body",
    [
        b"",  # nothing at all
        b"no delimiter anywhere",
        b"--b\r\n" + b'Content-Disposition: form-data; name="file"\r\n\r\nabc',  # never closed
        b"--b\r\n" + b'Content-Disposition: form-data; name="file"\r\n\r\nabc\r\n--b',
        b"--b",  # a delimiter and nothing after it
    ],
)
def test_a_body_that_ends_early_is_truncated(body: bytes) -> None:
    with pytest.raises(TruncatedMultipartError):
        list(iter_parts(body, b"b"))


@pytest.mark.parametrize(
    "body",
    [
        b"--bx\r\n\r\ndata\r\n--b--",  # the boundary is only a prefix of the first delimiter
        b"--b\r\n\r\ndata\r\n--bogus\r\n\r\nmore\r\n--b--",  # ... or of a later one
        b'--b\r\nContent-Disposition: form-data; name="file"\r\ndata\r\n--b--',  # no blank line
        b"--b\r\nno colon here\r\n\r\ndata\r\n--b--",  # a header line without a name
        b"--b\r\n: no name\r\n\r\ndata\r\n--b--",
        b"--b\r\n Content-Disposition: form-data\r\n\r\ndata\r\n--b--",  # a folded line
        b'--b\r\nContent-Disposition: form-data; name="file"\r\nbad\r\n\r\ndata\r\n--b--',
    ],
)
def test_malformed_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(MultipartError) as raised:
        list(iter_parts(body, b"b"))
    assert not isinstance(raised.value, TruncatedMultipartError)


def test_an_empty_boundary_is_refused() -> None:
    with pytest.raises(MultipartError):
        list(iter_parts(b"----\r\n", b""))


def test_parts_come_one_at_a_time_so_a_caller_can_stop_at_a_limit() -> None:
    body = _body(b"b", [(_disposition("file"), b"x")] * 3)
    parts = iter_parts(body[: body.rindex(b"--b--") + 3], b"b")  # no "--" closing the last one
    assert [next(parts), next(parts), next(parts)] == [Part("file", b"x")] * 3
    with pytest.raises(TruncatedMultipartError):
        next(parts)


_VALID = _body(b"xyz", [(_disposition("file"), b"\x89PNG\r\n--xy\r\n"), (b"", b"plain")])


@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.tuples(
            st.integers(0, len(_VALID)), st.integers(0, len(_VALID)), st.binary(max_size=8)
        ).map(lambda cut: _VALID[: cut[0]] + cut[2] + _VALID[cut[1] :]),  # spliced and cut
    )
)
def test_any_body_parses_or_raises_multipart_error_only(body: bytes) -> None:
    try:
        parts = list(iter_parts(body, b"xyz"))
    except MultipartError:
        return
    assert sum(len(part.data) for part in parts) <= len(body)
    assert all(b"\r\n--xyz" not in part.data for part in parts)
