"""Every error path: status code AND stable error code, in the one error shape."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from PIL import Image

from service.schemas import ErrorResponse
from tests.service.conftest import Controls, LiveServer, Repository, controlled_factory, serve

PNG = {"content-type": "image/png"}


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = ErrorResponse.model_validate(response.json())
    assert body.error.code == code
    assert "/" + "tmp" not in response.text  # no internal path leaks
    assert "Traceback" not in response.text
    return body.error.details


_ALL = ["cifar10/fastnet", "gray/tiny"]


@pytest.mark.parametrize(
    ("path", "params", "code", "available"),
    [
        ("/predict/nope/fastnet", {}, "model_not_found", _ALL),
        ("/predict/cifar10/nope", {}, "model_not_found", _ALL),
        ("/predict/cifar10/fastnet", {"version": 7}, "version_not_found", [1, 2]),
        ("/predict/%2e%2e/fastnet", {}, "model_not_found", _ALL),
        ("/predict/" + "x" * 10_000 + "/m", {}, "model_not_found", _ALL),
        ("/predict/caf\u00e9/tiny", {}, "model_not_found", _ALL),
        # Extra path segments match no route at all.
        ("/predict/..%2F..%2Fetc/passwd", {}, "not_found", None),
    ],
)
def test_unknown_model_or_version_is_404_listing_what_exists(
    server: LiveServer,
    sample_images: list[bytes],
    path: str,
    params: dict[str, Any],
    code: str,
    available: list[Any] | None,
) -> None:
    with server.client() as client:
        response = client.post(path, content=sample_images[0], headers=PNG, params=params)
    details = _error(response, 404, code)
    assert details.get("available") == available
    assert len(response.text) < 2000  # a 10 kB name is not echoed back


def test_unknown_model_description_is_404(server: LiveServer) -> None:
    with server.client() as client:
        details = _error(client.get("/models/cifar10/nope"), 404, "model_not_found")
        _error(client.get("/no/such/route"), 404, "not_found")
        _error(client.get("/predict/cifar10/fastnet"), 405, "method_not_allowed")
    assert details["available"] == ["cifar10/fastnet", "gray/tiny"]


def test_declared_content_length_above_the_limit_is_413_before_reading(
    server: LiveServer,
) -> None:
    # Declare 200 MB but send nothing: the answer must come without the body being read.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /predict/cifar10/fastnet HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: image/png\r\nContent-Length: 200000000\r\n\r\n"
        )
        reply = sock.recv(65536).decode("latin-1")
    assert reply.startswith("HTTP/1.1 413")
    assert '"code":"payload_too_large"' in reply


def test_streamed_body_without_length_is_cut_off_at_the_limit(server: LiveServer) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        block = b"\0" * 65536
        while sent < 200_000_000:  # 200 MB if the server read it all
            sent += len(block)
            yield block

    with server.client() as client:
        response = client.post("/predict/cifar10/fastnet", content=chunks(), headers=PNG)
    _error(response, 413, "payload_too_large")
    assert sent < 50_000_000  # refused early, not after reading 200 MB


def test_multipart_body_over_the_limit_is_413(server: LiveServer) -> None:
    with server.client() as client:
        response = client.post(
            "/predict/cifar10/fastnet", files={"file": ("big.png", b"\0" * 1_500_000)}
        )
    _error(response, 413, "payload_too_large")


@pytest.mark.parametrize(
    ("content_type", "body"),
    [("text/plain", b"hello"), ("application/json", b"{}"), (None, b"\x89PNG")],
)
def test_wrong_content_type_is_415(
    server: LiveServer, content_type: str | None, body: bytes
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    with server.client() as client:
        response = client.post("/predict/cifar10/fastnet", content=body, headers=headers)
    _error(response, 415, "unsupported_media_type")


def test_unsupported_image_format_is_415(server: LiveServer) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="TIFF")
    with server.client() as client:
        response = client.post(
            "/predict/cifar10/fastnet",
            content=buffer.getvalue(),
            headers={"content-type": "image/tiff"},
        )
    _error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"\xff\xd8\xff\xe0garbage", b"not an image at all"],
    ids=["empty", "truncated-png", "corrupt-jpeg", "text"],
)
def test_corrupt_image_is_422_or_415(server: LiveServer, payload: bytes) -> None:
    with server.client() as client:
        response = client.post("/predict/cifar10/fastnet", content=payload, headers=PNG)
    if payload.startswith(b"not"):
        _error(response, 415, "unsupported_media_type")  # no known format at all
    else:
        _error(response, 422, "invalid_image")


def test_corrupt_image_among_several_names_its_index(
    server: LiveServer, sample_images: list[bytes]
) -> None:
    files = [("file", ("a.png", sample_images[0])), ("file", ("b.png", b"\x89PNG\r\n\x1a\nbad"))]
    with server.client() as client:
        response = client.post("/predict/cifar10/fastnet", files=files)
    assert _error(response, 422, "invalid_image")["image_index"] == 1


@pytest.mark.parametrize("top_k", [0, -1, "many"])
def test_bad_top_k_is_422(server: LiveServer, sample_images: list[bytes], top_k: Any) -> None:
    with server.client() as client:
        response = client.post(
            "/predict/cifar10/fastnet",
            content=sample_images[0],
            headers=PNG,
            params={"top_k": top_k},
        )
    details = _error(response, 422, "invalid_input")
    assert details["errors"][0]["loc"] == ["query", "top_k"]


def test_multipart_without_file_field_is_422(server: LiveServer) -> None:
    with server.client() as client:
        response = client.post(
            "/predict/cifar10/fastnet",
            files={"image": ("a.png", b"\x89PNG")},
            data={"note": "no file here"},
        )
    _error(response, 422, "invalid_input")


def test_malformed_multipart_is_400(server: LiveServer) -> None:
    with server.client() as client:
        response = client.post(
            "/predict/cifar10/fastnet",
            content=b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc',
            headers={"content-type": "multipart/form-data; boundary=xyz"},
        )
        no_boundary = client.post(
            "/predict/cifar10/fastnet",
            content=b"abc",
            headers={"content-type": "multipart/form-data"},
        )
    _error(response, 400, "bad_request")
    _error(no_boundary, 400, "bad_request")


def test_too_many_images_is_422(server: LiveServer, sample_images: list[bytes]) -> None:
    files = [("file", (f"{i}.png", sample_images[i])) for i in range(5)]  # the limit is 4
    with server.client() as client:
        response = client.post("/predict/cifar10/fastnet", files=files)
    assert _error(response, 422, "invalid_input")["max_images"] == 4


# --------------------------------------------------------------------------- overload


@pytest.fixture(scope="module")
def slow_server(model_repository: Repository) -> Iterator[tuple[LiveServer, Controls]]:
    """gray/tiny only, one session, batches of 1, a queue of 2, a 400 ms deadline."""
    import shutil

    controls = Controls()
    root = model_repository.root.parent / "slow-repository"
    if not root.exists():
        shutil.copytree(model_repository.gray, root / "gray" / "tiny" / "1")
    with serve(
        root,
        session_factory=controlled_factory(controls),
        max_batch_size=1,
        max_queue_size=2,
        request_timeout_ms=400,
        max_queue_delay_ms=0,
    ) as live:
        yield live, controls


def test_full_queue_is_503_with_retry_after_and_deadline_is_504_then_recovers(
    slow_server: tuple[LiveServer, Controls], sample_images: list[bytes]
) -> None:
    server, controls = slow_server

    def post(image: bytes) -> httpx.Response:
        with server.client() as client:
            return client.post("/predict/gray/tiny", content=image, headers=PNG)

    controls.delay_s = 0.3  # each batch of one takes 0.3 s: the third in line misses 400 ms
    try:
        with ThreadPoolExecutor(max_workers=10) as pool:
            responses = list(pool.map(post, sample_images[:10]))
    finally:
        controls.delay_s = 0.0
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503, 504}
    full = [r for r in responses if r.status_code == 503]
    late = [r for r in responses if r.status_code == 504]
    assert full and late, statuses
    for response in full:
        _error(response, 503, "queue_full")
        assert int(response.headers["retry-after"]) >= 1
    for response in late:
        _error(response, 504, "deadline_exceeded")
    time.sleep(1.0)  # what was queued drains
    recovered = post(sample_images[0])
    assert recovered.status_code == 200, recovered.text


def test_inference_error_fails_only_its_batch(
    slow_server: tuple[LiveServer, Controls], sample_images: list[bytes]
) -> None:
    server, controls = slow_server
    with server.client() as client:
        controls.fail = True
        try:
            failed = client.post("/predict/gray/tiny", content=sample_images[0], headers=PNG)
        finally:
            controls.fail = False
        after = client.post("/predict/gray/tiny", content=sample_images[0], headers=PNG)
        counters = client.get("/models/gray/tiny").json()["versions"][0]["counters"]
    _error(failed, 500, "inference_failed")
    assert after.status_code == 200
    assert counters["failed_batches"] >= 1
