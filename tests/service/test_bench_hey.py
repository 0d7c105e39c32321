"""`imgzoo bench serve --client hey`: hey's command line, its CSV, and real runs of the binary."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from service.bench.serve_hey import HeyLoadGenerator, hey_command, parse_csv, split_request
from service.bench.serve_load import LoadSpec
from service.bench.serve_requests import KINDS, Target, build_requests, check_answer, load_images
from tests.service.conftest import LiveServer, Repository

needs_hey = pytest.mark.skipif(
    shutil.which("hey") is None, reason="hey is not installed (make system-deps installs it)"
)


def test_split_request_takes_a_built_request_apart() -> None:
    images = list(load_images(None, 2).images)
    target = Target("cifar10", "fastnet", 32, 32, 3)
    requests, _ = build_requests("single", "127.0.0.1:9", target, images)
    request = split_request(requests[0])
    assert (request.method, request.path) == ("POST", "/predict/cifar10/fastnet")
    assert request.content_type is not None
    assert request.content_type.startswith("multipart/form-data; boundary=")
    assert images[0].data in request.body
    assert requests[0].endswith(request.body)
    # hey writes Host, Content-Length and Content-Type itself: none of them is passed twice.
    assert all(name.lower() not in {"host", "content-length"} for name, _ in request.headers)
    with pytest.raises(ValueError, match="blank line"):
        split_request(b"POST / HTTP/1.1\r\nHost: x\r\n")


def test_hey_command_line(tmp_path: Path) -> None:
    raw = (
        b"POST /v2/models/m/infer HTTP/1.1\r\nHost: h\r\nContent-Type: application/octet-stream"
        b"\r\nInference-Header-Content-Length: 12\r\nContent-Length: 3\r\n\r\nabc"
    )
    command = hey_command(
        split_request(raw), tmp_path / "b", "http://127.0.0.1:1/v2/models/m/infer",
        concurrency=32, seconds=12.0, timeout_s=30.0,
    )  # fmt: skip
    assert command == [
        "hey", "-c", "32", "-z", "12s", "-m", "POST", "-t", "30", "-o", "csv",
        "-T", "application/octet-stream", "-H", "Inference-Header-Content-Length: 12",
        "-D", str(tmp_path / "b"), "http://127.0.0.1:1/v2/models/m/infer",
    ]  # fmt: skip


def test_parse_csv_keeps_the_answers_that_end_inside_the_window() -> None:
    header = (
        "response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset"
    )
    rows = [
        "0.0040,0,0,0,0,0,200,0.1000",  # ends at 0.104: in the warm-up
        "0.0050,0,0,0,0,0,200,0.9980",  # ends at 1.003: inside
        "0.0030,0,0,0,0,0,200,1.5000",  # inside
        "0.0070,0,0,0,0,0,503,2.0000",  # inside, an error
        "0.0100,0,0,0,0,0,200,2.9950",  # ends at 3.005: after the window
    ]
    result = parse_csv("\n".join([header, *rows]), concurrency=4, images_per_request=2,
                       warmup_s=1.0, duration_s=2.0)  # fmt: skip
    assert result.ok == 2 and result.latencies_ms == pytest.approx([5.0, 3.0])
    assert dict(result.statuses) == {503: 1} and result.errors == 1
    assert result.requests_per_s == pytest.approx(1.0) and result.images_per_s == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no CSV"):
        parse_csv("Summary:\n  Total: 1 secs", concurrency=1, images_per_request=1,
                  warmup_s=0, duration_s=1)  # fmt: skip


@needs_hey
@pytest.mark.parametrize("kind", [k for k in KINDS if k in ("single", "v2-uint8")])
def test_hey_measures_a_real_server(
    kind: str, server: LiveServer, model_repository: Repository
) -> None:
    from tests.service.test_bench_serve import _pixels

    images = list(load_images(None, 4).images)
    target = Target("cifar10", "fastnet", 32, 32, 3)
    pixels = _pixels(model_repository.fastnet, images)
    requests, per_request = build_requests(
        kind, f"127.0.0.1:{server.port}", target, images, pixels=pixels
    )
    with HeyLoadGenerator() as hey:
        result = hey.run(LoadSpec("127.0.0.1", server.port, requests, per_request, 2, 1.0,
                                  warmup_s=0.3))  # fmt: skip
    assert result.errors == 0 and result.ok > 0 and len(result.latencies_ms) == result.ok
    assert min(result.latencies_ms) > 0
    assert result.sample_ok is not None and check_answer(kind, result.sample_ok, 1, 10) is None


@needs_hey
def test_hey_counts_error_statuses(server: LiveServer) -> None:
    images = list(load_images(None, 2).images)
    wrong = Target("cifar10", "nope", 32, 32, 3)
    requests, _ = build_requests("single", f"127.0.0.1:{server.port}", wrong, images)
    with HeyLoadGenerator() as hey:
        result = hey.run(LoadSpec("127.0.0.1", server.port, requests, 1, 2, duration_s=0.4))
    assert result.ok == 0 and set(result.statuses) == {404} and result.statuses[404] > 0
    assert result.sample_ok is None

    with socket.socket() as sock:  # nothing listens: no answers, and the check request fails
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with HeyLoadGenerator() as hey:
        refused = hey.run(LoadSpec("127.0.0.1", closed, requests, 1, 1, duration_s=0.3))
    assert refused.ok == 0 and refused.resets == 1 and refused.errors == 1
