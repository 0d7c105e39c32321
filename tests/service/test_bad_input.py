"""Named hostile inputs over HTTP, each asserting its status and error code (issue 8, "Bad input").

test_errors.py covers most /predict cases (empty and corrupt bodies, declared and streamed
200 MB bodies, multipart without `file`, wrong content types, bad names on /predict, top_k 0
and negative); test_v2_protocol.py the v2 tensor cases. This file adds what they leave out:
bad names on every route that takes one (native, v2 and management), a truncated real JPEG,
a PNG declaring 100k x 100k pixels, an empty multipart file, top_k above the limit and above
the class count, a 200 MB v2 body, and a small fuzz of the decoding path through HTTP.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.service.conftest import LiveServer, Repository, copy_version, serve

PNG = {"content-type": "image/png"}
ADMIN = "bad-input-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
GRAY_CLASSES = 7


@pytest.fixture(scope="module")
def guarded(
    model_repository: Repository, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """gray/tiny, with an admin token so the management routes get past access control."""
    root = tmp_path_factory.mktemp("bad-input")
    copy_version(root, model_repository.gray)
    with serve(root, admin_token=ADMIN, max_upload_bytes=1_000_000, default_top_k=3) as live:
        yield live


def _raw(server: LiveServer, method: str, target: str, body: bytes = b"", **headers: str) -> Any:
    """Send `target` byte for byte (httpx would normalise `..` away); (status, text, headers)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            connection.putheader(name.replace("_", "-"), value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace"), response.headers
    finally:
        connection.close()


def _png(width: int = 20, height: int = 24, value: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), value).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height RGB pixels, and no pixel data worth it."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))


# --------------------------------------------------------------------------- names

BAD_NAMES = {
    "dot-dot": "..",
    "encoded-dot-dot": "%2e%2e",
    "encoded-slash": "gray%2Ftiny",
    "unicode": "caf%C3%A9",
    "nul": "a%00b",
    "upper-case": "Gray",
    "10kB": "g" * 10_000,
}

# (method, route with {bad}, whether it needs the admin token, the API's error shape)
NAMED_ROUTES = [
    ("GET", "/models/{bad}/tiny", False, "native"),
    ("GET", "/models/gray/{bad}", False, "native"),
    ("POST", "/predict/{bad}/tiny", False, "native"),
    ("POST", "/predict/gray/{bad}", False, "native"),
    ("POST", "/admin/models/{bad}/tiny/load", True, "native"),
    ("POST", "/admin/models/gray/{bad}/unload", True, "native"),
    ("GET", "/v2/models/{bad}", False, "v2"),
    ("GET", "/v2/models/gray.{bad}/ready", False, "v2"),
    ("POST", "/v2/models/{bad}/infer", False, "v2"),
    ("POST", "/v2/repository/models/{bad}.tiny/load", True, "v2"),
]


@pytest.mark.parametrize("bad", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
@pytest.mark.parametrize(
    ("method", "route", "admin", "shape"),
    NAMED_ROUTES,
    ids=[f"{m} {r}" for m, r, *_ in NAMED_ROUTES],
)
def test_bad_names_are_404_on_every_route(
    guarded: LiveServer, method: str, route: str, admin: bool, shape: str, bad: str
) -> None:
    body = _png() if "/predict/" in route else b""
    headers = {"Content-Type": "image/png", **(AUTH if admin else {})}
    status, text, _ = _raw(guarded, method, route.format(bad=bad), body, **headers)
    assert status == 404, text
    answer = json.loads(text)
    if shape == "native":
        assert answer["error"]["code"] in ("model_not_found", "not_found")
    else:
        assert set(answer) == {"error"} and isinstance(answer["error"], str)
    assert len(text) < 2_000  # a 10 kB name is not echoed back
    assert "Traceback" not in text and "/tmp" not in text
    # Nothing was loaded or unloaded by a name that could reach outside the repository.
    with guarded.client() as client:
        assert [m["model"] for m in client.get("/models").json()["models"]] == ["tiny"]


# --------------------------------------------------------------------------- images


def _predict(server: LiveServer, **kwargs: Any) -> httpx.Response:
    with server.client() as client:
        return client.post("/predict/gray/tiny", **kwargs)


def _code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_truncated_jpeg_is_422(guarded: LiveServer) -> None:
    jpeg = _jpeg()
    for cut in (len(jpeg) // 2, 200, 3):
        response = _predict(guarded, content=jpeg[:cut], headers={"content-type": "image/jpeg"})
        assert _code(response) == (422, "invalid_image"), (cut, response.text)
    assert _predict(guarded, content=jpeg, headers={"content-type": "image/jpeg"}).is_success


def test_png_declaring_100k_by_100k_pixels_is_413_without_decoding(guarded: LiveServer) -> None:
    bomb = _png_declaring(100_000, 100_000)
    assert len(bomb) < 100
    response = _predict(guarded, content=bomb, headers=PNG)
    assert _code(response) == (413, "image_too_large")
    as_file = _predict(guarded, files={"file": ("bomb.png", bomb, "image/png")})
    assert _code(as_file) == (413, "image_too_large")
    tensor = {
        "name": "image",
        "shape": [1],
        "datatype": "BYTES",
        "data": [base64.b64encode(bomb).decode()],
    }
    with guarded.client() as client:
        v2 = client.post("/v2/models/gray.tiny/infer", json={"inputs": [tensor]})
    assert v2.status_code == 413 and "pixels" in v2.json()["error"]


def test_empty_multipart_file_is_422(guarded: LiveServer) -> None:
    response = _predict(guarded, files={"file": ("empty.png", b"", "image/png")})
    assert _code(response) == (422, "invalid_image")


@pytest.mark.parametrize(
    ("content_type", "status", "code"),
    [
        ("image/png; charset=utf-8", 200, None),  # parameters on a right type are fine
        ("image/jpeg", 200, None),  # the bytes decide the format, not the label
        ("text/html", 415, "unsupported_media_type"),
        ("multipart/mixed; boundary=x", 415, "unsupported_media_type"),
        ("application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        ("image", 415, "unsupported_media_type"),
    ],
)
def test_content_types(guarded: LiveServer, content_type: str, status: int, code: str) -> None:
    response = _predict(guarded, content=_png(), headers={"content-type": content_type})
    assert response.status_code == status, response.text
    if code:
        assert response.json()["error"]["code"] == code


@pytest.mark.parametrize(
    ("top_k", "status", "returned"),
    [(0, 422, None), (-3, 422, None), (1001, 422, None), ("2.5", 422, None),
     (1, 200, 1), (GRAY_CLASSES + 1, 200, GRAY_CLASSES), (1000, 200, GRAY_CLASSES)],
)  # fmt: skip
def test_top_k_bounds_and_clamping(
    guarded: LiveServer, top_k: Any, status: int, returned: int | None
) -> None:
    response = _predict(guarded, content=_png(), headers=PNG, params={"top_k": top_k})
    assert response.status_code == status, response.text
    if returned is None:
        assert response.json()["error"]["code"] == "invalid_input"
        assert response.json()["error"]["details"]["errors"][0]["loc"] == ["query", "top_k"]
    else:
        predictions = response.json()["predictions"]
        assert len(predictions) == returned
        assert len({p["index"] for p in predictions}) == returned


def test_v2_classification_above_the_class_count_is_clamped(guarded: LiveServer) -> None:
    tensor = {"name": "image", "shape": [1, 24, 20, 1], "datatype": "UINT8", "data": [7] * 480}
    request = {
        "inputs": [tensor],
        "outputs": [{"name": "logits", "parameters": {"classification": 50}}],
    }
    with guarded.client() as client:
        response = client.post("/v2/models/gray.tiny/infer", json=request)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["shape"] == [1, GRAY_CLASSES]


def test_v2_body_declaring_200_mb_is_413_before_it_is_read(guarded: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v2/models/gray.tiny/infer HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 200000000\r\n\r\n"
        )
        reply = sock.recv(65536).decode("latin-1")
    assert reply.startswith("HTTP/1.1 413")
    assert '"error":' in reply


# --------------------------------------------------------------------------- fuzz over HTTP

_SEEDS = [_png(20, 24, 40), _jpeg(), _png(5, 300, 200)]


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut":
            del data[position : position + draw(st.integers(1, 64))]
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        if not data:
            break
    return bytes(data)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=_mutated(), multipart=st.booleans())
def test_mutated_images_over_http_get_200_or_a_4xx(
    guarded: LiveServer, payload: bytes, multipart: bool
) -> None:
    if multipart:
        response = _predict(guarded, files={"file": ("x.png", payload, "image/png")})
    else:
        response = _predict(guarded, content=payload, headers=PNG)
    assert response.status_code in (200, 413, 415, 422), response.text
    if response.status_code != 200:
        assert response.json()["error"]["code"] in (
            "image_too_large",
            "unsupported_media_type",
            "invalid_image",
        )
